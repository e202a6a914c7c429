"""The job runner with both launchers, on real `workbench` commands: warm (forked from a forkserver that preloaded
torch, transformers and the training code) and cold (a fresh `python -m workbench` process).

Each test runs one real child per launcher; the warm launcher's forkserver is started once per test session.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from backend.jobs import ColdLauncher, JobRunner, WarmLauncher
from tests.test_reliability_support import FakeLabelStudio, wait_for

LAUNCHERS = {"warm": WarmLauncher, "cold": ColdLauncher}


def finished(runner: JobRunner, timeout: float = 120) -> dict:
    return wait_for(lambda: (s := runner.snapshot())["state"] != "running" and s, timeout, "the job's end")


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_a_job_runs_the_command_and_the_new_model_serves_before_success_is_published(kind, tmp_path):
    seen_by_callback = []
    runner = JobRunner(
        lambda project: (["config", "validate"], {}),
        tmp_path / "logs",
        on_finish=lambda ok: seen_by_callback.append((ok, runner.snapshot()["state"])),
        launcher=LAUNCHERS[kind](),
    )
    runner.warm_up()
    assert runner.snapshot()["worker"] == {"warm": "warming", "cold": "cold"}[kind]
    assert runner.submit("START_TRAINING", "1") == "queued"  # a job asked for while the worker warms up waits for it
    assert runner.submit("START_TRAINING", "1") == "busy"  # one job at a time; the request is kept as a follow-up
    status = finished(runner)
    assert status["state"] == "succeeded", status
    assert status["launcher"] == kind
    # on_finish (the backend's model swap) ran while /health still said "running": "succeeded" means serving
    assert seen_by_callback[0] == (True, "running")
    assert "ok: sample schema" in Path(status["log_file"]).read_text()
    # the follow-up run asked for during the first one starts by itself and ends too
    status = wait_for(lambda: (s := runner.snapshot())["jobs_started"] == 2 and s["state"] != "running" and s, 120, "2")
    assert status["state"] == "succeeded" and status["reason"] == "labels changed during the last run"
    wait_for(lambda: runner.snapshot()["worker"] == kind, 120, "the worker's warm-up")  # the probe proved the imports


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_a_failing_job_is_reported_with_its_last_line(kind, tmp_path):
    missing = tmp_path / "missing-export.json"
    results = []
    runner = JobRunner(
        lambda project: (["train", "--from-export", str(missing), "--models", str(tmp_path / "models")], {}),
        tmp_path / "logs",
        on_finish=results.append,
        launcher=LAUNCHERS[kind](),
    )
    runner.submit("START_TRAINING", None)
    status = finished(runner)
    assert status["state"] == "failed" and results == [False]
    assert status["error"].startswith("training exited with code 1: error:"), status["error"]
    assert str(missing) in status["error"]
    assert not (tmp_path / "models").exists()
    assert status["history"][-1]["state"] == "failed"


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_the_token_reaches_the_job_through_its_environment_and_stop_ends_it(kind, tmp_path):
    token = "tok-" + secrets.token_hex(8)
    with FakeLabelStudio(slow_seconds=60) as fake:
        fake.modes["export"] = "slow"  # the job hangs in the export request until stopped
        args = ["train", "--ls-url", fake.url, "--project", "7", "--models", str(tmp_path / "models")]
        runner = JobRunner(
            lambda project: (args, {"LABEL_STUDIO_API_KEY": token}), tmp_path / "logs", launcher=LAUNCHERS[kind]()
        )
        assert token not in os.environ.get("LABEL_STUDIO_API_KEY", "")
        runner.submit("START_TRAINING", "7")
        wait_for(lambda: fake.hits("export"), 120, "the job's export request")
        with fake.lock:
            authorizations = {auth for _, route, auth in fake.requests if route == "whoami"}
        assert authorizations == {f"Token {token}"}
        started = time.monotonic()
        runner.stop()
        status = finished(runner, timeout=15)
    assert time.monotonic() - started < 12
    assert status["state"] == "failed" and "code -15" in status["error"], status  # SIGTERM
    assert token not in Path(status["log_file"]).read_text()


def test_annotations_arriving_during_a_job_stay_new_and_a_failed_job_gives_its_own_back(tmp_path):
    from annotation_config.schema import DEFAULT_SCHEMA_PATH

    schema = {"path": DEFAULT_SCHEMA_PATH}
    runner = JobRunner(
        lambda project: (["config", "validate", "--schema", str(schema["path"])], {}),
        tmp_path / "logs",
        train_every=2,
        launcher=WarmLauncher(),
    )
    assert runner.annotation_changed("1") == "recorded"
    assert runner.annotation_changed("1") == "queued"  # the second one reaches train_every: a job starts
    assert runner.snapshot()["new_annotations"] == 0  # the job learns from those two
    assert runner.annotation_changed("1") == "recorded"  # arrives while it runs (or just after): still new
    status = finished(runner)
    assert status["state"] == "succeeded" and status["new_annotations"] == 1
    schema["path"] = tmp_path / "missing.yaml"  # the next job fails
    assert runner.annotation_changed("1") == "queued"
    status = finished(runner)
    assert status["state"] == "failed" and status["new_annotations"] == 2  # nothing was learnt: they stay new
