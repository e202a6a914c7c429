"""The ML backend's protocol, in process: exact response shapes Label Studio accepts, bad input, auth, limits."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from label_studio_sdk.label_interface import LabelInterface

from annotation_config.label_config import render_label_config
from backend.app import create_app
from backend.settings import Settings

RECORDED = Path(__file__).parent / "fixtures" / "label_studio_requests"
NO_REGISTRY = (lambda project: None, lambda project: [])


def make_client(tmp_path, predictor, **settings) -> TestClient:
    app = create_app(
        Settings(models_dir=tmp_path / "models", **settings), predictors=(lambda: predictor, None), registry=NO_REGISTRY
    )
    return TestClient(app)


@pytest.fixture()
def client(tmp_path, cold_start_predictor):
    with make_client(tmp_path, cold_start_predictor, max_tasks=64, max_text_chars=5000) as test_client:
        yield test_client


def test_health_names_the_cold_start_model(client, schema):
    body = client.get("/health").json()
    assert body["status"] == "UP"
    assert body["model_version"] == f"cold-start-{schema.hash}"
    assert body["model_kind"] == "cold-start"
    assert body["training"]["state"] == "idle"
    assert client.get("/").json()["model_version"] == body["model_version"]


def test_predict_gives_one_valid_prediction_per_task_in_order(client, schema, sample_tasks):
    tasks = [{"id": i, "data": task} for i, task in enumerate(sample_tasks[:32])]
    response = client.post("/predict", json={"tasks": tasks, "project": "1.1700000000", "label_config": "<View/>"})
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == len(tasks)
    interface = LabelInterface(render_label_config(schema))
    for task, prediction in zip(tasks, body["results"], strict=True):
        assert set(prediction) == {"result", "score", "model_version"}
        assert prediction["model_version"] == body["model_version"] == f"cold-start-{schema.hash}"
        assert 0 < prediction["score"] < 0.9
        # label-studio-sdk's own validator: the prediction fits the labeling config Label Studio holds.
        assert interface.validate_prediction({"result": prediction["result"]}, return_errors=True) == []
        answered = {r["from_name"] for r in prediction["result"]}
        assert {d.name for d in schema.of_kind("single")} <= answered
        for region in prediction["result"]:
            if region["type"] == "labels":
                value = region["value"]
                assert task["data"]["text"][value["start"] : value["end"]] == value["text"]
    # Same text, same model: same answer, whatever the batch.
    single = client.post("/predict", json={"tasks": tasks[5:6]}).json()["results"][0]
    assert single["result"] == body["results"][5]["result"]


@pytest.mark.skipif(not RECORDED.exists(), reason="no recorded Label Studio requests yet")
@pytest.mark.parametrize("name", sorted(p.stem for p in RECORDED.glob("*.json")) if RECORDED.exists() else [])
def test_requests_recorded_from_label_studio_are_answered(client, schema, name):
    body = json.loads((RECORDED / f"{name}.json").read_text(encoding="utf-8"))
    route = "/" + name.split("-")[0]
    if route == "/setup":
        body["access_token"] = "token-from-label-studio"
    response = client.post(route, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    if route == "/predict":
        assert len(answer["results"]) == len(body["tasks"])
        assert all(item["model_version"] == f"cold-start-{schema.hash}" for item in answer["results"])
    elif route == "/setup":
        assert answer == {"model_version": f"cold-start-{schema.hash}"}
    else:
        assert answer["action"] == body["action"]
        assert answer["status"] in {"recorded", "queued", "busy", "ignored"}


def test_setup_refuses_a_config_that_does_not_fit(client, schema):
    config = render_label_config(schema).replace('value="genuine"', 'value="real"').replace('name="frames"', 'name="f"')
    response = client.post("/setup", json={"project": "3.1700000000", "schema": config})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "missing control 'frames'" in message
    assert "lacks label 'genuine'" in message and "unknown label 'real'" in message


@pytest.mark.parametrize(
    ("body", "status", "loc", "fragment"),
    [
        ({"tasks": []}, 422, ["body", "tasks"], "no tasks"),
        (
            {"tasks": [{"data": {"text": "ok"}}, {"data": {"title": "no text"}}]},
            422,
            ["body", "tasks", 1, "data", "text"],
            "task 1 has no field 'text'",
        ),
        ({"tasks": [{"data": {"text": ["a list"]}}]}, 422, ["body", "tasks", 0, "data", "text"], "must be a string"),
        ({"tasks": [{"data": {"text": "x" * 5001}}]}, 413, ["body", "tasks", 0, "data", "text"], "limit is 5000"),
        ({"tasks": [{"data": {"text": "x"}}] * 65}, 413, ["body", "tasks"], "limit is 64"),
        ({"tasks": [{"nodata": 1}]}, 422, ["body", "tasks", 0, "data"], "Field required"),
        ({"tasks": "all"}, 422, ["body", "tasks"], "valid list"),
    ],
)
def test_bad_predict_requests_name_the_task_and_field(client, body, status, loc, fragment):
    response = client.post("/predict", json=body)
    assert response.status_code == status
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    assert fragment in detail["msg"]


def test_malformed_json_and_unknown_event(client):
    response = client.post("/predict", content=b'{"tasks": [', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    response = client.post("/webhook", json={"action": "SOMETHING_ELSE"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "action"]
    response = client.post("/webhook", json={"project": {"id": 1}})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "action"]


def test_webhook_events_are_accepted_and_training_requests_recorded(client):
    for action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "PROJECT_UPDATED"):
        response = client.post("/webhook", json={"action": action, "project": {"id": 1}, "annotations": [{"id": 3}]})
        assert response.status_code == 200
    assert client.get("/health").json()["training"]["new_annotations"] == 3


def test_versions_and_metrics(client, schema, sample_tasks):
    assert client.get("/versions").json() == {
        "versions": [f"cold-start-{schema.hash}"],
        "current": f"cold-start-{schema.hash}",
        "rung": "cold-start",
        "rung_reason": "no accepted annotation yet",
    }
    client.post("/predict", json={"tasks": [{"data": sample_tasks[0]}]})
    text = client.get("/metrics").text
    assert 'workbench_requests_total{route="/predict",status="200"}' in text
    assert f'workbench_model_info{{kind="cold-start",model_version="cold-start-{schema.hash}"}} 1.0' in text
    assert 'workbench_predictions_total{dimension="threat_characterization"' in text
    assert "workbench_request_seconds_bucket" in text


def test_basic_auth_on_every_route_but_health(tmp_path, cold_start_predictor):
    with make_client(tmp_path, cold_start_predictor, basic_auth_user="ann", basic_auth_password="s3cret") as c:
        assert c.get("/health").status_code == 200
        for method, route in [("get", "/"), ("post", "/predict"), ("post", "/setup"), ("post", "/webhook"),
                              ("get", "/versions"), ("get", "/metrics"), ("get", "/openapi.json")]:  # fmt: skip
            response = getattr(c, method)(route)
            assert response.status_code == 401, route
            assert response.headers["www-authenticate"] == "Basic"
        wrong = base64.b64encode(b"ann:wrong").decode()
        assert c.get("/versions", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        assert c.get("/versions", headers={"Authorization": "Basic !!!not-base64"}).status_code == 401
        assert c.get("/versions", auth=("ann", "s3cret")).status_code == 200


def test_oversized_body_is_refused_with_413(tmp_path, cold_start_predictor):
    with make_client(tmp_path, cold_start_predictor, max_body_bytes=2048) as c:
        response = c.post("/predict", content=b"{" + b" " * 4096 + b"}", headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert "WORKBENCH_MAX_BODY_BYTES" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit still holds
            for _ in range(4):
                yield b" " * 1024

        assert c.post("/predict", content=chunks(), headers={"content-type": "application/json"}).status_code == 413
