"""Security checks of issue 7 not covered elsewhere: version names from the command line cannot leave the models
folder; the Label Studio token handed to training jobs never shows up in a log, a model folder or a response."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import httpx
import pytest

from backend.app import training_command
from backend.settings import Settings
from tests.test_reliability_support import (
    TINY_CLI,
    FakeLabelStudio,
    assert_one_error_line,
    child_env,
    get_json,
    run_cli_in_process,
    start_workbench,
    stop,
    wait_for,
)
from tests.test_training_pipeline import synthetic_export
from training.registry import REGISTRY_FILE, Registry, project_dir, project_registry
from workbench.services import free_port


def _complete_version(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"version": folder.name}))


@pytest.mark.parametrize(
    "name",
    ["../../etc", "..", ".", "/etc", "../outside", "v1/../../outside", ".staging-v1-1", "..\\..\\etc", "v1/", ""],
)
def test_promote_cannot_escape_the_models_folder(name, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    root = project_dir(models, "1")
    _complete_version(root / "v1")
    _complete_version(tmp_path / "outside")  # looks like a complete version, but lives outside the models folder
    _complete_version(root / ".staging-v1-1")  # hidden: a staging folder is never a version
    Registry(root).promote("v1", force=True)
    before = (root / REGISTRY_FILE).read_bytes()
    for project in ("1", name):  # neither a version name nor a project id leaves the folder
        code, _, err = run_cli_in_process(
            monkeypatch, capsys, "models", "promote", name, "--models", str(models), "--project", project, "--force"
        )
        assert code == 1
        assert_one_error_line(err)
        assert (root / REGISTRY_FILE).read_bytes() == before
        assert Registry(root).current() == "v1"


def test_training_jobs_get_the_token_through_the_environment_only():
    token, setup_token = "tok-" + secrets.token_hex(8), "setup-" + secrets.token_hex(8)
    settings = Settings(label_studio_url="http://127.0.0.1:1", label_studio_api_key=token, train_args="--epochs 1")
    argv, env = training_command(settings, {})("3.1700000000")
    assert env == {"LABEL_STUDIO_API_KEY": token} and token not in " ".join(argv)  # argv is visible in `ps`
    projects = {"4": {"hostname": "http://127.0.0.1:2", "access_token": setup_token}}  # from Label Studio's /setup
    allowed = Settings(allowed_ls_urls="http://127.0.0.1:2")
    argv, env = training_command(allowed, projects)("4")
    assert env == {"LABEL_STUDIO_API_KEY": setup_token} and setup_token not in " ".join(argv)
    assert argv[argv.index("--ls-url") + 1] == "http://127.0.0.1:2"


# ---- issue 12: secure by default ----


def _app_client(tmp_path: Path, cold_start_predictor, base_url: str = "http://testserver", **settings):
    from fastapi.testclient import TestClient

    from backend.app import create_app

    app = create_app(
        Settings(models_dir=tmp_path / "models", **settings),
        predictors=(lambda: cold_start_predictor, None),
        registry=(lambda project: None, lambda project: []),
    )
    return TestClient(app, base_url=base_url)


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"WORKBENCH_BASIC_AUTH_USER": "ann"}, "WORKBENCH_BASIC_AUTH_PASSWORD"),
        ({"WORKBENCH_BASIC_AUTH_PASSWORD": "s3cret"}, "WORKBENCH_BASIC_AUTH_USER"),
        ({"WORKBENCH_BASIC_AUTH_USER": "ann", "WORKBENCH_BASIC_AUTH_PASSWORD": ""}, "WORKBENCH_BASIC_AUTH_PASSWORD"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "up"])
def test_half_a_basic_auth_configuration_refuses_to_start(command, env, missing, tmp_path, monkeypatch, capsys):
    for name in ("WORKBENCH_BASIC_AUTH_USER", "WORKBENCH_BASIC_AUTH_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import uvicorn

    import workbench.up

    def started(*args, **kwargs):  # reached only when the half configuration was not refused
        raise AssertionError("started despite half a basic-auth configuration")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.setattr(workbench.up, "run_up", started)
    port = str(free_port())
    args = ["serve", "--port", port, "--models", str(tmp_path)] if command == "serve" else [
        "up", "--state-dir", str(tmp_path / "state"), "--ls-port", port, "--backend-port", str(free_port())
    ]  # fmt: skip
    code, _, err = run_cli_in_process(monkeypatch, capsys, *args)
    assert code == 1
    assert_one_error_line(err, missing, "set both")
    assert not (tmp_path / "state" / "credentials.json").exists()  # `up` stopped before starting anything


def test_complete_basic_auth_turns_auth_on_and_none_leaves_it_off():
    assert Settings(basic_auth_user="ann", basic_auth_password="s3cret").basic_auth == ("ann", "s3cret")
    assert Settings().basic_auth is None


def test_setup_from_a_stranger_host_is_answered_but_never_used(tmp_path, cold_start_predictor, caplog):
    server_key, stranger_token = "server-" + secrets.token_hex(8), "stranger-" + secrets.token_hex(8)
    configured = "http://ls.example.org:8080"
    with _app_client(
        tmp_path, cold_start_predictor, label_studio_url=configured, label_studio_api_key=server_key
    ) as client:
        service = client.app.state.service
        stranger = {"project": "7.1700000000", "hostname": "http://evil.example", "access_token": stranger_token}
        with caplog.at_level("WARNING", logger="backend"):
            for _ in range(3):
                response = client.post("/setup", json=stranger)
                assert response.status_code == 200 and response.json()["model_version"]
        warnings = [r for r in caplog.records if "evil.example" in r.getMessage()]
        assert len(warnings) == 1  # said once, not per request
        assert service.projects == {}
        argv, env = training_command(service.settings, service.projects)("7")
        assert argv[argv.index("--ls-url") + 1] == configured  # the job talks to the configured server only ...
        assert env == {"LABEL_STUDIO_API_KEY": server_key}  # ... with the server's key, never the stranger's token

        # The configured server itself may send its own token with /setup (same origin, default port spelled out).
        own = {"project": "8.1700000000", "hostname": "http://LS.example.org:8080/", "access_token": "own"}
        assert client.post("/setup", json=own).status_code == 200
        assert "8" in service.projects


def test_without_a_configured_label_studio_no_setup_hostname_is_used(tmp_path, cold_start_predictor):
    stranger = {"project": "3.1", "hostname": "http://10.1.2.3:8080", "access_token": "t-" + secrets.token_hex(4)}
    with _app_client(tmp_path, cold_start_predictor) as client:
        assert client.post("/setup", json=stranger).status_code == 200
        argv, env = training_command(client.app.state.service.settings, client.app.state.service.projects)("3")
    assert "--ls-url" not in argv and env == {}


def test_an_allow_listed_label_studio_gets_its_own_token_not_the_server_key(tmp_path, cold_start_predictor):
    server_key, team_token = "server-" + secrets.token_hex(8), "team-" + secrets.token_hex(8)
    team = "https://team-ls.example.org"
    with _app_client(
        tmp_path,
        cold_start_predictor,
        label_studio_url="http://127.0.0.1:8080",
        label_studio_api_key=server_key,
        allowed_ls_urls=f"{team}, http://other.example.org",
    ) as client:
        setup = {"project": "5.1", "hostname": team, "access_token": team_token}
        assert client.post("/setup", json=setup).status_code == 200
        argv, env = training_command(client.app.state.service.settings, client.app.state.service.projects)("5")
    assert argv[argv.index("--ls-url") + 1] == team
    assert env == {"LABEL_STUDIO_API_KEY": team_token}


def test_health_says_only_status_and_version_without_credentials(tmp_path, cold_start_predictor):
    with _app_client(tmp_path, cold_start_predictor, basic_auth_user="ann", basic_auth_password="s3cret") as client:
        public = client.get("/health")
        private = client.get("/health", auth=("ann", "s3cret"))
        wrong = client.get("/health", auth=("ann", "nope"))
    assert public.status_code == 200 and set(public.json()) == {"status", "model_version"}
    assert wrong.status_code == 200 and set(wrong.json()) == {"status", "model_version"}
    assert {"training", "schema_hash", "model_kind"} <= set(private.json())
    assert public.json()["model_version"] == private.json()["model_version"]


def test_health_without_auth_configured_is_complete(tmp_path, cold_start_predictor):
    with _app_client(tmp_path, cold_start_predictor) as client:
        assert "training" in client.get("/health").json()


@pytest.mark.parametrize("listen", ["127.0.0.1", "localhost", "::1"])
def test_on_loopback_a_foreign_host_header_is_refused(listen, tmp_path, cold_start_predictor):
    with _app_client(tmp_path, cold_start_predictor, base_url="http://127.0.0.1:9090", host=listen) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"host": "localhost:9090"}).status_code == 200
        assert client.get("/health", headers={"host": "[::1]:9090"}).status_code == 200
        rebound = client.get("/health", headers={"host": "attacker.example:9090"})
        assert rebound.status_code == 400
        assert client.post("/webhook", json={"action": "START_TRAINING"}, headers={"host": "evil"}).status_code == 400


def test_extra_host_names_are_allowed_on_loopback(tmp_path, cold_start_predictor):
    # off loopback the Host header is checked too: tests/test_safe_when_shared.py
    with _app_client(tmp_path, cold_start_predictor, host="127.0.0.1", allowed_hosts="backend.local") as client:
        assert client.get("/health", headers={"host": "backend.local"}).status_code == 200
        assert client.get("/health", headers={"host": "other.local"}).status_code == 400


def test_serve_tells_its_workers_the_interface_it_listens_on(tmp_path, monkeypatch, capsys):
    import uvicorn

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.update(k, host_env=os.environ.get("WORKBENCH_HOST")))
    # `serve` writes these for its workers: setenv first, so that monkeypatch restores them after the test
    # (delenv of an unset variable records nothing to restore, and the value would leak into later tests).
    monkeypatch.setenv("WORKBENCH_HOST", "127.0.0.1")  # the default interface, read by `serve --host`
    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path))
    port = str(free_port())
    args = ["serve", "--host", "127.0.0.3", "--port", port, "--models", str(tmp_path)]
    code, _, _ = run_cli_in_process(monkeypatch, capsys, *args)
    assert code == 0 and seen["host"] == "127.0.0.3" and seen["host_env"] == "127.0.0.3"


@pytest.mark.parametrize(
    ("host", "backend_url", "local"),
    [
        ("127.0.0.1", None, True),
        ("localhost", "http://127.0.0.1:9090", True),
        ("0.0.0.0", None, False),
        ("127.0.0.1", "http://192.168.1.20:9090", False),
        ("10.0.0.5", None, False),
    ],
)
def test_up_turns_ssrf_protection_off_only_when_both_servers_are_on_loopback(host, backend_url, local, tmp_path):
    from workbench.services import label_studio_env
    from workbench.up import UpOptions, both_on_loopback

    assert both_on_loopback(UpOptions(state_dir=tmp_path, host=host, backend_url=backend_url)) is local
    env = label_studio_env(tmp_path, "u", "p", "t", allow_local_backends=local)
    off = env.get("SSRF_PROTECTION_ENABLED") == "false" and env.get("ML_BLOCK_LOCAL_IP") == "false"
    assert off is local or os.environ.get("SSRF_PROTECTION_ENABLED") == "false"


def _files_containing(root: Path, secret: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and secret in path.read_bytes()]


@pytest.mark.slow
def test_label_studio_token_never_reaches_logs_models_or_responses(tmp_path):
    token = "tok-" + secrets.token_hex(16)
    models, records = tmp_path / "models", tmp_path / "records"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with FakeLabelStudio(export=synthetic_export()) as fake:
        env = child_env(
            LABEL_STUDIO_URL=fake.url,
            LABEL_STUDIO_API_KEY=token,
            WORKBENCH_TRAIN_ARGS=" ".join([*TINY_CLI, "--force"]),
            WORKBENCH_RELOAD_INTERVAL="0.3",
            WORKBENCH_THREADS="1",
            WORKBENCH_RECORD_DIR=str(records),
        )
        server = start_workbench(
            "serve", "--port", str(port), "--models", str(models), log=tmp_path / "serve.log", env=env
        )
        try:
            wait_for(lambda: get_json(f"{url}/health"), 180, "the backend to start")
            setup = {"project": "1.1700000000", "hostname": fake.url, "access_token": token, "schema": ""}
            assert httpx.post(f"{url}/setup", json=setup, timeout=30).status_code == 200

            # 1. Label Studio rejects the token: the job fails, and its error line must not quote the token.
            fake.modes["whoami"] = "401"
            start = {"action": "START_TRAINING", "project": {"id": 1}}
            assert httpx.post(f"{url}/webhook", json=start, timeout=30).json()["status"] == "queued"
            failed = wait_for(
                lambda: (h := get_json(f"{url}/health")) and h["training"]["state"] == "failed" and h, 120, "job 1"
            )
            assert "rejected the API key" in failed["training"]["error"]

            # 2. Label Studio accepts it: the job trains, promotes, and the backend serves the new version.
            fake.modes["whoami"] = "ok"
            assert httpx.post(f"{url}/webhook", json=start, timeout=30).json()["status"] == "queued"
            done = wait_for(
                lambda: (h := get_json(f"{url}/health")) and h["training"]["state"] != "running" and h, 240, "job 2"
            )
            assert done["training"]["state"] == "succeeded", [p.read_text() for p in (models / "logs").glob("*.log")]
            version = project_registry(models, "1").current()
            wait_for(lambda: (get_json(f"{url}/health") or {}).get("model_version") == version, 60, "the reload")

            responses = [httpx.get(f"{url}{route}", timeout=30).text for route in ("/health", "/metrics", "/versions")]
        finally:
            stop(server)

    seen = [auth for _, _, auth in fake.requests]
    assert seen and all(token in auth for auth in seen), (
        "the jobs did not use the token: the checks below prove nothing"
    )
    assert len(list((models / "logs").glob("train-*.log"))) == 2
    assert list(records.glob("*-setup.json")), "the /setup body was not recorded"
    secret = token.encode()
    assert _files_containing(models, secret) == []  # job logs, manifest, model card, registry, metrics
    assert _files_containing(records, secret) == []  # WORKBENCH_RECORD_DIR redacts the /setup access_token
    assert secret not in (tmp_path / "serve.log").read_bytes()  # the backend's own log
    assert all(token not in body for body in responses)


def test_a_hand_edited_pointer_cannot_point_outside_the_registry(tmp_path):
    """The backend reads the pointer through Registry.path, which refuses names that leave the folder."""
    from backend.holder import ModelHolder
    from training.registry import RegistryError, current_model

    models = tmp_path / "models"
    project_dir(models, "1").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    (project_dir(models, "1") / "registry.json").write_text('{"current": "../outside", "history": []}')
    with pytest.raises(RegistryError, match="not a model version"):
        current_model(models, "1")

    class Serving:  # stands for the cold-start predictor: only its identity matters here
        kind, model_version = "cold-start", "cold-start-x"

    loaded: list = []
    holder = ModelHolder(lambda: Serving(), lambda: current_model(models, "1"), lambda v, f: loaded.append(f))
    assert holder.current.model_version == "cold-start-x" and loaded == []
    assert "cannot read the registry" in holder.last_error


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"WORKBENCH_RUNTIME": "tensorrt"}, ["WORKBENCH_RUNTIME", "'torch' or 'onnx'", "tensorrt"]),
        ({"WORKBENCH_PRECISION": "bf16"}, ["WORKBENCH_PRECISION=bf16 needs WORKBENCH_RUNTIME=torch"]),
        ({"WORKBENCH_MAX_TASKS": "0"}, ["WORKBENCH_MAX_TASKS", "greater than or equal to 1"]),
    ],
)
def test_bad_environment_settings_give_one_line_naming_the_variable(env, needles, tmp_path, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    port = str(free_port())
    code, _, err = run_cli_in_process(monkeypatch, capsys, "serve", "--port", port, "--models", str(tmp_path))
    assert code == 1
    assert_one_error_line(err, *needles)
