"""Security checks of issue 7 not covered elsewhere: version names from the command line cannot leave the models
folder; the Label Studio token handed to training jobs never shows up in a log, a model folder or a response."""

from __future__ import annotations

import json
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
from training.registry import REGISTRY_FILE, Registry
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
    _complete_version(models / "v1")
    _complete_version(tmp_path / "outside")  # looks like a complete version, but lives outside the models folder
    _complete_version(models / ".staging-v1-1")  # hidden: a staging folder is never a version
    Registry(models).promote("v1")
    before = (models / REGISTRY_FILE).read_bytes()
    code, _, err = run_cli_in_process(
        monkeypatch, capsys, "models", "promote", name, "--models", str(models), "--force"
    )
    assert code == 1
    assert_one_error_line(err)
    assert (models / REGISTRY_FILE).read_bytes() == before
    assert Registry(models).current() == "v1"


def test_training_jobs_get_the_token_through_the_environment_only():
    token, setup_token = "tok-" + secrets.token_hex(8), "setup-" + secrets.token_hex(8)
    settings = Settings(label_studio_url="http://127.0.0.1:1", label_studio_api_key=token, train_args="--epochs 1")
    argv, env = training_command(settings, {})("3.1700000000")
    assert env == {"LABEL_STUDIO_API_KEY": token} and token not in " ".join(argv)  # argv is visible in `ps`
    projects = {"4": {"hostname": "http://127.0.0.1:2", "access_token": setup_token}}  # from Label Studio's /setup
    argv, env = training_command(Settings(), projects)("4")
    assert env == {"LABEL_STUDIO_API_KEY": setup_token} and setup_token not in " ".join(argv)
    assert argv[argv.index("--ls-url") + 1] == "http://127.0.0.1:2"


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
            version = Registry(models).current()
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
    models.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    (models / "registry.json").write_text('{"current": "../outside", "history": []}')
    with pytest.raises(RegistryError, match="not a model version"):
        current_model(models)

    class Serving:  # stands for the cold-start predictor: only its identity matters here
        kind, model_version = "cold-start", "cold-start-x"

    loaded: list = []
    holder = ModelHolder(lambda: Serving(), lambda: current_model(models), lambda v, f: loaded.append(f))
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
