"""One backend, several Label Studio projects: each is served from its own registry and learner, a bound backend
refuses other projects, learners are capped, and a promoted model that falls behind on new labels stops serving."""

from __future__ import annotations

import json

import pytest

from annotation_config.regions import Prediction
from tests.test_ladder import _client, _created, _version, export  # noqa: F401  (the export fixture)
from tests.test_training_pipeline import synthetic_export


class _Trained:
    """A loaded fine-tuned model: its identity, and answers chosen by the test."""

    kind = "trained"

    def __init__(self, version: str, answer) -> None:
        self.model_version = version
        self._answer = answer

    def predict(self, tasks):
        return [Prediction(labels=self._answer(task)) for task in tasks]


def _fits_schema(folder, schema) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    maps = {d.name: {"kind": d.kind, "id2label": dict(enumerate(d.values))} for d in schema.dimensions}
    (folder / "label_maps.json").write_text(json.dumps(maps))  # the holder checks the maps before it serves


def test_a_model_promoted_for_one_project_serves_that_project_only(tmp_path, cold_start_predictor):
    schema = cold_start_predictor.schema
    folder = tmp_path / "m1"
    _fits_schema(folder, schema)
    promoted = {"1": ("20261208T000000-11111111", folder)}
    versions = lambda project: [promoted[project][0]] if project in promoted else []  # noqa: E731
    registry = (lambda project: promoted.get(project), versions)
    trained = lambda version, path: _Trained(version, lambda task: {})  # noqa: E731
    with _client(tmp_path, cold_start_predictor, registry=registry, trained=trained) as client:
        assert _version(client, "1.1700000000") == "20261208T000000-11111111"
        assert _version(client, "2.1700000001") == cold_start_predictor.model_version
        body = client.post("/predict", json={"project": "2.1700000001", "tasks": [{"data": {"text": "x"}}]}).json()
        assert body["model_version"] == cold_start_predictor.model_version
        assert client.get("/versions", params={"project": "1"}).json()["versions"][-1] == "20261208T000000-11111111"
        assert "20261208T000000-11111111" not in client.get("/versions", params={"project": "2"}).json()["versions"]
        health = client.get("/health", params={"project": "2"}).json()
        assert health["rung"] == "cold-start" and health["instant"]["1"]["promoted"] == "20261208T000000-11111111"
        assert health["instant"]["2"]["promoted"] is None


def test_a_bound_backend_refuses_other_projects_and_learns_nothing_from_them(tmp_path, cold_start_predictor, export):  # noqa: F811
    with _client(tmp_path, cold_start_predictor, projects="1,4") as client:
        task = {"data": {"text": "x"}}
        refused = client.post("/predict", json={"project": "2.1700000000", "tasks": [task]})
        assert refused.status_code == 403 and "WORKBENCH_PROJECTS=1,4" in refused.json()["detail"][0]["msg"]
        assert refused.json()["detail"][0]["loc"] == ["body", "project"]
        assert client.post("/predict", json={"tasks": [task]}).status_code == 403  # no project named: not bound
        assert client.post("/setup", json={"project": "2.1700000000"}).status_code == 403
        for item in export[:3]:
            assert client.post("/webhook", json=_created(item, project=2)).status_code == 403
        start = {"action": "START_TRAINING", "project": {"id": 2}}
        assert client.post("/webhook", json=start).status_code == 403
        assert client.get("/health").json()["instant"] == {}  # no learner was made for project 2
        assert client.get("/health").json()["training"]["requests"] == 0
        assert client.post("/predict", json={"project": "4.1700000000", "tasks": [task]}).status_code == 200


def test_learners_are_capped_and_a_dropped_project_comes_back(tmp_path, cold_start_predictor):
    with _client(tmp_path, cold_start_predictor, max_projects=2) as client:
        for project in ("1", "2", "3"):
            _version(client, f"{project}.1700000000")
        assert sorted(client.get("/health").json()["instant"]) == ["2", "3"]  # least recently used out first
        _version(client, "1.1700000000")
        assert sorted(client.get("/health").json()["instant"]) == ["1", "3"]


@pytest.fixture(scope="module")
def varied() -> list[dict]:
    """Annotated tasks whose threat label varies, ids as Label Studio gives them."""
    tasks = synthetic_export(24)[:24]
    for number, task in enumerate(tasks, start=1):
        task["id"] = number
        task["annotations"][0].update({"id": 500 + number, "completed_by": 1})
    return tasks


def test_a_promoted_model_that_falls_behind_on_new_labels_stops_serving(tmp_path, cold_start_predictor, varied):
    """Test-then-train: each accepted annotation first scores every rung's suggestion; a fine-tuned model that scores
    lower on the last annotations than the instant learner gives way to it until a new version is promoted."""
    schema = cold_start_predictor.schema
    gold = {task["data"]["text"]: task for task in varied}
    folder = tmp_path / "m1"
    _fits_schema(folder, schema)
    current = {"1": ("20261208T000000-bad00001", folder)}
    registry = (lambda project: current.get(project), lambda project: [])

    def wrong(task):  # answers every single choice with a label the annotator did not give
        labels = {}
        for region in gold[task["text"]]["annotations"][0]["result"]:
            if region["type"] == "choices" and region["from_name"] != "frames":
                dim = schema.dimension(region["from_name"])
                labels[dim.name] = next(v for v in dim.values if v != region["value"]["choices"][0])
        return labels

    trained = lambda version, path: _Trained(version, wrong)  # noqa: E731
    with _client(tmp_path, cold_start_predictor, registry=registry, trained=trained) as client:
        ladder = client.app.state.service.ladder
        assert _version(client, "1.1700000000") == "20261208T000000-bad00001"
        for task in varied[:9]:
            client.post("/webhook", json=_created(task))
            ladder.wait("1", timeout=30)
        assert _version(client, "1.1700000000") == "20261208T000000-bad00001"  # 9 scored: too few to judge
        for task in varied[9:14]:
            client.post("/webhook", json=_created(task))
            ladder.wait("1", timeout=30)
        health = client.get("/health", params={"project": "1"}).json()
        assert health["rung"] == "instant", health["rung_reason"]
        assert "the fine-tuned model 20261208T000000-bad00001 scored lower" in health["rung_reason"]
        scores = health["instant"]["1"]["running_scores"]
        assert scores["trained:20261208T000000-bad00001"]["primary"] < scores["instant"]["primary"]
        assert scores["cold-start"]["n"] == 14  # every rung is scored, the cold start too
        assert scores["trained:20261208T000000-bad00001"]["n"] == 14
        # a new promoted version serves again, judged afresh
        current["1"] = ("20261208T000001-good0002", folder)
        ladder.refresh()
        assert _version(client, "1.1700000000") == "20261208T000001-good0002"


def test_comma_separated_variables_are_read_from_the_environment(monkeypatch):
    from backend.settings import Settings

    monkeypatch.setenv("WORKBENCH_PROJECTS", "1, 4")
    monkeypatch.setenv("WORKBENCH_ALLOWED_HOSTS", "wb.example.org,10.0.0.5")
    settings = Settings()
    assert settings.projects == ["1", "4"] and settings.allowed_hosts == ["wb.example.org", "10.0.0.5"]
    assert settings.serves_project("4.1700000000")
    assert not settings.serves_project("2") and not settings.serves_project(None)
