"""The backend swaps in a promoted model without a restart, keeps serving when a promoted model cannot load, and
goes back on rollback; a request that started on one model finishes on it. Real registry, real trained models."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app, registry_link
from backend.holder import ModelHolder
from backend.settings import Settings
from tests.test_reliability_support import wait_for
from tests.test_training_pipeline import TINY, synthetic_export
from training.pipeline import run_training
from training.predict import TrainedPredictor
from training.registry import Registry, project_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_models(schema, tmp_path_factory):
    """A models folder with two trained versions in the registry of requests that name no project; the second one
    is current."""
    models = tmp_path_factory.mktemp("models")
    root = project_dir(models, None)
    # the first without the probe stage: on these few synthetic rows two probed models answer nearly alike, and the
    # version-mixing test needs two models that answer every text differently
    first = run_training(synthetic_export(12), schema, root, replace(TINY, probe_epochs=0))
    second = run_training(synthetic_export(16), schema, root, TINY, force=True)
    assert first.promoted and second.promoted
    return models, first.version, second.version


def test_swap_broken_model_and_rollback(two_models, cold_start_predictor, tmp_path):
    source, first, second = two_models
    models = tmp_path / "models"
    shutil.copytree(source, models)
    root = project_dir(models, None)
    registry = Registry(root)
    registry.rollback()  # serve the first version to begin with
    current = _current(models)
    holder = ModelHolder(lambda: cold_start_predictor, current, lambda v, folder: TrainedPredictor(folder))
    assert holder.current.model_version == first and holder.current.kind == "trained"

    serving_first = holder.current  # a request in flight holds this reference
    registry.promote(second, force=True)
    assert holder.refresh() is True
    assert holder.current.model_version == second
    tasks = [{"text": "Moscow calls the warnings propaganda."}]
    assert serving_first.predict(tasks)[0].labels  # the old model still answers the request that began on it

    (root / first / "model.safetensors").write_bytes(b"corrupt")  # a promoted model that cannot load
    registry.rollback()
    assert holder.refresh() is False
    assert holder.current.model_version == second
    assert f"model {first} failed to load" in holder.last_error

    registry.promote(second, force=True)  # pointer back on the good model: the error clears on the next change
    shutil.rmtree(root / first)
    (root / "registry.json").write_text('{"current": null, "history": []}')
    assert holder.refresh() is True
    assert holder.current is cold_start_predictor


def _current(models):
    """The promoted model of the registry of requests that name no project, as the backend reads it."""
    current, _ = registry_link(models)
    return lambda: current("default")


class SlowPredictor:
    """A trained predictor that takes a moment per task, so that a model swap lands inside requests."""

    def __init__(self, inner: TrainedPredictor) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, tasks):
        time.sleep(0.01 * len(tasks))
        return self.inner.predict(tasks)


def fingerprint(item: dict) -> tuple[list[str], list[float]]:
    """The labels and scores of one /predict result item (its task score first)."""
    regions = sorted(item["result"], key=lambda r: (r["from_name"], json.dumps(r["value"], sort_keys=True)))
    labels = [f"{r['from_name']}={json.dumps(r['value'], sort_keys=True)}" for r in regions]
    return labels, [item["score"], *(float(r.get("score") or 0.0) for r in regions)]


def same_answer(a: dict, b: dict, tolerance: float = 1e-3) -> bool:
    (labels_a, scores_a), (labels_b, scores_b) = fingerprint(a), fingerprint(b)
    return labels_a == labels_b and all(abs(x - y) <= tolerance for x, y in zip(scores_a, scores_b, strict=True))


def test_health_reports_trained_model_and_requests_never_mix_versions(two_models, cold_start_predictor, schema):
    """While the served model switches back and forth under concurrent /predict requests, every result of a
    response is the answer of the one model that the response names (compared with each model's own answers)."""
    models, first, second = two_models
    texts = [f"NATO troops {i} are massing near the border, officials say." for i in range(4)]
    datas = [{"text": text} for text in texts]
    own = {}
    for version in (first, second):
        predictions = TrainedPredictor(project_dir(models, None) / version).predict(datas)
        own[version] = [p.to_label_studio(schema, d, version) for p, d in zip(predictions, datas, strict=True)]
    # the two models answer every text differently, so a response that mixed them cannot pass for either
    assert not any(same_answer(a, b, 1e-2) for a, b in zip(own[first], own[second], strict=True))

    predictors = (lambda: cold_start_predictor, lambda version, folder: SlowPredictor(TrainedPredictor(folder)))
    app = create_app(Settings(models_dir=models, reload_interval=0.05), predictors=predictors)
    errors: list[str] = []
    seen: list[str] = []
    stop = threading.Event()
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert health["model_kind"] == "trained" and health["model_version"] == second

        def hammer() -> None:
            while not stop.is_set():
                response = client.post("/predict", json={"tasks": [{"data": d} for d in datas]})
                if response.status_code != 200:
                    errors.append(response.text)
                    continue
                body = response.json()
                version = body["model_version"]
                seen.append(version)
                for i, item in enumerate(body["results"]):
                    if item["model_version"] != version or not same_answer(item, own[version][i]):
                        errors.append(f"task {i} of a {version} response is not {version}'s answer")

        def serves(version: str) -> bool:
            mark = len(seen)
            return wait_for(lambda: version in seen[mark:], 60, f"a response of {version}")

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            registry = Registry(project_dir(models, None))
            for _ in range(4):  # eight swaps, each while three requests are in flight
                serves(second)
                registry.rollback()
                serves(first)
                registry.promote(second, force=True)
            serves(second)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert errors == []
    assert seen.count(first) and seen.count(second)
    assert client.app.state.service.schema.hash == schema.hash


def break_labels(models, version) -> list[str]:
    """Make a version's label maps disagree with the sample schema (its weights still load); returns the labels."""
    path = project_dir(models, None) / version / "label_maps.json"
    maps = json.loads(path.read_text())
    maps["frames"]["id2label"] = {"0": "Economic", "1": "Other"}
    path.write_text(json.dumps(maps))
    return ["Economic", "Other"]


def test_a_promoted_model_that_does_not_fit_the_schema_is_refused_and_the_old_one_serves(
    two_models, cold_start_predictor, schema, tmp_path
):
    source, first, second = two_models
    models = tmp_path / "models"
    shutil.copytree(source, models)
    registry = Registry(project_dir(models, None))
    registry.rollback()
    current = _current(models)
    holder = ModelHolder(
        lambda: cold_start_predictor, current, lambda v, folder: TrainedPredictor(folder), schema=schema
    )
    assert holder.current.model_version == first
    labels = break_labels(models, second)
    registry.promote(second, force=True)  # no schema given: as a promotion made for another schema would
    assert holder.refresh() is False and holder.current.model_version == first
    assert holder.last_error == (
        f"model {second}: dimension 'frames' has labels {labels} but schema {schema.name!r} has "
        f"{schema.dimension('frames').values}; still serving {first}"
    )


def test_after_a_restart_the_best_version_that_loads_and_fits_serves_rather_than_the_cold_start(
    two_models, cold_start_predictor, tmp_path
):
    source, first, second = two_models
    predictors = (lambda: cold_start_predictor, lambda version, folder: TrainedPredictor(folder))

    def restart(models) -> dict:
        app = create_app(Settings(models_dir=models, reload_interval=60, train_warm=False), predictors=predictors)
        return TestClient(app).get("/health").json()

    corrupt = b"corrupt"
    for name, spoil in {
        "corrupt": lambda models: (project_dir(models, None) / second / "model.safetensors").write_bytes(corrupt),
        "incompatible": lambda models: break_labels(models, second),
        "missing": lambda models: shutil.rmtree(project_dir(models, None) / second),
    }.items():
        models = tmp_path / name
        shutil.copytree(source, models)
        spoil(models)  # the current version, `second`, cannot serve
        health = restart(models)
        assert (health["model_kind"], health["model_version"]) == ("trained", first), (name, health)
        assert f"serving {first} instead" in health["last_reload_error"], (name, health)
        assert second in health["last_reload_error"], (name, health)
    # now nothing trained loads: the cold start says so
    (project_dir(models, None) / first / "model.safetensors").write_bytes(b"corrupt")
    health = restart(models)
    assert health["model_kind"] == "cold-start" and "no other version loads and fits" in health["last_reload_error"]
