"""`workbench predict`: bulk pre-annotation on a local Ray (2 actors) into Parquet and into a real Label Studio
project; a rerun resumes without predicting again; a run killed mid-way (SIGKILL) resumes without duplicates.

The cold start runs on torch fp32 here (WORKBENCH_RUNTIME=torch), like the `cold_start_predictor` fixture, so the
bulk answers can be compared with the predictor's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotation_config.regions import Prediction
from bulk.job import PART_DELAY_ENV, PredictOptions, run_predict
from bulk.table import output_columns, row_prediction
from workbench.cli import main

TORCH_FP32 = {"WORKBENCH_RUNTIME": "torch", "WORKBENCH_PRECISION": "fp32"}


@pytest.fixture
def torch_runtime(monkeypatch):
    for name, value in TORCH_FP32.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def twenty(sample_tasks) -> list[dict]:
    """20 sample paragraphs from several articles."""
    return sample_tasks[::5][:20]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_out(folder: Path) -> list[dict]:
    return pq.read_table(folder).to_pylist()


def parts(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}


def test_local_ray_run_into_parquet_then_a_rerun_resumes(tmp_path, torch_runtime, schema, twenty, cold_start_predictor):
    source = write_jsonl(tmp_path / "archive.jsonl", twenty)
    out = tmp_path / "out"
    options = PredictOptions(out=out, source=source, cold_start=True, actors=2, batch_size=4)
    lines: list[str] = []
    result = run_predict(options, echo=lines.append, progress=False)

    rows = read_out(out)
    keys = [row["key"] for row in rows]
    assert Counter(keys) == Counter(task["key"] for task in twenty)  # every row once
    assert pq.read_table(out).column_names == output_columns(schema)
    assert result.predicted == 20 and result.actors == 2 and result.parts == len(parts(out)) > 1
    direct = dict(zip([t["key"] for t in twenty], cold_start_predictor.predict(twenty), strict=True))
    for row in rows:
        assert row["model_version"] == cold_start_predictor.model_version
        expected: Prediction = direct[row["key"]]
        got = row_prediction(schema, row)
        assert got.labels == {
            name: [{k: v for k, v in s.items() if v is not None} for s in value] if name == "evidence" else value
            for name, value in expected.labels.items()
        }
        assert got.scores == pytest.approx(expected.scores, abs=1e-4)
        assert got.score == pytest.approx(expected.score, abs=1e-4)
    assert any(line.startswith("model: cold start cold-start-") for line in lines)
    assert "paragraphs/s" in lines[-1]

    before = parts(out)
    again = run_predict(options, echo=lines.append, progress=False)
    assert again.predicted == 0 and again.already_done == 20
    assert parts(out) == before  # nothing written, nothing rewritten


def test_a_killed_run_resumes_without_duplicates(tmp_path, schema, twenty):
    source = write_jsonl(tmp_path / "archive.jsonl", twenty)
    out = tmp_path / "out"
    args = [str(source), "--out", str(out), "--cold-start", "--actors", "1", "--batch-size", "2"]
    env = {**os.environ, **TORCH_FP32, PART_DELAY_ENV: "1.5"}
    env.pop("RAY_ADDRESS", None)
    job = subprocess.Popen(
        [sys.executable, "-m", "workbench", "predict", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes the job and its local Ray down together
    )
    try:
        deadline = time.monotonic() + 240
        while not parts(out) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
        assert parts(out), job.communicate()[0].decode()[-3000:] if job.poll() is not None else "no part appeared"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    written = read_out(out)
    assert 0 < len(written) < 20  # killed mid-way

    rerun = subprocess.run(
        [sys.executable, "-m", "workbench", "predict", *args],
        env={**env, PART_DELAY_ENV: "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(written)} were already in" in rerun.stdout
    rows = read_out(out)
    assert sorted(row["key"] for row in rows) == sorted(task["key"] for task in twenty)  # complete, no duplicate
    assert not list(out.glob(".part-*"))  # no half-written part left behind


def test_a_part_appears_only_whole(tmp_path, monkeypatch, schema):
    """A write that dies half-way leaves no part (only a temporary file, which the next run removes)."""
    from bulk.output import OutputFolder
    from bulk.table import prediction_row, to_table

    row = prediction_row(schema, "k1", None, Prediction(labels={}, scores={}, score=0.5), "v1")
    real_write = pq.write_table

    def dies_half_way(table, where, **kwargs):
        real_write(table, where, **kwargs)
        Path(where).write_bytes(Path(where).read_bytes()[:40])  # torn
        raise OSError("disk full")

    folder = OutputFolder.open(tmp_path, schema, "v1")
    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(OSError):
        folder.write(to_table(schema, [row]))
    folder.close()
    monkeypatch.setattr(pq, "write_table", real_write)
    assert parts(tmp_path) == {}
    reopened = OutputFolder.open(tmp_path, schema, "v1")  # reads every part: a torn one would fail here
    assert reopened.done == set() and not list(tmp_path.glob(".part-*"))
    reopened.write(to_table(schema, [row]))
    reopened.close()
    assert OutputFolder.open(tmp_path, schema, "v1").done == {"k1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "--out", "{out}"], "no such file or folder"),
        (["{notext}", "--out", "{out}"], "no 'text' column"),
        (["{good}", "--out", "{out}", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["{good}", "--out", "{out}", "--project", "3"], "pass either SOURCE or --ls-url URL --project ID"),
        (["--out", "{out}"], "give SOURCE"),
        (["{bad}", "--out", "{out}"], "cannot read as JSON lines"),
        # this machine has no GPU: a GPU actor would wait for one forever; the job says so instead (Ray starts)
        (["{good}", "--out", "{out}", "--gpus-per-actor", "1", "--cold-start"], "need 1 GPUs and this Ray has 0"),
        (["{good}", "--out", "{out}", "--gpus-per-actor", "-1"], "--gpus-per-actor must be 0 or more"),
    ],
)
def test_bad_input_or_options_stop_with_one_line(tmp_path, capsys, monkeypatch, twenty, args, message):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    files = {
        "missing": tmp_path / "nope.jsonl",
        "notext": write_jsonl(tmp_path / "notext.jsonl", [{"key": "a", "body": "x"}]),
        "good": write_jsonl(tmp_path / "good.jsonl", twenty[:2]),
        "bad": tmp_path / "bad.jsonl",
        "out": tmp_path / "out",
    }
    files["bad"].write_text("{not json\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *(a.format(**files) for a in args)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_the_command_line_does_not_import_ray():
    code = "import sys, workbench.cli, backend.app; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.e2e
def test_into_a_label_studio_project_resumably(tmp_path, label_studio, ls_client, torch_runtime, schema, twenty):
    from studio.provision import provision

    in_project, not_imported = twenty[:8], twenty[8:10]
    project = provision(ls_client, schema, in_project, "Bulk predict e2e", label_studio.url).project_id
    common = {"ls_url": label_studio.url, "api_key": label_studio.token, "project": project, "cold_start": True}

    # the project's own tasks as input, written back into it
    out = tmp_path / "from-project"
    first = run_predict(
        PredictOptions(out=out, to_label_studio=True, actors=2, batch_size=3, ls_batch_size=5, **common),
        echo=lambda line: None,
        progress=False,
    )
    assert first.predicted == 8 and first.ls_written == 8
    stored = {t.id: t for t in ls_client.tasks.list(project=project)}
    predictions = ls_client.predictions.list(project=project)
    assert sorted(p.task for p in predictions) == sorted(stored)  # one prediction per task
    rows = {row["task_id"]: row for row in read_out(out)}
    for prediction in predictions:
        assert prediction.model_version == first.model_version
        task = stored[prediction.task]
        expected = row_prediction(schema, rows[task.id]).to_label_studio(schema, task.data, first.model_version)
        assert prediction.result == expected["result"]
        assert prediction.score == pytest.approx(expected["score"])

    # a rerun writes nothing: not into Parquet, not into Label Studio
    again = run_predict(
        PredictOptions(out=out, to_label_studio=True, actors=1, batch_size=3, **common),
        echo=lambda line: None,
        progress=False,
    )
    assert again.predicted == 0 and again.ls_written == 0
    assert len(ls_client.predictions.list(project=project)) == 8

    # a file: its rows are matched by key; rows the project lacks are reported, and kept in Parquet
    source = write_jsonl(tmp_path / "archive.jsonl", in_project + not_imported)
    lines: list[str] = []
    from_file = run_predict(
        PredictOptions(out=tmp_path / "from-file", source=source, to_label_studio=True, actors=2, **common),
        echo=lines.append,
        progress=False,
    )
    assert from_file.predicted == 10 and from_file.ls_written == 0 and from_file.ls_already == 8
    assert sorted(from_file.ls_missing) == sorted(t["key"] for t in not_imported)
    assert any("2 predicted rows have no task in project" in line for line in lines)
    assert len(read_out(tmp_path / "from-file")) == 10
