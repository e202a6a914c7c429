"""The trained model on ONNX Runtime int8: exported with the version, checked against torch, served, or refused."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from tests.test_training_pipeline import TINY, synthetic_export
from training import onnx_check, onnx_serving
from training.onnx_serving import ONNX_FILE, ONNX_RUNTIME, TORCH_RUNTIME
from training.pipeline import run_training
from training.predict import TrainedPredictor

# the encoder's own heads serve every answer (no companions), so torch and ONNX answers compare head for head
ENCODER_ONLY = dataclasses.replace(TINY, ngram_weight=0.0, embedding_weight=0.0, refit_heads=False)
RECORDS = [
    {"text": "Moscow calls the warnings of an invasion Western hype and propaganda.", "article_id": "x1"},
    {"text": "NATO says the troops massing at the border are a real and present danger.", "article_id": "x2"},
    {"text": "", "article_id": "x3"},
    {"text": "Kyiv insists the threat is real. " * 12, "article_id": "x4"},  # longer than max_length: truncated
]


@pytest.fixture(scope="module", params=["pair", "late"])
def model_dir(request, schema, tmp_path_factory):
    """A model trained with each target encoding: (target, text) pair passes, or one pass and target queries."""
    args = dataclasses.replace(ENCODER_ONLY, target_encoding=request.param)
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    outcome = run_training(synthetic_export(16), schema, folder, args, promote=False, source="test")
    return outcome.model_dir


def test_a_saved_version_carries_its_int8_graph_and_the_check_that_chose_it(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    serving = manifest["serving"]
    assert serving["runtime"] == ONNX_RUNTIME, serving["reason"]
    assert (model_dir / ONNX_FILE).is_file()
    assert serving["check"], "the check names every dimension it compared"
    for name, scores in serving["check"][ONNX_RUNTIME].items():
        assert scores["torch"] - scores["onnx"] <= onnx_check.MAX_F1_DROP + 1e-9, name
    predictor = TrainedPredictor(model_dir, threads=2)
    assert predictor.runtime == ONNX_RUNTIME
    assert "within 0.5 points" in predictor.runtime_description


def test_onnx_int8_answers_like_torch_fp32_for_every_head(model_dir):
    onnx = TrainedPredictor(model_dir, threads=2)
    torch_ = TrainedPredictor(model_dir, runtime=TORCH_RUNTIME)
    assert onnx.runtime == ONNX_RUNTIME and torch_.runtime == TORCH_RUNTIME
    views = [v.id for v in onnx.config.views]
    assert len(views) == (4 if onnx.config.target_encoding == "pair" else 1)
    got, expected = onnx.outputs(RECORDS), torch_.outputs(RECORDS)
    assert got.logits.keys() == expected.logits.keys()
    for name, logits in expected.logits.items():
        assert got.logits[name].shape == logits.shape
        assert np.abs(got.logits[name] - logits).max() < 0.15, name  # int8 noise (measured up to 0.12)...
    flat = [np.concatenate([out.logits[n].ravel() for n in sorted(out.logits)]) for out in (got, expected)]
    assert np.corrcoef(*flat)[0, 1] > 0.99  # ... not a different model
    for left, right in zip(onnx.predict(RECORDS), torch_.predict(RECORDS), strict=True):
        for dim in onnx.dimensions:
            if dim["kind"] == "single":
                assert left.labels[dim["name"]] == right.labels[dim["name"]], dim["name"]
    # a text's answer never depends on the texts that came with it (each sequence runs alone)
    alone = [onnx.outputs([record]) for record in RECORDS]
    for i, single in enumerate(alone):
        for name, logits in got.logits.items():
            np.testing.assert_array_equal(single.logits[name][0], logits[i])


def test_embeddings_for_the_companions_match_torch(schema, tmp_path):
    args = dataclasses.replace(TINY, ngram_weight=0.0, embedding_weight=1.0)
    outcome = run_training(synthetic_export(16), schema, tmp_path, args, promote=False, source="test")
    onnx = TrainedPredictor(outcome.model_dir, threads=2)
    torch_ = TrainedPredictor(outcome.model_dir, runtime=TORCH_RUNTIME)
    assert onnx.runtime == ONNX_RUNTIME
    got, expected = onnx.outputs(RECORDS), torch_.outputs(RECORDS)
    assert got.embeddings.keys() == expected.embeddings.keys() == {"text"}
    cosine = (got.embeddings["text"] * expected.embeddings["text"]).sum(1)
    assert cosine.min() > 0.97, cosine
    singles = [d["name"] for d in onnx.dimensions if d["kind"] == "single"]
    for left, right in zip(onnx.predict(RECORDS[:2]), torch_.predict(RECORDS[:2]), strict=True):
        assert {n: left.labels[n] for n in singles} == {n: right.labels[n] for n in singles}


def test_a_graph_that_loses_accuracy_is_not_served_and_the_manifest_says_why(schema, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_check, "MAX_F1_DROP", -1.0)  # no graph can pass: every dimension "lost" points
    outcome = run_training(synthetic_export(16), schema, tmp_path, ENCODER_ONLY, promote=False, source="test")
    serving = json.loads((outcome.model_dir / "manifest.json").read_text())["serving"]
    assert serving["runtime"] == TORCH_RUNTIME
    assert serving["reason"].startswith("ONNX int8 lost more than") and "threat_characterization" in serving["reason"]
    assert "answers differ" in serving["reason"] and "ONNX fp32 lost more than" in serving["reason"]
    assert serving["check"].keys() == {"onnx-int8", "onnx-fp32"}
    assert all("changed_answers" in scores for check in serving["check"].values() for scores in check.values())
    predictor = TrainedPredictor(outcome.model_dir)
    assert predictor.runtime == TORCH_RUNTIME and "lost more than" in predictor.runtime_description
    # the graph stays: an operator who accepts the difference may still serve it
    assert TrainedPredictor(outcome.model_dir, runtime=ONNX_RUNTIME).runtime == ONNX_RUNTIME


def test_no_onnx_and_a_damaged_graph_fall_back_to_torch_with_a_reason(schema, tmp_path, model_dir):
    args = dataclasses.replace(ENCODER_ONLY, onnx=False)
    outcome = run_training(synthetic_export(16), schema, tmp_path, args, promote=False, source="test")
    assert TrainedPredictor(outcome.model_dir).runtime_description == "torch-fp32 (ONNX export turned off (--no-onnx))"
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    (damaged / ONNX_FILE).write_bytes(b"not a graph")
    predictor = TrainedPredictor(damaged)
    assert predictor.runtime == TORCH_RUNTIME
    assert predictor.runtime_reason.startswith("ONNX int8 could not load")
    assert len(predictor.predict(RECORDS)) == len(RECORDS)


@pytest.mark.parametrize("model_dir", ["late"], indirect=True)  # one target encoding is enough here
@pytest.mark.parametrize("runtime", ["auto", "torch-fp32"])
def test_health_says_what_runs_the_served_model_and_why(model_dir, runtime, tmp_path):
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from backend.settings import Settings
    from training.registry import Registry

    models = tmp_path / "models"
    shutil.copytree(model_dir.parent, models, ignore=shutil.ignore_patterns("registry.json", ".*"))
    Registry(models).promote(model_dir.name, force=True)
    settings = Settings(models_dir=models, reload_interval=60, train_warm=False, trained_runtime=runtime)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["model_kind"] == "trained"
        expected = "onnx-int8 (ONNX int8 within 0.5 points" if runtime == "auto" else "torch-fp32 (torch-fp32 asked"
        assert health["model_runtime"].startswith(expected), health["model_runtime"]
        response = client.post("/predict", json={"tasks": [{"data": record} for record in RECORDS]})
        assert response.status_code == 200 and len(response.json()["results"]) == len(RECORDS)


def test_an_unchanged_encoder_is_exported_once_and_a_damaged_cached_graph_is_not_served(schema, tmp_path, monkeypatch):
    from training.modeling import MultiHeadModel
    from training.trainer import load_tokenizer

    monkeypatch.setenv("WORKBENCH_ONNX_CACHE_DIR", str(tmp_path / "cache"))
    exports = []
    real_export = onnx_serving._export
    monkeypatch.setattr(onnx_serving, "_export", lambda *a: exports.append(a) or real_export(*a))
    model, tokenizer = MultiHeadModel.from_encoder(schema, max_seq_length=48), load_tokenizer(None)
    first = onnx_serving.export_onnx_model(model, tokenizer, tmp_path / "v1")
    second = onnx_serving.export_onnx_model(model, tokenizer, tmp_path / "v2")
    assert len(exports) == 1 and first.keys() == second.keys() == {"onnx-int8", "onnx-fp32"}
    assert all(first[runtime].read_bytes() == second[runtime].read_bytes() for runtime in first)
    (cached,) = (tmp_path / "cache").glob("trained-encoder-*-int8.onnx")
    with torch.no_grad():
        model.encoder.embeddings.word_embeddings.weight[5].add_(1.0)  # another encoder: another graph
    onnx_serving.export_onnx_model(model, tokenizer, tmp_path / "v3")
    assert len(exports) == 2

    # without fine-tuning a version's encoder is the pretrained one, whose graph is that cached entry: damage it
    cached.write_bytes(b"not a graph")
    args = dataclasses.replace(ENCODER_ONLY, epochs=0)
    outcome = run_training(synthetic_export(16), schema, tmp_path / "models", args, promote=False, source="test")
    serving = json.loads((outcome.model_dir / "manifest.json").read_text())["serving"]
    assert len(exports) == 2  # the cache answered, with an int8 file that does not load: the fp32 graph serves
    assert serving["runtime"] == "onnx-fp32" and serving["reason"].startswith("ONNX int8: ONNX int8 could not load")
    assert not (outcome.model_dir / ONNX_FILE).exists()
    assert TrainedPredictor(outcome.model_dir).runtime == "onnx-fp32"


def test_when_int8_loses_points_the_fp32_graph_serves_with_torch_s_answers(schema, tmp_path, monkeypatch):
    real_compare = onnx_check._compare
    calls = []

    def int8_loses(reference, candidate, records):  # int8 is compared first; pretend it lost a dimension
        check, worse = real_compare(reference, candidate, records)
        calls.append(worse)
        return check, worse or (
            ["threat_characterization 50.0 vs 60.0 (1 of 3 answers differ)"] if len(calls) == 1 else []
        )

    monkeypatch.setattr(onnx_check, "_compare", int8_loses)
    outcome = run_training(synthetic_export(16), schema, tmp_path, ENCODER_ONLY, promote=False, source="test")
    serving = json.loads((outcome.model_dir / "manifest.json").read_text())["serving"]
    assert len(calls) == 2 and calls[1] == []  # fp32 really passed the comparison
    assert serving["runtime"] == "onnx-fp32", serving["reason"]
    assert (
        serving["reason"].startswith("ONNX int8 lost more than 0.5 points") and "ONNX fp32 within" in serving["reason"]
    )
    fp32 = TrainedPredictor(outcome.model_dir, threads=2)
    torch_ = TrainedPredictor(outcome.model_dir, runtime=TORCH_RUNTIME)
    assert fp32.runtime == "onnx-fp32"
    got, expected = fp32.outputs(RECORDS), torch_.outputs(RECORDS)
    for name, logits in expected.logits.items():
        np.testing.assert_allclose(got.logits[name], logits, atol=2e-3, err_msg=name)  # fp32: torch's own numbers
