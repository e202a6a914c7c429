"""The model registry: atomic pointer switches, the promotion gate, rollback, staging; no model weights needed."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.pipeline import unchanged_since
from training.registry import (
    SKIPPED_EXIT_CODE,
    SKIPPED_EXIT_ENV,
    Registry,
    RegistryError,
    current_model,
    list_versions,
    migrate_single_registry,
    model_problem,
    project_registry,
    read_rows,
    serving_candidates,
)

DIMENSIONS = [{"name": "q", "kind": "single", "labels": ["a", "b"]}]
CORRECT: dict[str, float] = {}  # version -> share of its gate rows the fake model answers right


def answers_of(version: str, rows) -> list[dict]:
    """What the fake model `version` answers on `rows`: right on a CORRECT[version] share of them, its own (seeded by
    the version, as two real models err on different rows)."""
    order = sorted(range(len(rows)), key=lambda i: str(rows[i]["key"]))
    random.Random(version).shuffle(order)
    right = set(order[: round(CORRECT[version] * len(rows))])
    flip = {"a": "b", "b": "a"}
    return [{"q": row["q"] if i in right else flip[row["q"]]} for i, row in enumerate(rows)]


def fake_answerer(folder: Path, rows):
    from training.evaluation import answers_row_counts

    return answers_row_counts(DIMENSIONS, rows, answers_of(folder.name, rows))


def gold_rows(n: int, prefix: str = "k") -> list[dict]:
    return [{"key": f"{prefix}{i:04d}", "q": "ab"[i % 2], "article": f"{prefix}-article-{i}"} for i in range(n)]


def add_version(
    registry: Registry,
    version: str,
    correct: float | None,
    *,
    schema_hash="s1",
    data_hash="d1",
    rows: int | list[dict] = 100,
    trained_on: list[str] | None = None,
) -> str:
    """A fake version: `rows` held-out gold rows (a count, or the rows), answered right on a `correct` share."""
    held_out = gold_rows(rows) if isinstance(rows, int) else rows
    with registry.staging(version) as folder:
        (folder / "metrics.json").write_text(json.dumps({"test": {"primary": correct}}))
        (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in held_out))
        if trained_on is not None:
            groups = {"column": "article", "train": trained_on, "validation": [], "test": []}
            (folder / "groups.json").write_text(json.dumps(groups))
        manifest = {
            "version": version,
            "data_hash": data_hash,
            "schema_hash": schema_hash,
            "scores": {"test": correct},
            "dimensions": DIMENSIONS,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
    CORRECT[version] = correct if correct is not None else 0.0
    return version


def promote(registry: Registry, version: str, **kwargs):
    return registry.promote(version, answer=fake_answerer, **kwargs)


def test_first_promotion_switches_the_pointer(tmp_path):
    registry = Registry(tmp_path)
    assert registry.current() is None
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    result = promote(registry, v1)
    assert result.promoted and result.reason.startswith("first promoted model")
    assert json.loads((tmp_path / "registry.json").read_text())["current"] == v1


def test_gate_refuses_a_worse_model_with_its_interval(tmp_path):
    registry = Registry(tmp_path)
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.8, rows=200)
    promote(registry, v1)
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.5, rows=200)
    result = promote(registry, v2)
    assert not result.promoted
    assert f"worse than the current model {v1} on the 200 rows of its test split" in result.reason
    assert "difference -0.300" in result.reason and "90% interval" in result.reason and "n=200" in result.reason
    assert "--force" in result.reason and result.comparison["worse_confidence"] >= 0.9
    assert registry.current() == v1
    assert registry.read()["history"][-1]["action"] == "refused"
    listed = registry.list()
    assert [e["status"] for e in listed] == ["current", "candidate"]
    assert listed[1]["gate"].startswith("-0.300 [") and listed[1]["gate"].endswith("n=200")
    forced = promote(registry, v2, force=True)
    assert forced.promoted and registry.current() == v2


def test_a_candidate_within_noise_is_promoted(tmp_path):
    """On 100 rows two answers fewer right is noise, not evidence: the gate that compared point scores refused it."""
    registry = Registry(tmp_path)
    promote(registry, add_version(registry, "20260101T000000-aaaa0001", 0.72))
    result = promote(registry, add_version(registry, "20260102T000000-bbbb0002", 0.70))
    assert result.promoted and "not worse than the current model" in result.reason
    assert result.comparison["low"] < 0 < result.comparison["high"] and result.comparison["worse_confidence"] < 0.9
    assert result.candidate_score < result.current_score


def test_the_gate_compares_on_the_candidates_rows_that_the_current_model_never_learnt_from(tmp_path):
    """Both models answer the same rows: the candidate's held-out rows, less those of articles the current model
    learnt from (its served heads are refitted on all its splits); with too few such rows, the whole split."""
    registry = Registry(tmp_path)
    rows = gold_rows(60, "c")
    seen = [row["article"] for row in rows[:25]]
    current = add_version(registry, "20260101T000000-aaaa0001", 0.9, rows=gold_rows(10, "o"), trained_on=seen)
    promote(registry, current, force=True)
    assert registry.unseen_by(current, rows) == list(range(25, 60))
    few = add_version(registry, "20260102T000000-bbbb0002", 0.9, rows=rows[:30], trained_on=[])
    judged = promote(registry, few)  # 5 rows new to the current model: too few, so all 30, saying it favours it
    assert judged.comparison["n"] == 30 and "which favours it" in judged.reason
    if judged.promoted:
        registry.rollback()
    candidate = add_version(registry, "20260103T000000-cccc0003", 0.9, rows=rows, trained_on=[])
    result = promote(registry, candidate)
    assert result.comparison["n"] == 35 and f"the 35 rows of its test split that {current} never" in result.reason


def test_the_gate_reads_the_candidates_saved_answers_not_its_refitted_heads(tmp_path):
    """The served heads of a version are refitted on its test rows too: the gate must read the answers its training
    run saved (gate_counts.npz), or every candidate looks perfect on its own split."""
    from training.evaluation import answers_row_counts

    registry = Registry(tmp_path)
    promote(registry, add_version(registry, "20260101T000000-aaaa0001", 0.8, rows=200))
    candidate = add_version(registry, "20260102T000000-bbbb0002", 1.0, rows=200)  # its refitted heads: all right
    rows = read_rows(tmp_path / candidate / "test.jsonl")
    CORRECT["held-out heads"] = 0.5
    saved = answers_row_counts(DIMENSIONS, rows, answers_of("held-out heads", rows))
    saved.save(tmp_path / candidate / "gate_counts.npz")
    result = promote(registry, candidate)
    assert not result.promoted and result.comparison["candidate"] < 0.6


def test_schema_change_promotes_and_no_held_out_rows_refuses(tmp_path):
    registry = Registry(tmp_path)
    promote(registry, add_version(registry, "20260101T000000-aaaa0001", 0.9, rows=gold_rows(5)))
    empty = add_version(registry, "20260102T000000-bbbb0002", 1.0, rows=[])
    refused = promote(registry, empty)  # a perfect score elsewhere proves nothing: no rows of its own, no promotion
    assert not refused.promoted and "no held-out rows to test it on" in refused.reason
    changed = add_version(registry, "20260103T000000-cccc0003", 0.1, schema_hash="s2")
    result = promote(registry, changed)
    assert result.promoted and "schema changed" in result.reason


def test_a_first_model_without_held_out_rows_never_passes(tmp_path):
    """Trained on 4 labels there is no test split: it would serve unchecked, so only --force promotes it."""
    registry = Registry(tmp_path)
    version = add_version(registry, "20260101T000000-aaaa0001", None, rows=[])
    result = promote(registry, version)
    assert not result.promoted and "no held-out rows to test it on" in result.reason and "--force" in result.reason
    assert registry.current() is None and registry.read()["history"][-1]["action"] == "refused"
    assert promote(registry, version, force=True).promoted


def test_rollback_pops_back_to_the_previous_promoted_version(tmp_path):
    registry = Registry(tmp_path)
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.6)
    v3 = add_version(registry, "20260103T000000-cccc0003", 0.7)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    promote(registry, v1)
    promote(registry, v2)
    assert registry.rollback() == v1 and registry.current() == v1
    promote(registry, v3)
    assert registry.stack() == [v1, v3]
    assert registry.rollback() == v1
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    statuses = {e["version"]: e["status"] for e in registry.list()}
    assert statuses == {v1: "current", v2: "rolled back", v3: "rolled back"}


def test_a_crash_while_writing_leaves_no_visible_version(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(RuntimeError), registry.staging("20260101T000000-aaaa0001") as folder:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")
    assert registry.versions() == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(RegistryError, match="not finished"), registry.staging("20260101T000000-aaaa0001"):
        pass  # no manifest written
    assert registry.versions() == []


def test_pointer_switch_is_atomic(tmp_path, monkeypatch):
    registry = Registry(tmp_path)
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.9)
    promote(registry, v1)
    before = (tmp_path / "registry.json").read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        promote(registry, v2)
    monkeypatch.undo()
    assert (tmp_path / "registry.json").read_text() == before  # the old pointer is intact
    assert registry.current() == v1


def test_versions_are_unique_and_sortable(tmp_path):
    registry = Registry(tmp_path)
    when = dt.datetime(2026, 11, 22, 19, 30, tzinfo=dt.UTC)
    first = registry.new_version("0123456789abcdef", when)
    assert first == "20261122T193000-01234567"
    add_version(registry, first, 0.1)
    second = registry.new_version("0123456789abcdef", when)
    assert second == "20261122T193001-01234567" and sorted([second, first]) == [first, second]


def test_unknown_versions_are_one_line_errors(tmp_path):
    with pytest.raises(RegistryError, match="no model version 'nope'"):
        Registry(tmp_path).promote("nope")
    with pytest.raises(RegistryError, match="not a model version"):
        Registry(tmp_path).path("../etc")


def test_if_new_data_sees_the_data_and_schema_of_the_last_model(tmp_path, schema):
    registry = Registry(tmp_path)
    assert unchanged_since(registry, "d1", schema) is None
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5, data_hash="d1", schema_hash=schema.hash)
    promote(registry, v1)
    assert unchanged_since(registry, "d1", schema) == v1
    assert unchanged_since(registry, "d2", schema) is None
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.1, data_hash="d2", schema_hash=schema.hash)
    promote(registry, v2)  # refused: worse, but trained on d2 already
    assert registry.current() == v1 and unchanged_since(registry, "d2", schema) == v2


def test_registry_module_does_not_import_torch():
    code = "import sys, training.registry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def label_maps_for(schema) -> dict:
    """label_maps.json as training writes it (MultiHeadConfig.label_maps) for a model of `schema`."""
    maps = {}
    for dim in schema.dimensions:
        field = dim.field or schema.data.text
        view = f"{field}|{dim.target.id}" if dim.target else field
        maps[dim.name] = {"kind": dim.kind, "id2label": {str(i): v for i, v in enumerate(dim.values)}, "view": view}
    return maps


def with_labels(maps: dict, dimension: str, labels: list[str]) -> dict:
    changed = json.loads(json.dumps(maps))
    changed[dimension]["id2label"] = {str(i): v for i, v in enumerate(labels)}
    return changed


def add_model(registry: Registry, version: str, maps: dict, score: float = 0.5) -> str:
    add_version(registry, version, score)
    (registry.root / version / "label_maps.json").write_text(json.dumps(maps))
    return version


def test_model_problem_names_what_differs_in_one_line(tmp_path, schema):
    maps = label_maps_for(schema)
    folder = tmp_path / "m"
    folder.mkdir()
    assert (
        model_problem(folder, schema, "v")
        == f"model v has no label_maps.json, so it cannot be checked against schema {schema.name!r}"
    )
    cases = {
        "fits": (maps, None),
        "reordered labels fit": (with_labels(maps, "frames", list(reversed(schema.dimension("frames").values))), None),
        "labels": (
            with_labels(maps, "frames", ["Economic", "Other"]),
            f"model v: dimension 'frames' has labels ['Economic', 'Other'] but schema {schema.name!r} has "
            f"{schema.dimension('frames').values}",
        ),
        "missing": ({k: v for k, v in maps.items() if k != "evidence"}, "model v has no dimension 'evidence'"),
        "extra": ({**maps, "tone": maps["frames"]}, "model v has dimension 'tone' but schema"),
        "kind": ({**maps, "frames": {**maps["frames"], "kind": "single"}}, "dimension 'frames' is 'single'"),
        "field": ({**maps, "frames": {**maps["frames"], "view": "body"}}, "reads field 'body' but schema"),
    }
    for name, (content, expected) in cases.items():
        (folder / "label_maps.json").write_text(json.dumps(content))
        problem = model_problem(folder, schema, "v")
        if expected is None:
            assert problem is None, name
        else:
            assert problem is not None and expected in problem and "\n" not in problem, (name, problem)


def test_promote_refuses_a_model_whose_labels_do_not_fit_the_schema_even_forced(tmp_path, schema):
    registry = project_registry(tmp_path, "1")
    good = add_model(registry, "20260101T000000-aaaa0001", label_maps_for(schema))
    assert promote(registry, good, schema=schema).promoted
    bad = add_model(registry, "20260102T000000-bbbb0002", with_labels(label_maps_for(schema), "frames", ["X"]), 0.9)
    for force in (False, True):
        result = promote(registry, bad, schema=schema, force=force)
        assert not result.promoted and result.reason.startswith(f"model {bad}: dimension 'frames' has labels ['X']")
    assert registry.current() == good and registry.read()["history"][-1]["action"] == "refused"
    # the command line: one line on stderr, exit code 1, the old model stays current
    done = subprocess.run(
        [sys.executable, "-m", "training", "models", "promote", bad, "--models", str(tmp_path), "--project", "1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip().count("\n") == 0 and f"{bad} not promoted: model {bad}: dimension 'frames'" in done.stderr
    )
    assert registry.current() == good


def test_a_job_token_taken_back_means_no_promotion(tmp_path, schema):
    registry = Registry(tmp_path)
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    token = tmp_path / ".training-token-x"
    result = promote(registry, v1, job_token=token)  # the runner gave up on the job: the token is gone
    assert not result.promoted and "gave up on this training job" in result.reason and registry.current() is None
    token.write_bytes(b"")
    assert promote(registry, v1, job_token=token).promoted and not token.exists()  # the job claimed it


def test_prune_keeps_the_newest_and_never_the_current_or_previous(tmp_path, monkeypatch):
    registry = Registry(tmp_path)
    names = [add_version(registry, f"2026010{i}T000000-aaaa000{i}", 0.1 * i) for i in range(1, 7)]
    promote(registry, names[0])
    promote(registry, names[1])  # current names[1], previous (the rollback target) names[0]
    assert registry.prune(2) == names[2:4]
    assert registry.versions() == [names[0], names[1], names[4], names[5]]
    assert registry.rollback() == names[0]  # the rollback target is still there
    promote(registry, names[1], force=True)
    # crash-safe: the folder is renamed to hidden trash first, so a crash while deleting leaves no half version
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        registry.prune(1)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert registry.versions() == [names[0], names[1], names[5]]
    assert len(list(tmp_path.glob(".trash-*"))) == 1  # hidden, so no listing sees it
    assert registry.prune(1) == [] and not list(tmp_path.glob(".trash-*"))  # the next prune takes the trash out
    with pytest.raises(RegistryError, match="keep at least one"):
        registry.prune(0)


def test_fallback_order_is_the_promotion_stack_then_the_newest(tmp_path):
    registry = project_registry(tmp_path, "3")
    v1, v2, v3, v4 = (add_version(registry, f"2026010{i}T000000-aaaa000{i}", 0.5) for i in range(1, 5))
    promote(registry, v2)
    promote(registry, v1, force=True)
    assert registry.fallback_versions() == [v1, v2, v4, v3]
    assert serving_candidates(tmp_path, "3")[0] == (v1, registry.root / v1)
    assert current_model(tmp_path, "3") == (v1, registry.root / v1) and list_versions(tmp_path, "3")[0] == v1
    assert current_model(tmp_path, "4") is None and serving_candidates(tmp_path, "4") == []


def trained_on_this_export(tmp_path: Path, schema) -> tuple[Path, Path]:
    """An export of three accepted labels, and a models folder whose current version was trained on exactly them
    (a fake version: no weights, so `train --if-new-data` on it is a quick no-op)."""
    from training.data import accept, data_hash

    choice = {"from_name": "threat_characterization", "to_name": "text", "type": "choices"}
    tasks = [
        {
            "id": i,
            "data": {"key": f"k{i}", "text": f"Paragraph {i}."},
            "annotations": [{"id": i, "completed_by": 1, "result": [{**choice, "value": {"choices": [label]}}]}],
        }
        for i, label in enumerate(["genuine", "manufactured", "contested"])
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    examples = accept(tasks, schema).examples
    assert len(examples) == 3
    models = tmp_path / "models"
    registry = project_registry(models, "default")  # the export names no project
    version = add_version(
        registry, "20260101T000000-aaaa0001", 0.5, data_hash=data_hash(examples), schema_hash=schema.hash
    )
    promote(registry, version)
    return export, models


def test_train_if_new_data_exits_with_the_skipped_code_when_asked(tmp_path, schema):
    export, models = trained_on_this_export(tmp_path, schema)
    command = [sys.executable, "-m", "training", "train", "--from-export", str(export), "--models", str(models)]
    done = subprocess.run([*command, "--if-new-data"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # cron and systemd: nothing to do is a success
    assert "no new accepted labels since model 20260101T000000-aaaa0001" in done.stdout
    env = {**os.environ, SKIPPED_EXIT_ENV: str(SKIPPED_EXIT_CODE)}
    done = subprocess.run([*command, "--if-new-data"], capture_output=True, text=True, env=env)
    assert done.returncode == SKIPPED_EXIT_CODE, done.stderr  # the backend's job runner tells it from a trained run


@pytest.mark.slow
def test_train_prunes_to_workbench_keep_versions_after_the_run(tmp_path, schema):
    from tests.test_reliability_support import TINY_CLI

    export, models = trained_on_this_export(tmp_path, schema)
    registry = project_registry(models, "default")
    old = registry.current()
    rolled_back = promote(registry, add_version(registry, "20260102T000000-aaaa0002", 0.9)).version
    registry.rollback()
    candidate = add_version(registry, "20260103T000000-aaaa0003", 0.1)
    previous = promote(registry, add_version(registry, "20260104T000000-aaaa0004", 0.9)).version
    command = [sys.executable, "-m", "training", "train", "--from-export", str(export), "--models", str(models)]
    env = {**os.environ, "WORKBENCH_KEEP_VERSIONS": "1"}
    done = subprocess.run([*command, *TINY_CLI], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    new = registry.current()
    assert new not in (old, previous) and "removed 3 old version(s), keeping the newest 1" in done.stdout
    assert registry.versions() == [previous, new]  # the newest one, which is current, and the rollback target
    assert not {old, rolled_back, candidate} & set(registry.versions()) and not list(models.glob(".trash-*"))


def _with_rivals(registry: Registry, version: str, candidate_frames: float = 0.5, **rivals: float) -> None:
    """Rivals as a training run records them: per row of the test split, what each answered (right on a share)."""
    rows = read_rows(registry.root / version / "test.jsonl")
    path = registry.root / version / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["test"]["dimensions"] = {"q": {"kind": "single", "n": len(rows), "macro_f1": candidate_frames}}
    metrics["rivals"] = {}
    for name, share in rivals.items():
        CORRECT[name] = share
        answers = answers_of(name, rows)
        metrics["rivals"][name] = {"split": "test", "n": len(rows), "primary": share, "answers": answers,
                                   "dimensions": {"q": share}, "model_version": name}
    path.write_text(json.dumps(metrics))


@pytest.mark.parametrize(
    ("candidate", "rival", "force", "promoted"),
    [(0.40, 0.60, False, False), (0.60, 0.60, False, True), (0.58, 0.60, False, True), (0.40, 0.60, True, True)],
)
def test_the_first_fine_tuned_model_must_not_be_worse_than_the_instant_learner(
    tmp_path, candidate, rival, force, promoted
):
    registry = Registry(tmp_path)
    version = add_version(registry, "20261202T000000-aaaaaaaa", candidate, rows=200)
    _with_rivals(registry, version, instant_learner=rival)
    result = promote(registry, version, force=force)
    assert result.promoted is promoted
    assert registry.current() == (version if promoted else None)
    if not promoted:
        assert "worse than the instant learner on its test split" in result.reason
        assert f"{candidate:.3f} vs " in result.reason
        assert "90% interval" in result.reason
        assert registry.read()["history"][-1]["action"] == "refused"  # the instant learner keeps serving


def test_the_first_fine_tuned_model_must_not_be_worse_than_the_cold_start_either(tmp_path):
    """The cold start better than the instant learner (frames on the hand-labelled sample, 0.61 against 0.48): a
    candidate that beats the instant learner but not the cold start is refused, and the reason names the dimension."""
    registry = Registry(tmp_path)
    version = add_version(registry, "20261202T000000-cccccccc", 0.45, rows=200)
    _with_rivals(registry, version, 0.45, cold_start=0.80, instant_learner=0.40)
    result = registry.promote(version, answer=fake_answerer)
    assert not result.promoted and registry.current() is None
    assert "worse than the cold start" in result.reason and "0.450 vs 0.800" in result.reason
    assert "worse on q 0.45 < 0.80" in result.reason and result.current_score == pytest.approx(0.8, abs=1e-3)
    better = add_version(registry, "20261202T000001-dddddddd", 0.82, rows=200)
    _with_rivals(registry, better, 0.82, cold_start=0.80, instant_learner=0.40)
    assert registry.promote(better, answer=fake_answerer).promoted


def test_without_rivals_a_first_model_with_held_out_rows_is_promoted(tmp_path):
    registry = Registry(tmp_path)
    version = add_version(registry, "20261202T000000-bbbbbbbb", 0.1)
    result = promote(registry, version)
    assert result.promoted and "no rival was scored" in result.reason


def _legacy_version(root: Path, version: str, source: str) -> None:
    folder = root / version
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"version": version, "source": source}))


def test_a_single_registry_is_migrated_once_to_the_projects_its_versions_were_trained_for(tmp_path):
    _legacy_version(tmp_path, "20260101T000000-aaaa0001", "http://127.0.0.1:8080/projects/1")
    _legacy_version(tmp_path, "20260102T000000-bbbb0002", "http://127.0.0.1:8080/projects/2")
    _legacy_version(tmp_path, "20260103T000000-cccc0003", "exports/project.json")
    history = [
        {"action": "promote", "version": "20260101T000000-aaaa0001"},
        {"action": "promote", "version": "20260102T000000-bbbb0002"},
        {"action": "refused", "version": "20260103T000000-cccc0003"},
    ]
    (tmp_path / "registry.json").write_text(json.dumps({"current": "20260102T000000-bbbb0002", "history": history}))
    moved = migrate_single_registry(tmp_path)
    assert moved == {
        "20260101T000000-aaaa0001": "1", "20260102T000000-bbbb0002": "2", "20260103T000000-cccc0003": "default"
    }
    one, two, default = (project_registry(tmp_path, p) for p in ("1", "2", "default"))
    assert one.versions() == ["20260101T000000-aaaa0001"] and one.current() is None  # project 2's model served
    assert two.current() == "20260102T000000-bbbb0002" and [e["version"] for e in two.read()["history"]] == [
        "20260102T000000-bbbb0002"
    ]
    assert default.versions() == ["20260103T000000-cccc0003"] and default.read()["history"][0]["action"] == "refused"
    assert not (tmp_path / "registry.json").exists() and (tmp_path / "registry.json.migrated").exists()
    assert migrate_single_registry(tmp_path) == {}  # once


def test_project_ids_never_name_a_path_outside_the_models_folder(tmp_path):
    from training.registry import project_dir

    assert project_dir(tmp_path, "7.1700000000") == tmp_path / "projects" / "7"
    assert project_dir(tmp_path, None) == tmp_path / "projects" / "default"
    for bad in ("../x", "a/b", "", " .."):
        if bad.strip():
            with pytest.raises(RegistryError, match="not a project id"):
                project_dir(tmp_path, bad)


def test_a_registry_file_of_the_wrong_shape_is_one_line(tmp_path):
    for content in ("[]", '{"current": 3}', '{"history": {}}', '{"history": [1]}'):
        (tmp_path / "registry.json").write_text(content)
        with pytest.raises(RegistryError) as error:
            Registry(tmp_path).current()
        assert "\n" not in str(error.value) and "registry.json" in str(error.value)


def test_models_list_shows_every_project_and_promote_needs_one_when_there_are_several(tmp_path):
    for project in ("1", "2"):
        registry = project_registry(tmp_path, project)
        promote(registry, add_version(registry, f"2026010{project}T000000-aaaa0001", 0.5))
    listed = subprocess.run(
        [sys.executable, "-m", "training", "models", "list", "--models", str(tmp_path), "--json"],
        capture_output=True, text=True, check=True,
    )
    assert [(e["project"], e["status"]) for e in json.loads(listed.stdout)] == [("1", "current"), ("2", "current")]
    done = subprocess.run(
        [sys.executable, "-m", "training", "models", "rollback", "--models", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "holds the models of projects 1, 2: pass --project ID" in done.stderr
    assert "Traceback" not in done.stderr


def test_held_out_texts_with_unicode_line_separators_are_one_row_each(tmp_path):
    """U+2028, U+2029 and U+0085 end lines for str.splitlines but not in JSON lines: the gate reads such rows whole."""
    registry = Registry(tmp_path)
    promote(registry, add_version(registry, "20260101T000000-aaaa0001", 0.7))
    texts = ["one\u2028two", "three\u2029four", "five\x85six"]
    rows = [{**row, "text": text} for row, text in zip(gold_rows(3, "u"), texts, strict=True)]
    version = add_version(registry, "20260102T000000-bbbb0002", 0.8, rows=rows)
    # the pipeline writes held-out rows with ensure_ascii=False: the separators land in the file as they are
    (tmp_path / version / "test.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    assert read_rows(tmp_path / version / "test.jsonl") == rows
    assert promote(registry, version).promoted  # before: a JSONDecodeError in every later gated promotion


def test_evaluate_current_never_leaves_the_registry_folder(tmp_path):
    """A hand-edited pointer naming a folder outside the registry is refused in one line, not evaluated."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    root = project_registry(tmp_path / "models", "1").root
    root.mkdir(parents=True)
    (root / "registry.json").write_text(json.dumps({"current": "../../../outside", "history": []}))
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"key": "k", "text": "x"}) + "\n")
    command = [sys.executable, "-m", "training", "evaluate", "--model", "current", "--data", str(data)]
    done = subprocess.run([*command, "--models", str(tmp_path / "models")], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "is not a model version" in done.stderr and done.stderr.strip().count("\n") == 0
