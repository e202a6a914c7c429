"""Crash safety (issue 7): SIGKILL during training, promotion and backend reload; disk full while saving.

Each test works on its own copy of a registry that already serves a promoted tiny model (`promoted`), so "the
current model is untouched" is checked against a real, complete version.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_reliability_support import (  # noqa: F401 (torch_threads_restored is a fixture)
    ROOT,
    TINY,
    TINY_CLI,
    assert_one_error_line,
    child_env,
    clone_version,
    get_json,
    kill9,
    run_cli_in_process,
    run_workbench,
    snapshot,
    start_workbench,
    stop,
    torch_threads_restored,
    wait_for,
    write_export,
)
from tests.test_training_pipeline import synthetic_export
from training.registry import REGISTRY_FILE, Registry, current_model, project_dir
from workbench.services import free_port


@pytest.fixture(scope="module")
def promoted(schema, tmp_path_factory) -> tuple[Path, str, Path]:
    """(registry with one promoted tiny version, that version, an export file to train on). The registry is that of
    data naming no project, `<models folder>/projects/default`, as `train --from-export` of the export uses it."""
    import torch

    from training.pipeline import run_training

    base = tmp_path_factory.mktemp("reliability-crash")
    export = write_export(base / "export.json")
    threads = torch.get_num_threads()
    try:
        outcome = run_training(synthetic_export(), schema, project_dir(base / "models", None), TINY, source=str(export))
    finally:
        torch.set_num_threads(threads)
    assert outcome.promoted
    return project_dir(base / "models", None), outcome.version, export


def top(registry_root: Path) -> Path:
    """The models folder a registry of `project_dir` lives in: what `--models` names."""
    return registry_root.parent.parent


@pytest.fixture
def models(promoted, tmp_path) -> Path:
    """A private copy of the models folder for one test; the promoted registry in it."""
    source, _, _ = promoted
    shutil.copytree(top(source), tmp_path / "models")
    return project_dir(tmp_path / "models", None)


@pytest.mark.slow
def test_sigkill_mid_training_leaves_the_registry_as_it_was_and_the_next_run_cleans_up(promoted, models, tmp_path):
    _, first, export = promoted
    before = snapshot(models)
    args = ["train", "--from-export", str(export), "--models", str(top(models)), "--force", *TINY_CLI]
    process = start_workbench(*args, log=tmp_path / "killed.log")
    # The version folder is written under .staging-<version>-<pid> and renamed only when complete: kill -9 while
    # that folder exists, i.e. in the middle of saving weights, tokenizer, plots and manifest.
    deadline = time.monotonic() + 240
    staging: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        staging = list(models.glob(".staging-*"))
        if staging:
            break
        time.sleep(0.01)
    alive = process.poll() is None
    kill9(process)
    assert staging and alive, f"no staging folder seen before the run ended: {(tmp_path / 'killed.log').read_text()}"

    stale = list(models.glob(".staging-*"))
    assert stale, "the kill landed after the rename; the staging window was missed"
    assert snapshot(models) == before  # pointer bytes, complete versions and visible folders all unchanged
    registry = Registry(models)
    assert registry.current() == first and registry.versions() == [first]
    assert [entry["version"] for entry in registry.list()] == [first]  # the half version is not listed
    assert current_model(top(models)) == (first, models / first)  # what the backend would serve

    done = run_workbench(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    registry = Registry(models)
    second = registry.current()
    assert second != first and registry.versions() == sorted([first, second])
    assert not list(models.glob(".staging-*")), "the stale staging folder of the killed run was not removed"


PROMOTE_LOOP = """
import sys
from training.registry import Registry
registry, version = Registry(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
while True:
    if registry.current() == version:
        registry.rollback()
    else:
        registry.promote(version, force=True)
"""


def test_sigkill_mid_promotion_keeps_registry_json_whole(promoted, models):
    _, first, _ = promoted
    second = clone_version(models, first, "b" * 16)
    complete = {first, second}
    rng = random.Random(7)  # fixed seed: the same kill moments on every run
    pointer = models / REGISTRY_FILE
    lengths = []
    for _ in range(10):
        process = subprocess.Popen(
            [sys.executable, "-c", PROMOTE_LOOP, str(models), second],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.01, 0.3))
        assert process.poll() is None, "the promote/rollback loop stopped by itself"
        kill9(process)
        process.stdout.close()

        data = json.loads(pointer.read_text(encoding="utf-8"))  # parses: never a half-written pointer
        registry = Registry(models)
        assert data["current"] in complete
        assert registry.stack()[-1] == data["current"]  # the history agrees with the pointer
        assert set(registry.versions()) == complete
        lengths.append(len(data["history"]))
    assert lengths[-1] > 10, f"the loop barely ran between kills: history lengths {lengths}"

    registry = Registry(models)
    if registry.current() == second:
        assert registry.rollback() == first
    result = registry.promote(second, force=True)
    assert result.promoted and registry.current() == second
    assert registry.rollback() == first and registry.current() == first


def _open_files(pid: int) -> set[str]:
    names = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                names.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return names


@pytest.mark.slow
def test_sigkill_backend_during_reload_then_restart_serves_the_registry_current(promoted, models, tmp_path):
    _, first, _ = promoted
    second = clone_version(models, first, "c" * 16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = child_env(WORKBENCH_RELOAD_INTERVAL="0.2", WORKBENCH_THREADS="1")
    argv = ["serve", "--port", str(port), "--models", str(top(models))]
    server = start_workbench(*argv, log=tmp_path / "serve-1.log", env=env)
    try:
        health = wait_for(lambda: get_json(f"{url}/health"), 180, "the backend to start")
        assert health["model_version"] == first

        Registry(models).promote(second, force=True)
        promoted_pointer = (models / REGISTRY_FILE).read_bytes()
        # Kill -9 while the watcher loads the new version: the moment the process has a file of its folder open.
        watched = str(models / second)
        seen = wait_for(
            lambda: any(name.startswith(watched) for name in _open_files(server.pid)) or server.poll() is not None,
            60,
            "the backend to start loading the promoted model",
            every=0.002,
        )
        assert seen and server.poll() is None
        kill9(server)
        assert (models / REGISTRY_FILE).read_bytes() == promoted_pointer  # the backend never writes the registry
        assert Registry(models).current() == second

        server = start_workbench(*argv, log=tmp_path / "serve-2.log", env=env)
        health = wait_for(lambda: get_json(f"{url}/health"), 180, "the backend to restart")
        assert health["model_version"] == second == Registry(models).current()
        assert health["model_kind"] == "trained" and health["last_reload_error"] is None
        tasks = [{"id": i, "data": t["data"]} for i, t in enumerate(synthetic_export(3)[:3])]
        answer = httpx.post(f"{url}/predict", json={"tasks": tasks}, timeout=60).json()
        assert [r["model_version"] for r in answer["results"]] == [second] * 3
        assert (models / REGISTRY_FILE).read_bytes() == promoted_pointer
    finally:
        stop(server)


# ---- disk full / unwritable models folder ----
# We run as root, so a chmod-ed folder would still be writable: the faults are injected instead (an OSError with
# errno ENOSPC raised by the function that writes the weights, or by fsync), or the models "folder" is a file.


@pytest.mark.usefixtures("torch_threads_restored")
def test_disk_full_while_saving_weights_is_one_error_line_and_changes_nothing(promoted, models, monkeypatch, capsys):
    import transformers.modeling_utils

    _, first, export = promoted
    before = snapshot(models)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1024)  # a partial file, as a real full disk would leave
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    code, _, err = run_cli_in_process(
        monkeypatch, capsys, "train", "--from-export", str(export), "--models", str(top(models)), "--force", *TINY_CLI
    )
    assert code == 1
    assert_one_error_line(err, "could not save model version", str(models), "No space left on device")
    assert snapshot(models) == before
    assert not list(models.glob(".staging-*")), "the partial version was left behind"
    assert Registry(models).current() == first


@pytest.mark.usefixtures("torch_threads_restored")
def test_models_folder_that_is_a_file_is_one_error_line(promoted, tmp_path, monkeypatch, capsys):
    _, _, export = promoted
    not_a_folder = tmp_path / "models"
    not_a_folder.write_text("not a folder\n")
    code, _, err = run_cli_in_process(
        monkeypatch, capsys, "train", "--from-export", str(export), "--models", str(not_a_folder), *TINY_CLI
    )
    assert code == 1
    assert_one_error_line(err, "could not save model version", str(not_a_folder))
    assert not_a_folder.read_text() == "not a folder\n"


def test_disk_full_while_switching_the_pointer_keeps_the_old_one(promoted, models, monkeypatch, capsys):
    _, first, _ = promoted
    second = clone_version(models, first, "d" * 16)
    before = (models / REGISTRY_FILE).read_bytes()

    def fsync_fails(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync_fails)
    code, _, err = run_cli_in_process(
        monkeypatch, capsys, "models", "promote", second, "--models", str(top(models)), "--force"
    )
    monkeypatch.undo()
    assert code == 1
    assert_one_error_line(err, "could not update", REGISTRY_FILE, "No space left on device")
    assert (models / REGISTRY_FILE).read_bytes() == before
    assert Registry(models).current() == first
    assert not list(models.glob(f".{REGISTRY_FILE}.*")), "a temporary pointer file was left behind"
