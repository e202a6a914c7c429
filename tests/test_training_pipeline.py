"""End to end: a few training steps on short synthetic paragraphs, the registry round trip, serving, commands."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from training.cli import build_app
from training.pipeline import run_training
from training.predict import TrainedPredictor
from training.registry import Registry, RegistryError, project_dir
from training.training_args import TrainingArguments

PARAGRAPHS = [
    ("Moscow calls the invasion warnings Western propaganda and hype.", "manufactured", "against", "Moscow"),
    ("NATO says Russian troops massing at the border are a real danger.", "genuine", "favor", "NATO"),
    ("Kyiv insists the threat is real while Moscow denies any plans.", "contested", "none", "Kyiv"),
    ("China and Russia signed a trade deal on energy supplies.", "not_applicable", "none", "China"),
]
# calibration_min_examples=1 and threshold_min_examples=1: calibrate and tune thresholds even on a two-row validation
# split, to exercise those paths
TINY = TrainingArguments(
    epochs=2,
    max_length=64,
    batch_size=8,
    progress=False,
    seed=3,
    calibration_min_examples=1,
    threshold_min_examples=1,
)


def choice(dim: str, *values: str) -> dict:
    return {"from_name": dim, "to_name": "text", "type": "choices", "value": {"choices": list(values)}}


def actor(text: str, word: str) -> dict:
    start = text.index(word)
    value = {"start": start, "end": start + len(word), "text": word, "labels": ["actor"]}
    return {"from_name": "evidence", "to_name": "text", "type": "labels", "value": value}


def synthetic_export(n: int = 12) -> list[dict]:
    tasks = []
    for i in range(n):
        sentence, threat, stance, who = PARAGRAPHS[i % len(PARAGRAPHS)]
        text = f"{sentence} Report {i}."
        result = [choice("threat_characterization", threat), choice("stance_us_policy", stance), actor(text, who)]
        if i % 2:
            result.append(choice("frames", "Security_and_defense"))
        annotation = {"id": 100 + i, "completed_by": 1, "result": result, "was_cancelled": False}
        data = {"key": f"k{i:02d}", "text": text, "title": "T", "source": "S", "article_id": f"a{i % 6}"}
        tasks.append({"id": i, "data": data, "annotations": [annotation]})
    tie = [
        {"id": 900, "completed_by": 1, "result": [choice("threat_characterization", "genuine")]},
        {"id": 901, "completed_by": 2, "result": [choice("threat_characterization", "manufactured")]},
    ]
    tasks.append(
        {"id": 99, "data": {"key": "tie", "text": "A disputed paragraph.", "article_id": "a9"}, "annotations": tie}
    )
    return tasks


@pytest.fixture(scope="module")
def trained(schema, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    export = models.parent / "export.json"
    export.write_text(json.dumps(synthetic_export()))
    started = time.perf_counter()
    # the registry `train --from-export` uses for an export that names no project
    outcome = run_training(synthetic_export(), schema, project_dir(models, None), TINY, source=str(export))
    outcome.timings["wall_seconds"] = time.perf_counter() - started
    print(f"\ntiny training timings: {json.dumps(outcome.timings, default=str)}")
    return outcome, models, export


def test_tiny_training_registers_and_promotes_a_complete_version(trained, schema):
    outcome, models, _ = trained
    assert outcome.status == "trained" and outcome.promoted
    assert outcome.promotion.reason.startswith("first promoted model; no rival was scored on its test split")
    folder = outcome.model_dir
    assert Registry(project_dir(models, None)).current() == outcome.version
    for name in ("config.json", "model.safetensors", "tokenizer.json", "label_maps.json", "calibration.json"):
        assert (folder / name).exists(), name
    for name in ("metrics.json", "manifest.json", "README.md", "test.jsonl", "plots/reliability.png"):
        assert (folder / name).exists(), name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data_hash"] == outcome.data_hash and outcome.version.endswith(outcome.data_hash[:8])
    assert manifest["schema_hash"] == schema.hash and manifest["seed"] == 3
    assert manifest["hyperparameters"]["max_length"] == 64 and manifest["examples"] == 13
    assert set(manifest["timings"]) >= {"train_seconds", "total_seconds", "device"}
    # 12 paragraphs + the tie task, accepted for frames only (its annotators answered "no frames")
    assert sum(manifest["splits"].values()) == 13 and manifest["splits"]["train"] >= 6
    held = json.loads((folder / "held_out.json").read_text())
    assert held == [{"task_id": 99, "key": "tie", "dimension": "threat_characterization", "reason": held[0]["reason"]}]
    calibration = json.loads((folder / "calibration.json").read_text())
    assert calibration and set(calibration) <= {d.name for d in schema.of_kind("single", "multi")}
    assert all(0.05 <= c["temperature"] <= 20 and c["nll_after"] <= c["nll_before"] for c in calibration.values())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and outcome.version in card
    test_report = json.loads((folder / "metrics.json").read_text())["test"]
    assert test_report["n"] == manifest["splits"]["test"]


def test_trained_predictor_serves_every_dimension(trained, schema):
    outcome, _, _ = trained
    predictor = TrainedPredictor(outcome.model_dir)
    assert predictor.kind == "trained" and predictor.model_version == outcome.version
    tasks = [t["data"] for t in synthetic_export(5)] + [{"text": ""}]
    predictions = predictor.predict(tasks)
    assert len(predictions) == len(tasks)
    for prediction, data in zip(predictions, tasks, strict=True):
        labels = prediction.labels
        for dim in schema.dimensions:
            if dim.kind == "single":
                assert labels[dim.name] in dim.values and 0 < prediction.scores[dim.name] <= 1
            elif dim.kind == "multi":
                assert set(labels[dim.name]) <= set(dim.values) and 0.5 <= prediction.scores[dim.name] <= 1
            else:
                for span in labels[dim.name]:
                    assert data["text"][span["start"] : span["end"]] == span["text"] and 0 <= span["score"] <= 1
        assert 0 < prediction.score <= 1
        item = prediction.to_label_studio(schema, data, predictor.model_version)
        assert item["model_version"] == outcome.version
    assert predictor.predict([]) == []
    again = predictor.predict(tasks[:2])
    for alone, batched in zip(again, predictions, strict=False):  # batch composition does not change answers
        assert alone.scores == pytest.approx(batched.scores, abs=1e-4)
        assert alone.labels["threat_characterization"] == batched.labels["threat_characterization"]


def test_predictor_is_safe_to_call_from_several_threads(trained):
    """Calls from several threads at once each get exactly the answers that a call alone gets for its tasks."""
    from concurrent.futures import ThreadPoolExecutor

    outcome, _, _ = trained
    predictor = TrainedPredictor(outcome.model_dir)
    tasks = [t["data"] for t in synthetic_export(12)]
    chunks = [tasks[i : i + size] for size in (1, 2, 3) for i in range(0, 12, size)]  # 22 calls, 3 batch sizes
    alone = [predictor.predict(chunk) for chunk in chunks]
    assert len({json.dumps(p.scores, sort_keys=True) for answers in alone for p in answers}) > 1  # answers differ
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(predictor.predict, chunks * 3))
    for expected, got in zip(alone * 3, together, strict=True):
        assert len(got) == len(expected)
        for mine, reference in zip(got, expected, strict=True):
            assert mine.labels == reference.labels
            assert mine.scores == pytest.approx(reference.scores, abs=1e-6)
            assert mine.score == pytest.approx(reference.score, abs=1e-6)


def test_if_new_data_exits_at_once(trained):
    outcome, models, export = trained
    runner = CliRunner()
    started = time.perf_counter()
    result = runner.invoke(
        build_app(), ["train", "--from-export", str(export), "--models", str(models), "--if-new-data"]
    )
    assert result.exit_code == 0, result.output
    assert "no new accepted labels since model " + outcome.version in result.output
    assert time.perf_counter() - started < 10
    assert Registry(project_dir(models, None)).versions() == [outcome.version]


def test_evaluate_command_writes_a_report_with_plots(trained, tmp_path):
    _, models, export = trained
    out = tmp_path / "eval"
    args = ["evaluate", "--model", "current", "--data", str(export), "--models", str(models), "--out", str(out)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 13 and report["dimensions"]["threat_characterization"]["n"] == 12
    assert "f_avg" in report["dimensions"]["stance_us_policy"]
    assert (out / "plots" / "confusion_threat_characterization.png").exists()


def test_gate_compares_both_models_on_their_shared_held_out_rows(trained):
    outcome, models, _ = trained
    root = project_dir(models, None)
    registry = Registry(root)
    same = "29990101T000000-same0000"
    shutil.copytree(root / outcome.version, root / same)
    manifest = json.loads((root / same / "manifest.json").read_text())
    (root / same / "manifest.json").write_text(json.dumps({**manifest, "version": same}))
    result = registry.promote(same)  # identical weights: the same answers on the same rows, so not worse
    assert result.promoted and result.candidate_score == pytest.approx(result.current_score)
    assert result.comparison["difference"] == 0 and result.comparison["worse_confidence"] == 0
    assert result.comparison["n"] == len(registry.held_out_rows(same)[1]) > 0  # both versions' rows, once each
    runner = CliRunner()
    listed = runner.invoke(build_app(), ["models", "list", "--models", str(models), "--json"])
    statuses = {e["version"]: e["status"] for e in json.loads(listed.output)}
    assert statuses == {outcome.version: "previous", same: "current"}
    back = runner.invoke(build_app(), ["models", "rollback", "--models", str(models)])
    assert back.exit_code == 0 and registry.current() == outcome.version
    again = runner.invoke(build_app(), ["models", "rollback", "--models", str(models)])
    assert isinstance(again.exception, RegistryError)


SUBJECTS = ["Moscow", "The Kremlin", "Beijing", "Officials", "The ministry", "Analysts", "Diplomats", "Lavrov"]
CUES = {
    "manufactured": "dismissed the invasion warnings as propaganda and hype",
    "genuine": "warned that troops massing at the border are a real danger",
    "not_applicable": "discussed trade, energy supplies and the Olympics",
}


def cue_export(subjects: list[str]) -> list[dict]:
    tasks = []
    for i, subject in enumerate(subjects):
        for j, (label, cue) in enumerate(CUES.items()):
            text = f"{subject} {cue}."
            annotation = {"id": i * 10 + j, "completed_by": 1, "result": [choice("threat_characterization", label)]}
            data = {"key": f"c{i}-{j}", "text": text, "article_id": f"art{i}"}
            tasks.append({"id": i * 10 + j, "data": data, "annotations": [annotation]})
    return tasks


def test_the_model_learns_cue_phrases(schema, tmp_path):
    args = TrainingArguments(epochs=6, max_length=32, batch_size=8, progress=False, seed=0)
    outcome = run_training(cue_export(SUBJECTS), schema, tmp_path, args)
    losses = [e["loss"] for e in json.loads((outcome.model_dir / "training_log.json").read_text()) if "loss" in e]
    assert losses[-1] < losses[0] / 2
    predictor = TrainedPredictor(outcome.model_dir)
    unseen = [t["data"] for t in cue_export(["The spokesman", "Western media"])]
    predicted = [p.labels["threat_characterization"] for p in predictor.predict(unseen)]
    assert predicted == list(CUES) * 2


def test_another_schema_trains_and_predicts_without_code_changes(tmp_path):
    from pathlib import Path

    from annotation_config.schema import load_schema

    schema = load_schema(Path(__file__).parent / "fixtures" / "headline_body.yaml")
    tasks = []
    for i in range(8):
        headline = f"Smith wins game {i}" if i % 2 else f"You will not believe item {i}"
        start = headline.index("Smith") if i % 2 else None
        result = [
            {
                "from_name": "clickbait",
                "to_name": "headline",
                "type": "choices",
                "value": {"choices": ["no" if i % 2 else "yes"]},
            },
            {"from_name": "topics", "to_name": "body", "type": "choices", "value": {"choices": ["sport"]}},
        ]
        if start is not None:
            value = {"start": start, "end": start + 5, "text": "Smith", "labels": ["person"]}
            result.append({"from_name": "names", "to_name": "headline", "type": "labels", "value": value})
        data = {"id": f"n{i}", "headline": headline, "body": f"Body of story {i}."}
        tasks.append({"id": i, "data": data, "annotations": [{"id": i, "completed_by": 1, "result": result}]})
    args = TrainingArguments(max_steps=2, max_length=32, batch_size=4, progress=False)
    outcome = run_training(tasks, schema, tmp_path, args)
    assert (
        outcome.promoted and sum(json.loads((outcome.model_dir / "manifest.json").read_text())["splits"].values()) == 8
    )
    predictor = TrainedPredictor(outcome.model_dir)
    assert [v.id for v in predictor.config.views] == ["headline", "body"]
    (prediction,) = predictor.predict([tasks[1]["data"]])
    assert prediction.labels["clickbait"] in {"yes", "no"} and set(prediction.labels["topics"]) <= {"sport", "politics"}
    for span in prediction.labels["names"]:
        assert tasks[1]["data"]["headline"][span["start"] : span["end"]] == span["text"]
    prediction.to_label_studio(schema, tasks[1]["data"], predictor.model_version)


def test_explicit_export_wins_over_label_studio_in_the_environment(trained, tmp_path, monkeypatch):
    """LABEL_STUDIO_URL in the environment (set for the backend) must not turn --from-export into a conflict."""
    _, models, export = trained
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens: reading it would fail
    result = CliRunner().invoke(build_app(), ["train", "--from-export", str(export), "--models", str(models),
                                              "--if-new-data", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--freeze-layers", "-1"], "freeze-layers must be >= 0 (got -1)"),
        (["--mixed-precision", "fp8"], "mixed-precision must be auto, no, bf16 or fp16 (got 'fp8')"),
        (["--batch-size", "0"], "batch-size must be >= 1 (got 0)"),
        (["--freeze-layers", "9"], "cannot freeze 9 layers: the encoder has 6 layers"),
    ],
)
def test_bad_training_options_exit_with_one_line(trained, tmp_path, option, message, monkeypatch, capsys):
    from tests.test_reliability_support import assert_one_error_line, run_cli_in_process

    _, _, export = trained
    models = tmp_path / "models"
    code, _, err = run_cli_in_process(
        monkeypatch, capsys, "train", "--from-export", str(export), "--models", str(models), "--quiet", *option
    )
    assert code == 1
    assert_one_error_line(err, message)
    assert not models.exists() or not any(models.iterdir())  # nothing registered


def test_late_target_encoding_trains_registers_and_serves_every_dimension(schema, tmp_path):
    from dataclasses import replace

    args = replace(TINY, target_encoding="late", epochs=1)
    outcome = run_training(synthetic_export(), schema, tmp_path / "models", args, source="synthetic")
    assert outcome.status == "trained" and outcome.promoted
    manifest = json.loads((outcome.model_dir / "manifest.json").read_text())
    assert manifest["hyperparameters"]["target_encoding"] == "late"
    predictor = TrainedPredictor(outcome.model_dir)
    (prediction,) = predictor.predict([synthetic_export(1)[0]["data"]])
    for dim in schema.of_kind("single"):
        assert prediction.labels[dim.name] in dim.values and 0 < prediction.scores[dim.name] <= 1


def test_the_first_candidate_is_gated_against_the_cold_start_and_instant_learner_on_its_test_rows(schema, tmp_path):
    """With nothing promoted, the cold start or the instant learner serves: the run scores both (the learner fitted
    on the candidate's training rows, real encoder) on the candidate's test rows, and promotes only a candidate at
    least as good as the better of them."""
    models = tmp_path / "models"
    from backend.instant_rival import instant_rival_report

    outcome = run_training(synthetic_export(), schema, models, TINY, source="synthetic", rival=instant_rival_report)
    assert outcome.status == "trained"
    metrics = json.loads((outcome.model_dir / "metrics.json").read_text())
    rivals = metrics["rivals"]
    test_rows = [json.loads(line) for line in (outcome.model_dir / "test.jsonl").read_text().splitlines()]
    assert set(rivals) == {"cold_start", "instant_learner"}
    for rival in rivals.values():
        assert rival["split"] == "test" and rival["n"] == len(test_rows) > 0 and 0.0 <= rival["primary"] <= 1.0
        assert set(rival["dimensions"]) <= {d.name for d in schema.dimensions} and rival["dimensions"]
    assert rivals["instant_learner"]["model_version"].startswith("instant-")
    assert rivals["cold_start"]["model_version"].startswith("cold-start-")
    assert all(len(r["answers"]) == len(test_rows) for r in rivals.values())  # per row: for the paired bootstrap
    entry = Registry(models).read()["history"][-1]
    assert entry["action"] == ("promote" if outcome.promoted else "refused")
    assert entry["comparison"]["n"] == len(test_rows)
    if outcome.promoted:  # not worse than either: the reason names the stronger one
        assert entry["reason"].startswith("first promoted model; not worse than the")
        assert entry["current_score"] == pytest.approx(max(r["primary"] for r in rivals.values()))
    else:
        assert entry["reason"].startswith("worse than the") and entry["comparison"]["worse_confidence"] >= 0.9


def test_a_span_question_nobody_labelled_suggests_no_spans(schema, tmp_path):
    tasks = synthetic_export(12)
    for task in tasks:  # annotators answered the choices only
        for annotation in task["annotations"]:
            annotation["result"] = [r for r in annotation["result"] if r["type"] != "labels"]
    outcome = run_training(tasks, schema, tmp_path, replace(TINY, epochs=0), promote=False, source="choices only")
    manifest = json.loads((outcome.model_dir / "manifest.json").read_text())
    assert manifest["chosen"]["unlabelled_span_dimensions"] == ["evidence"]
    predictions = TrainedPredictor(outcome.model_dir).predict([t["data"] for t in tasks])
    assert all(p.labels["evidence"] == [] for p in predictions)
    assert all(p.labels["threat_characterization"] for p in predictions)
