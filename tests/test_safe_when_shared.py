"""Issue 28, sections 2-5 (backend side): no open door off loopback, webhooks that cannot steer the learner, bounded
resources, and the low ones (ids that are objects, deep JSON, the request record, `up`'s password)."""

from __future__ import annotations

import copy
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from annotation_config.errors import WorkbenchError
from annotation_config.regions import Prediction
from backend.app import create_app
from backend.settings import Settings
from tests.test_reliability_support import assert_one_error_line, run_cli_in_process, wait_for
from workbench.services import free_port

RECORDED = json.loads(
    (Path(__file__).parent / "fixtures" / "label_studio_requests" / "webhook-ANNOTATION_CREATED.json").read_text(
        "utf-8"
    )
)
NO_REGISTRY = (lambda: None, lambda: [])
AUTH = {"basic_auth_user": "ops", "basic_auth_password": "s3cret-pw"}
WEBHOOK_SECRET_HEADER = "X-Workbench-Webhook-Secret"  # what Label Studio's webhook is registered with


def _client(tmp_path: Path, predictor: Any, base_url: str = "http://testserver", **settings: Any) -> TestClient:
    app = create_app(
        Settings(models_dir=tmp_path / "models", **settings), predictors=(lambda: predictor, None), registry=NO_REGISTRY
    )
    return TestClient(app, base_url=base_url)


def _annotation_created(annotation_id: int = 1, task_id: int = 1, text: str | None = None) -> dict:
    payload = copy.deepcopy(RECORDED)
    payload["annotation"].update(id=annotation_id, task=task_id)
    payload["task"]["id"] = task_id
    if text is not None:
        payload["task"]["data"]["text"] = text
    return payload


def _learned(client: TestClient, project: str = "1") -> bool:
    ladder = client.app.state.service.ladder
    ladder.wait(project, timeout=60)
    return ladder.serving(project).name == "instant"


# ---- 2. no open door off loopback ----


def _no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import workbench.up

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("started although the settings were refused")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.setattr(workbench.up, "run_up", started)
    for name in ("WORKBENCH_BASIC_AUTH_USER", "WORKBENCH_BASIC_AUTH_PASSWORD", "WORKBENCH_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORKBENCH_HOST", "127.0.0.1")  # restored after the test: `serve` writes it for its workers


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20"])
@pytest.mark.parametrize("command", ["serve", "up"])
def test_off_loopback_without_basic_auth_refuses_to_start(command, host, tmp_path, monkeypatch, capsys):
    _no_server(monkeypatch)
    port = str(free_port())
    args = ["serve", "--host", host, "--port", port, "--models", str(tmp_path)] if command == "serve" else [
        "up", "--host", host, "--state-dir", str(tmp_path / "state"), "--ls-port", port, "--backend-port", port
    ]  # fmt: skip
    code, _, err = run_cli_in_process(monkeypatch, capsys, *args)
    assert code == 1
    assert_one_error_line(err, host, "WORKBENCH_BASIC_AUTH_USER", "WORKBENCH_BASIC_AUTH_PASSWORD", "--insecure-no-auth")
    assert not (tmp_path / "state").exists()  # `up` stopped before it wrote anything


def test_every_entry_point_shares_the_rule(tmp_path, cold_start_predictor):
    with pytest.raises(WorkbenchError, match="WORKBENCH_BASIC_AUTH_USER"):
        _client(tmp_path, cold_start_predictor, host="10.0.0.5")  # uvicorn's factory, without `serve`
    with _client(tmp_path, cold_start_predictor, host="10.0.0.5", **AUTH) as client:  # auth on: it starts
        assert client.get("/health", headers={"host": "10.0.0.5:9090"}).status_code == 200


def test_insecure_no_auth_starts_off_loopback_with_a_warning(
    tmp_path, monkeypatch, capsys, cold_start_predictor, caplog
):
    import os

    import uvicorn

    _no_server(monkeypatch)
    seen: dict = {}
    monkeypatch.setattr(
        uvicorn, "run", lambda *a, **k: seen.update(k, env=os.environ.get("WORKBENCH_INSECURE_NO_AUTH"))
    )
    monkeypatch.setenv("WORKBENCH_INSECURE_NO_AUTH", "false")  # restored after the test (serve sets it for workers)
    monkeypatch.setenv("WORKBENCH_ALLOWED_HOSTS", "backend.example.org")
    args = ["serve", "--host", "0.0.0.0", "--port", str(free_port()), "--models", str(tmp_path), "--insecure-no-auth"]
    code, _, err = run_cli_in_process(monkeypatch, capsys, *args)
    assert code == 0, err
    assert seen["host"] == "0.0.0.0" and seen["env"] == "true"  # the workers rebuild the same settings
    with caplog.at_level(logging.WARNING, logger="backend"):
        _client(
            tmp_path, cold_start_predictor, host="0.0.0.0", allowed_hosts="backend.example.org", insecure_no_auth=True
        )
    assert any("without basic auth" in record.getMessage() for record in caplog.records)


def test_off_loopback_the_host_header_is_checked_too(tmp_path, cold_start_predictor):
    with _client(tmp_path, cold_start_predictor, host="192.168.1.20", **AUTH) as client:
        assert client.get("/health", headers={"host": "192.168.1.20:9090"}).status_code == 200
        assert client.get("/health", headers={"host": "localhost:9090"}).status_code == 200
        assert client.get("/health", headers={"host": "attacker.example:9090"}).status_code == 400
    settings = dict(host="0.0.0.0", allowed_hosts="backend.example.org", **AUTH)
    with _client(tmp_path, cold_start_predictor, **settings) as client:
        assert client.get("/health", headers={"host": "backend.example.org"}).status_code == 200
        assert client.get("/health", headers={"host": "attacker.example"}).status_code == 400
    with _client(tmp_path, cold_start_predictor, host="0.0.0.0", allowed_hosts="*", **AUTH) as client:
        assert client.get("/health", headers={"host": "anything.example"}).status_code == 200  # the operator's choice


def test_all_interfaces_without_allowed_hosts_refuse_to_start(tmp_path, monkeypatch, capsys):
    _no_server(monkeypatch)
    monkeypatch.setenv("WORKBENCH_BASIC_AUTH_USER", "ops")
    monkeypatch.setenv("WORKBENCH_BASIC_AUTH_PASSWORD", "s3cret-pw")
    args = ["serve", "--host", "0.0.0.0", "--port", str(free_port()), "--models", str(tmp_path)]
    code, _, err = run_cli_in_process(monkeypatch, capsys, *args)
    assert code == 1
    assert_one_error_line(err, "WORKBENCH_ALLOWED_HOSTS", "'*'")


@pytest.mark.parametrize("path", ["/versions", "/metrics", "/docs", "/redoc", "/openapi.json"])
def test_with_auth_on_the_operator_routes_need_it(path, tmp_path, cold_start_predictor):
    with _client(tmp_path, cold_start_predictor, **AUTH) as client:
        assert client.get(path).status_code == 401
        assert client.get(path, auth=("ops", "wrong")).status_code == 401
        assert client.get(path, auth=("ops", "s3cret-pw")).status_code == 200
        health = client.get("/health")  # Label Studio's liveness check stays open, and says little
        assert health.status_code == 200 and set(health.json()) == {"status", "model_version"}


def _recorded_submits(client: TestClient) -> list[bool]:
    calls: list[bool] = []
    jobs = client.app.state.service.jobs
    jobs.submit = lambda reason, project, force=False: calls.append(force) or "queued"
    return calls


def test_training_on_demand_needs_the_operator_and_force_counts_only_from_one(tmp_path, cold_start_predictor):
    start = {"action": "START_TRAINING", "project": {"id": 1}, "force": True}
    secret = "hook-" + secrets.token_hex(8)
    with _client(tmp_path, cold_start_predictor, webhook_secret=secret, **AUTH) as client:
        forced = _recorded_submits(client)
        assert client.post("/webhook", json=start).status_code == 401
        # the webhook secret lets Label Studio's events in, but training on demand is the operator's
        response = client.post("/webhook", json=start, headers={WEBHOOK_SECRET_HEADER: secret})
        assert response.status_code == 401 and "basic-auth" in response.text
        assert forced == []
        assert client.post("/webhook", json=start, auth=("ops", "s3cret-pw")).status_code == 200
        assert forced == [True]
    with _client(tmp_path, cold_start_predictor) as client:  # no auth configured: nobody is authenticated
        forced = _recorded_submits(client)
        assert client.post("/webhook", json=start).status_code == 200
        assert forced == [False]  # queued, but as an ordinary request: skipped when no new labels came


# ---- 3. webhooks that cannot steer the learner ----


def test_with_a_webhook_secret_a_webhook_without_it_gets_401_and_changes_nothing(tmp_path, cold_start_predictor):
    secret = "hook-" + secrets.token_hex(8)
    with _client(tmp_path, cold_start_predictor, webhook_secret=secret) as client:
        for headers in ({}, {WEBHOOK_SECRET_HEADER: "guess"}, {WEBHOOK_SECRET_HEADER: secret[:-1]}):
            response = client.post("/webhook", json=_annotation_created(), headers=headers)
            assert response.status_code == 401 and WEBHOOK_SECRET_HEADER in response.text
        assert client.app.state.service.ladder.snapshot() == {}  # no learner was even created
        ok = client.post("/webhook", json=_annotation_created(), headers={WEBHOOK_SECRET_HEADER: secret})
        assert ok.status_code == 200 and _learned(client)


def test_with_basic_auth_too_label_studio_webhooks_pass_with_the_secret(tmp_path, cold_start_predictor):
    secret = "hook-" + secrets.token_hex(8)
    with _client(tmp_path, cold_start_predictor, webhook_secret=secret, **AUTH) as client:
        assert client.post("/webhook", json=_annotation_created()).status_code == 401
        assert client.post("/predict", json={"tasks": [{"data": RECORDED["task"]["data"]}]}, headers={
            WEBHOOK_SECRET_HEADER: secret
        }).status_code == 401  # the secret opens /webhook only  # fmt: skip
        ok = client.post("/webhook", json=_annotation_created(), headers={WEBHOOK_SECRET_HEADER: secret})
        assert ok.status_code == 200 and _learned(client)


def test_on_loopback_without_secret_or_label_studio_payloads_are_learned_as_sent(tmp_path, cold_start_predictor):
    with _client(tmp_path, cold_start_predictor, host="127.0.0.1", base_url="http://127.0.0.1:9090") as client:
        assert client.post("/webhook", json=_annotation_created()).status_code == 200
        assert _learned(client)


def test_up_generates_and_keeps_a_webhook_secret(tmp_path, monkeypatch):
    from workbench.up import load_credentials, load_webhook_secret

    monkeypatch.delenv("WORKBENCH_WEBHOOK_SECRET", raising=False)
    first = load_webhook_secret(tmp_path)
    assert len(first) >= 32 and load_webhook_secret(tmp_path) == first
    load_credentials(tmp_path)  # the login written later keeps the secret
    stored = json.loads((tmp_path / "credentials.json").read_text("utf-8"))
    assert stored["webhook_secret"] == first and (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("WORKBENCH_WEBHOOK_SECRET", "from-the-environment")
    assert load_webhook_secret(tmp_path) == "from-the-environment"


# ---- 4. bounded resources ----


def test_webhook_texts_and_task_counts_get_the_predict_limits(tmp_path, cold_start_predictor):
    with _client(tmp_path, cold_start_predictor, max_text_chars=1000, max_tasks=3) as client:
        too_long = client.post("/webhook", json=_annotation_created(text="x" * 1001))
        assert too_long.status_code == 413 and "WORKBENCH_MAX_TEXT_CHARS" in too_long.text
        bulk = {
            "action": "ANNOTATIONS_CREATED",
            "project": {"id": 1},
            "annotation": [{**RECORDED["annotation"], "id": i, "task": i} for i in range(4)],
            "task": [{**RECORDED["task"], "id": i} for i in range(4)],
        }
        many = client.post("/webhook", json=bulk)
        assert many.status_code == 413 and "WORKBENCH_MAX_TASKS" in many.text
        assert client.app.state.service.ladder.snapshot() == {}  # nothing was learned from either
        predict = client.post("/predict", json={"tasks": [{"data": {**RECORDED["task"]["data"], "text": "x" * 1001}}]})
        assert predict.status_code == 413 and too_long.json()["detail"][0]["msg"] == predict.json()["detail"][0]["msg"]


class ManySpans:
    """A predictor that marks a span every 3 characters, with rising scores: far more regions than anyone reads."""

    kind, model_version = "cold-start", "many-spans-1"

    def predict(self, tasks):
        out = []
        for data in tasks:
            n = len(data["text"]) // 3
            spans = [{"start": 3 * i, "end": 3 * i + 2, "label": "actor", "score": i / n} for i in range(n)]
            out.append(Prediction(labels={"evidence": spans}, score=0.5))
        return out


def test_spans_per_task_are_capped_keeping_the_highest_scores(tmp_path):
    text = "abc" * 400  # 400 spans
    with _client(tmp_path, ManySpans(), max_spans=50) as client:
        response = client.post("/predict", json={"tasks": [{"data": {**RECORDED["task"]["data"], "text": text}}]})
    assert response.status_code == 200
    regions = [r for r in response.json()["results"][0]["result"] if r["type"] == "labels"]
    assert len(regions) == 50
    assert sorted(r["value"]["start"] for r in regions) == [3 * i for i in range(350, 400)]  # the 50 best


# ---- 5. the low ones ----


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("annotation.id", lambda p: p["annotation"].update(id={"$gt": 0})),
        ("task.id", lambda p: p["task"].update(id=[1])),
        ("project.id", lambda p: p["project"].update(id={"id": 1})),
        ("annotation.task", lambda p: p["annotation"].update(task=[1, 2])),
    ],
)
def test_a_webhook_id_that_is_an_object_gets_422_naming_it(where, change, tmp_path, cold_start_predictor):
    payload = _annotation_created()
    change(payload)
    with _client(tmp_path, cold_start_predictor) as client:
        response = client.post("/webhook", json=payload)
        deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": {"a": 1}}]}
        assert client.post("/webhook", json=deleted).status_code == 422
    assert response.status_code == 422 and where in response.text


@pytest.mark.parametrize("depth", [200, 900, 10_000])
@pytest.mark.parametrize("route", ["/webhook", "/predict"])
def test_deeply_nested_json_gets_4xx(route, depth, tmp_path, cold_start_predictor):
    nested = "[" * depth + "]" * depth
    body = (
        '{"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 1, "task": 1, "result": %s}}'
        if route == "/webhook"
        else '{"tasks": [{"data": {"text": "a", "meta": %s}}]}'
    ) % nested
    with _client(tmp_path, cold_start_predictor, record_dir=tmp_path / "records") as client:
        response = client.post(route, content=body, headers={"content-type": "application/json"})
        assert client.get("/health").status_code == 200
    assert 400 <= response.status_code < 500, response.text


def test_json_depth_counts_brackets_outside_strings_only():
    from backend.middleware import MAX_JSON_DEPTH, json_depth

    assert json_depth(b'{"a": "[[[[[[[[\\"[[[[", "b": [[1]]}') == 3
    assert json_depth(b'"just a string"') == 0 and json_depth(b"") == 0
    assert json_depth(("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).encode()) == MAX_JSON_DEPTH + 1


def test_the_request_record_redacts_credentials_and_is_private(tmp_path, cold_start_predictor):
    records = tmp_path / "records"
    leaks = {f"leak-{name}-{secrets.token_hex(4)}" for name in ("auth", "cookie", "apikey", "token", "setcookie")}
    auth, cookie, apikey, token, set_cookie = sorted(leaks)
    body = {
        "project": "1.1700000000",
        "access_token": token,
        "apikey": apikey,
        "extra_params": {"headers": {"Authorization": f"Token {auth}", "Cookie": cookie, "Set-Cookie": set_cookie}},
    }
    with _client(tmp_path, cold_start_predictor, record_dir=records) as client:
        assert client.post("/setup", json=body).status_code == 200
    files = list(records.glob("*.json"))
    assert len(files) == 1
    text = files[0].read_text("utf-8")
    assert not [leak for leak in leaks if leak in text], text
    assert "1.1700000000" in text  # the rest is kept for debugging
    assert files[0].stat().st_mode & 0o777 == 0o600


def test_up_prints_the_admin_password_only_when_it_creates_it(tmp_path, monkeypatch, capsys):
    import workbench.up as up

    class Studio:  # stands for Label Studio: only the login matters here
        process = None

        def __init__(self, **kwargs: Any) -> None:
            self.url = f"http://127.0.0.1:{kwargs['port']}"

        def start(self) -> None: ...

        def stop(self) -> None: ...

    class Backend:
        def poll(self) -> int | None:
            return None

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    for name in ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_USER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(up, "LabelStudioServer", Studio)
    monkeypatch.setattr(up, "port_is_free", lambda *a: True)
    monkeypatch.setattr(up, "start_backend", lambda *a: Backend())
    monkeypatch.setattr(up, "wait_for", lambda *a, **k: None)
    monkeypatch.setattr(up, "_provision_and_preannotate", lambda *a, **k: "http://127.0.0.1:1/projects/1/data")
    monkeypatch.setattr(up, "_watch", interrupted)
    monkeypatch.setattr(up, "stop_process_group", lambda *a: None)
    monkeypatch.setattr(up.signal, "signal", lambda *a: None)  # pytest keeps its own Ctrl-C handler
    options = up.UpOptions(state_dir=tmp_path / "state", ls_port=free_port(), backend_port=free_port())
    outputs = []
    for _ in range(2):
        up.run_up(options)
        outputs.append(capsys.readouterr().out)
    password = json.loads((tmp_path / "state" / "credentials.json").read_text("utf-8"))["password"]
    assert password in outputs[0]
    assert password not in outputs[1] and "(password in" in outputs[1]


@pytest.mark.e2e
def test_label_studio_sends_the_webhook_secret_that_connect_backend_registers(
    label_studio, ls_client, schema, sample_tasks, tmp_path, cold_start_predictor
):
    from studio.provision import connect_backend, provision
    from workbench.services import ServerThread

    secret = "hook-" + secrets.token_hex(16)
    app = create_app(
        Settings(models_dir=tmp_path / "models", webhook_secret=secret),
        predictors=(lambda: cold_start_predictor, None),
        registry=NO_REGISTRY,
    )
    ladder = app.state.service.ladder
    genuine = [
        {
            "from_name": "threat_characterization",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": ["genuine"]},
        }
    ]
    with ServerThread(app) as backend:
        result = provision(ls_client, schema, sample_tasks[:3], "Webhook secret e2e", label_studio.url)
        project = str(result.project_id)
        for _ in range(2):  # idempotent: one webhook, with the header
            connect_backend(ls_client, result.project_id, backend.url, webhook_secret=secret)
        hooks = [h for h in ls_client.webhooks.list(project=project) if h.url.rstrip("/") == f"{backend.url}/webhook"]
        assert len(hooks) == 1 and hooks[0].headers == {WEBHOOK_SECRET_HEADER: secret}
        first, second = list(ls_client.tasks.list(project=result.project_id))[:2]
        ls_client.annotations.create(id=first.id, result=genuine)  # Label Studio sends ANNOTATION_CREATED
        wait_for_learned = ladder.wait(project, timeout=60) and ladder.serving(project).name == "instant"
        assert wait_for_learned, ladder.snapshot()
        assert ladder.snapshot()[project]["accepted_tasks"] == 1

        # the same webhook without the secret (say, one somebody registered by hand) is refused: nothing learned
        ls_client.webhooks.update(id=hooks[0].id, headers={WEBHOOK_SECRET_HEADER: "wrong"})
        ls_client.annotations.create(id=second.id, result=genuine)
        refused = 'workbench_requests_total{route="/webhook",status="401"} 1.0'
        wait_for(lambda: refused in app.state.service.metrics.render().decode(), 30, "the refused webhook")
        ladder.wait(project, timeout=60)
        assert ladder.snapshot()[project]["accepted_tasks"] == 1
