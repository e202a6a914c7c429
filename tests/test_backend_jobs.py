"""The job runner with both launchers, on real training commands: warm (forked from a forkserver that preloaded
torch, transformers and the training code) and cold (a fresh `python -m backend.train_job` process).

Each test runs one real child per launcher; the warm launcher's forkserver is started once per test session.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.jobs import STATUS_FILE, ColdLauncher, JobRunner, WarmLauncher
from tests.test_reliability_support import FakeLabelStudio, wait_for
from tests.test_training_registry import add_version, trained_on_this_export
from training.registry import JOB_TOKEN_ENV, SKIPPED_EXIT_CODE, SKIPPED_EXIT_ENV, Registry

LAUNCHERS = {"warm": WarmLauncher, "cold": ColdLauncher}


def finished(runner: JobRunner, timeout: float = 120) -> dict:
    return wait_for(lambda: (s := runner.snapshot())["state"] != "running" and s, timeout, "the job's end")


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_a_job_runs_the_command_and_the_new_model_serves_before_success_is_published(kind, tmp_path):
    seen_by_callback = []
    runner = JobRunner(
        lambda project: (["models", "list", "--models", str(tmp_path / "models")], {}),
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
    assert "no models in" in Path(status["log_file"]).read_text()
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
    command = {"action": "list"}  # then "rollback": no earlier version to go back to, so the job fails
    runner = JobRunner(
        lambda project: (["models", command["action"], "--models", str(tmp_path / "models")], {}),
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
    command["action"] = "rollback"  # the next job fails
    assert runner.annotation_changed("1") == "queued"
    status = finished(runner)
    assert status["state"] == "failed" and status["new_annotations"] == 2  # nothing was learnt: they stay new


# A stand-in for the training job, started in a blink: its first argument that is not "train" or an option says what to
# do: "exit CODE MESSAGE", "wait FILE" (until FILE exists), or "hang MODELS VERSION": ignore SIGTERM, report whether
# the job's token was still there when SIGTERM came, then try to promote VERSION with that token.
FAKE_JOB = """
import os, signal, sys, time
from pathlib import Path
from training.registry import Registry
argv = [a for a in sys.argv[1:] if a != "train" and not a.startswith("--")]
mode, token = argv[0], os.environ.get("WORKBENCH_JOB_TOKEN")
if mode == "exit":
    print(argv[2], flush=True)
    sys.exit(int(argv[1]))
if mode == "wait":
    while not Path(argv[1]).exists():
        time.sleep(0.05)
if mode == "hang":
    terminated = []
    signal.signal(signal.SIGTERM, lambda *_: terminated.append(Path(token).exists()))
    print("hanging", flush=True)
    while not terminated:
        time.sleep(0.05)
    print("token at SIGTERM:", "present" if terminated[0] else "gone", flush=True)
    result = Registry(argv[1]).promote(argv[2], job_token=token)
    print("promoted" if result.promoted else "not promoted: " + result.reason, flush=True)
    while True:
        time.sleep(1)
"""


class FakeLauncher(ColdLauncher):
    """Runs FAKE_JOB instead of the training job, in its own process group like a real cold job; records each start."""

    def __init__(self) -> None:
        self.started: list[tuple[list[str], dict[str, str], subprocess.Popen]] = []

    def start(self, args, env, log_path):
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-c", FAKE_JOB, *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
            )
        self.started.append((list(args), dict(env), process))
        return process


def test_a_hung_job_gets_sigterm_then_sigkill_and_never_promotes_after_the_timeout(tmp_path):
    models = tmp_path / "models"
    registry = Registry(models)
    version = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    launcher = FakeLauncher()
    runner = JobRunner(
        lambda project: (["train", "hang", str(models), version], {}),
        models / "logs",
        models_dir=models,
        timeout=1,
        kill_grace=3,
        launcher=launcher,
    )
    started = time.monotonic()
    assert runner.submit("START_TRAINING", "1") == "queued"
    status = finished(runner, timeout=30)
    elapsed = time.monotonic() - started
    assert status["state"] == "failed" and status["error"] == "timed out after 1 s", status
    assert 3.5 < elapsed < 15  # 1 s, SIGTERM (ignored), 3 s of grace, SIGKILL
    log = Path(status["log_file"]).read_text()
    # the runner took the token back before it sent SIGTERM, so the promotion the job tried then was refused
    assert "token at SIGTERM: gone" in log and "not promoted: the backend gave up on this training job" in log, log
    assert registry.current() is None and registry.read()["history"][-1]["action"] == "refused"
    _, env, process = launcher.started[0]
    assert process.poll() == -9 and not Path(env[JOB_TOKEN_ENV]).exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # the whole process group is gone


def test_start_training_with_nothing_new_is_a_quick_skip_unless_forced(tmp_path, schema):
    export, models = trained_on_this_export(tmp_path, schema)
    swaps = []
    runner = JobRunner(
        lambda project: (["train", "--quiet", "--from-export", str(export), "--models", str(models)], {}),
        models / "logs",
        on_finish=swaps.append,
        models_dir=models,
        launcher=ColdLauncher(),  # the real `train`
    )
    assert runner.submit("START_TRAINING", "1") == "queued"
    status = finished(runner, timeout=60)
    assert status["state"] == "skipped" and status["error"] is None, status
    assert status["detail"].startswith("no new accepted labels since model 20260101T000000-aaaa0001")
    assert swaps == []  # nothing changed: no model swap, no "succeeded"
    assert status["history"][-1]["state"] == "skipped"

    fake = FakeLauncher()
    cases = [  # (command, force): forced by the request, forced by WORKBENCH_TRAIN_ARGS, not forced
        (["train", "exit", "0", "trained"], True),
        (["train", "--force", "exit", "0", "trained"], False),
        (["train", "exit", str(SKIPPED_EXIT_CODE), "nothing new"], False),
    ]
    states = []
    for command, force in cases:
        runner = JobRunner(lambda project, command=command: (command, {}), models / "logs", launcher=fake)
        runner.submit("START_TRAINING", "1", force=force)
        states.append((finished(runner)["state"], finished(runner)["detail"]))
    assert states == [("succeeded", None), ("succeeded", None), ("skipped", "nothing new")]
    assert [("--if-new-data" in args) for args, _, _ in fake.started] == [False, False, True]
    assert {env[SKIPPED_EXIT_ENV] for _, env, _ in fake.started} == {str(SKIPPED_EXIT_CODE)}


def test_workers_sharing_a_models_folder_run_one_job_and_show_the_same_one(tmp_path):
    models, release = tmp_path / "models", tmp_path / "release"
    launchers = {"a": FakeLauncher(), "b": FakeLauncher()}
    a, b = (
        JobRunner(lambda p: (["wait", str(release)], {}), models / "logs", models_dir=models, launcher=launchers[name])
        for name in ("a", "b")
    )  # two workers of `serve --workers 2`: separate runners, one models folder
    assert a.submit("START_TRAINING", "1") == "queued"
    assert b.submit("START_TRAINING", "1") == "busy"  # the other worker's job runs: no second job
    assert launchers["b"].started == []
    seen_a, seen_b = a.snapshot(), b.snapshot()
    for key in ("state", "reason", "started_at", "log_file", "backend_pid"):
        assert seen_b[key] == seen_a[key], key
    assert seen_b["state"] == "running" and seen_b["follow_up"] and seen_a["follow_up"]
    release.touch()
    # a's job ends; a takes the follow-up b asked for and runs it; b shows it
    status = wait_for(lambda: (s := a.snapshot())["jobs_started"] == 2 and s["state"] != "running" and s, 30, "2")
    assert status["state"] == "succeeded" and status["reason"] == "labels changed during the last run"
    seen_b = b.snapshot()
    assert (seen_b["state"], seen_b["started_at"], seen_b["follow_up"]) == ("succeeded", status["started_at"], False)
    assert b.submit("START_TRAINING", "1") == "queued"  # the lock is free again: any worker starts the next job
    status = finished(b, timeout=30)
    assert status["state"] == "succeeded" and a.snapshot()["started_at"] == status["started_at"]
    # a worker that died while its job ran: the others do not show "running" forever
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    shared = json.loads((models / STATUS_FILE).read_text())
    shared.update(state="running", started_at=time.time(), backend_pid=int(dead.stdout), owner="gone")
    (models / STATUS_FILE).write_text(json.dumps(shared))
    seen_a = a.snapshot()
    assert seen_a["state"] == "failed" and "worker that ran this job stopped" in seen_a["error"]


def test_a_follow_up_runs_for_the_project_that_asked_and_train_every_counts_per_project(tmp_path):
    """A request for project 2 while project 1's job runs is run next for project 2 (a job trains one project's
    registry), and `train_every` counts each project's new annotations on their own."""
    asked: list[str | None] = []

    def command(project):
        asked.append(project)
        return [sys.executable, "-c", "import time; time.sleep(1)"], {}

    class Plain(ColdLauncher):
        def start(self, args, env, log_path):
            with open(log_path, "ab") as log_file:
                return subprocess.Popen(list(args), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    runner = JobRunner(command, tmp_path / "logs", launcher=Plain(), models_dir=tmp_path, train_every=2)
    assert runner.submit("START_TRAINING", "1") == "queued"
    assert runner.submit("START_TRAINING", "2") == "busy"
    wait_for(lambda: runner.snapshot()["jobs_started"] == 2 and runner.snapshot()["state"] != "running", 60, "2 jobs")
    assert asked == ["1", "2"]
    assert runner.annotation_changed("3") == "recorded" and runner.annotation_changed("4") == "recorded"
    assert runner.annotation_changed("3") == "queued" and asked[-1] == "3"  # the second change of project 3
    finished(runner)
