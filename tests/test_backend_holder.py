"""The backend swaps in a promoted model without a restart, keeps serving when a promoted model cannot load, and
goes back on rollback; a request that started on one model finishes on it. Real registry, real trained models."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app, registry_link
from backend.holder import ModelHolder
from backend.settings import Settings
from tests.test_training_pipeline import TINY, synthetic_export
from training.pipeline import run_training
from training.predict import TrainedPredictor
from training.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_models(schema, tmp_path_factory):
    """A registry with two trained versions; the second one is current."""
    models = tmp_path_factory.mktemp("models")
    first = run_training(synthetic_export(12), schema, models, TINY)
    second = run_training(synthetic_export(16), schema, models, TINY, force=True)
    assert first.promoted and second.promoted
    return models, first.version, second.version


def test_swap_broken_model_and_rollback(two_models, cold_start_predictor, tmp_path):
    source, first, second = two_models
    models = tmp_path / "models"
    shutil.copytree(source, models)
    registry = Registry(models)
    registry.rollback()  # serve the first version to begin with
    current, _ = registry_link(models)
    holder = ModelHolder(lambda: cold_start_predictor, current, lambda v, folder: TrainedPredictor(folder))
    assert holder.current.model_version == first and holder.current.kind == "trained"

    serving_first = holder.current  # a request in flight holds this reference
    registry.promote(second, force=True)
    assert holder.refresh() is True
    assert holder.current.model_version == second
    tasks = [{"text": "Moscow calls the warnings propaganda."}]
    assert serving_first.predict(tasks)[0].labels  # the old model still answers the request that began on it

    (models / first / "model.safetensors").write_bytes(b"corrupt")  # a promoted model that cannot load
    registry.rollback()
    assert holder.refresh() is False
    assert holder.current.model_version == second
    assert f"model {first} failed to load" in holder.last_error

    registry.promote(second, force=True)  # pointer back on the good model: the error clears on the next change
    shutil.rmtree(models / first)
    (models / "registry.json").write_text('{"current": null, "history": []}')
    assert holder.refresh() is True
    assert holder.current is cold_start_predictor


def test_health_reports_trained_model_and_requests_never_mix_versions(two_models, cold_start_predictor, schema):
    models, _, second = two_models
    predictors = (lambda: cold_start_predictor, lambda version, folder: TrainedPredictor(folder))
    app = create_app(Settings(models_dir=models, reload_interval=0.2), predictors=predictors)
    errors: list[str] = []
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert health["model_kind"] == "trained" and health["model_version"] == second

        def hammer() -> None:
            for _ in range(10):
                body = client.post(
                    "/predict", json={"tasks": [{"data": {"text": f"NATO troops {i}"}} for i in range(4)]}
                )
                if body.status_code != 200:
                    errors.append(body.text)
                    continue
                versions = {item["model_version"] for item in body.json()["results"]}
                if len(versions) != 1 or versions != {body.json()["model_version"]}:
                    errors.append(f"mixed versions {versions}")

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        Registry(models).rollback()
        for thread in threads:
            thread.join()
        Registry(models).promote(second, force=True)
    assert errors == []
    assert client.app.state.service.schema.hash == schema.hash


def break_labels(models, version) -> list[str]:
    """Make a version's label maps disagree with the sample schema (its weights still load); returns the labels."""
    path = models / version / "label_maps.json"
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
    registry = Registry(models)
    registry.rollback()
    current, _ = registry_link(models)
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

    for name, spoil in {
        "corrupt": lambda models: (models / second / "model.safetensors").write_bytes(b"corrupt"),
        "incompatible": lambda models: break_labels(models, second),
        "missing": lambda models: shutil.rmtree(models / second),
    }.items():
        models = tmp_path / name
        shutil.copytree(source, models)
        spoil(models)  # the current version, `second`, cannot serve
        health = restart(models)
        assert (health["model_kind"], health["model_version"]) == ("trained", first), (name, health)
        assert f"serving {first} instead" in health["last_reload_error"], (name, health)
        assert second in health["last_reload_error"], (name, health)
    (models / first / "model.safetensors").write_bytes(b"corrupt")  # now nothing trained loads: the cold start says so
    health = restart(models)
    assert health["model_kind"] == "cold-start" and "no other version loads and fits" in health["last_reload_error"]
