"""The model ladder in the app: cold start -> instant learner (per project, from webhooks or stored annotations)
-> fine-tuned model; /setup, /predict, /health and /versions agree on which rung serves."""

from __future__ import annotations

import copy
import json

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.settings import Settings
from tests.test_reliability_support import FakeLabelStudio, wait_for
from tests.test_training_pipeline import synthetic_export

NO_REGISTRY = (lambda project: None, lambda project: [])


def _client(tmp_path, predictor, registry=NO_REGISTRY, trained=None, **settings) -> TestClient:
    app = create_app(
        Settings(models_dir=tmp_path / "models", **settings),
        predictors=(lambda: predictor, trained),
        registry=registry,
    )
    return TestClient(app)


def _created(task: dict, project: int = 1) -> dict:
    """The ANNOTATION_CREATED payload Label Studio 1.23 sends for a task's first annotation (recorded shape)."""
    annotation = {**task["annotations"][0], "task": task["id"], "project": project}
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": project},
        "task": {"id": task["id"], "data": task["data"], "project": project},
        "annotation": annotation,
    }


@pytest.fixture(scope="module")
def export() -> list[dict]:
    tasks = synthetic_export(8)
    for number, task in enumerate(tasks, start=1):  # ids as Label Studio gives them
        task["id"] = number
        task["annotations"][0].update({"id": 100 + number, "completed_by": 1, "was_cancelled": False})
    return tasks


def _version(client: TestClient, project: str = "1.1700000000") -> str:
    return client.post("/setup", json={"project": project}).json()["model_version"]


def test_annotations_move_their_project_to_the_instant_rung(tmp_path, cold_start_predictor, export):
    cold = cold_start_predictor.model_version
    with _client(tmp_path, cold_start_predictor) as client:
        assert _version(client) == cold
        for task in export[:5]:
            assert client.post("/webhook", json=_created(task)).status_code == 200
        client.app.state.service.ladder.wait("1", timeout=30)
        instant = _version(client)
        assert instant.startswith("instant-") and instant != cold
        predicted = client.post("/predict", json={"project": "1.1700000000", "tasks": [{"data": export[6]["data"]}]})
        assert predicted.json()["model_version"] == instant
        assert {r["model_version"] for r in predicted.json()["results"]} == {instant}
        health = client.get("/health").json()
        assert health["rung"] == "instant" and health["model_version"] == instant
        assert "instant learner on 5 accepted tasks of project 1" in health["rung_reason"]
        assert health["instant"]["1"]["accepted_tasks"] == 5
        assert instant in client.get("/versions").json()["versions"]

        # Another project has no labels: its suggestions stay the cold start's.
        other = client.post("/predict", json={"project": "2.1700000000", "tasks": [{"data": export[6]["data"]}]})
        assert other.json()["model_version"] == cold

        # One more label gives a new version; deleting every annotation goes back to the cold start.
        client.post("/webhook", json=_created(export[5]))
        client.app.state.service.ladder.wait("1", timeout=30)
        newer = _version(client)
        assert newer.startswith("instant-") and newer != instant
        ids = [{"id": 100 + t["id"]} for t in export[:6]]
        client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": ids})
        client.app.state.service.ladder.wait("1", timeout=30)
        assert _version(client) == cold


def test_a_restart_rebuilds_the_instant_learner_from_stored_annotations(tmp_path, cold_start_predictor, export):
    with _client(tmp_path / "a", cold_start_predictor) as client:
        for task in export[:6]:
            client.post("/webhook", json=_created(task))
        client.app.state.service.ladder.wait("1", timeout=30)
        learnt = _version(client)
    assert learnt.startswith("instant-")

    # A new backend process: Label Studio (a local stand-in serving the project's JSON export) holds the labels.
    stored = copy.deepcopy(export[:6]) + [{"id": 99, "data": export[7]["data"], "annotations": []}]
    with FakeLabelStudio(export=stored) as fake:
        settings = {"label_studio_url": fake.url, "label_studio_api_key": "key-for-the-configured-server"}
        with _client(tmp_path / "b", cold_start_predictor, **settings) as client:
            assert _version(client) == cold_start_predictor.model_version  # the first /setup starts the read
            rebuilt = wait_for(lambda: (v := _version(client)) != cold_start_predictor.model_version and v, 60, "fit")
    assert rebuilt == learnt  # same accepted labels, same model, same version
    assert any(route == "export" for _, route, _ in fake.requests)
    assert all(auth.endswith("key-for-the-configured-server") for _, route, auth in fake.requests if auth)


class _Trained:
    """Stands for a loaded fine-tuned model: only its identity matters to the ladder."""

    kind, model_version = "trained", "20261202T000000-aaaaaaaa"

    def __init__(self, answers) -> None:
        self._answers = answers

    def predict(self, tasks):
        return self._answers.predict(tasks)


def test_a_promoted_fine_tuned_model_serves_above_the_instant_learner(tmp_path, cold_start_predictor, export):
    folder = tmp_path / "models" / _Trained.model_version
    folder.mkdir(parents=True)
    schema = cold_start_predictor.schema
    maps = {d.name: {"kind": d.kind, "id2label": dict(enumerate(d.values))} for d in schema.dimensions}
    (folder / "label_maps.json").write_text(json.dumps(maps))  # fits the schema: the holder loads it
    registry = (lambda project: (_Trained.model_version, folder), lambda project: [_Trained.model_version])
    trained = lambda version, path: _Trained(cold_start_predictor)  # noqa: E731
    with _client(tmp_path, cold_start_predictor, registry=registry, trained=trained) as client:
        for task in export[:5]:
            client.post("/webhook", json=_created(task))
        client.app.state.service.ladder.wait("1", timeout=30)
        assert _version(client) == _Trained.model_version
        health = client.get("/health").json()
        assert health["rung"] == "trained" and "fine-tuned model" in health["rung_reason"]
        assert health["instant"]["1"]["model_version"].startswith("instant-")  # still learning, one rung below


def test_the_instant_learner_can_be_turned_off(tmp_path, cold_start_predictor, export):
    with _client(tmp_path, cold_start_predictor, instant_learner=False) as client:
        for task in export[:5]:
            client.post("/webhook", json=_created(task))
        assert _version(client) == cold_start_predictor.model_version
        health = client.get("/health").json()
        assert health["rung"] == "cold-start" and "WORKBENCH_INSTANT_LEARNER=false" in health["rung_reason"]
