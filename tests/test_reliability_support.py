"""Helpers shared by the reliability tests (no tests here): tiny training, subprocess CLI runs, a Label Studio
stand-in, registry snapshots.

Everything is kept tiny (2 optimizer steps, 32 tokens, a dozen short paragraphs) because these tests run on a
couple of shared CPU cores; the whole reliability set must finish in a few minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.test_training_pipeline import synthetic_export
from training.registry import MANIFEST_FILE, REGISTRY_FILE, Registry
from training.training_args import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
# One torch thread: on a few busy cores, more threads make these two steps several times slower.
TINY = TrainingArguments(max_steps=2, max_length=32, batch_size=4, progress=False, seed=3, threads=1)
TINY_CLI = ["--max-steps", "2", "--max-length", "32", "--batch-size", "4", "--threads", "1", "--quiet"]


@pytest.fixture
def torch_threads_restored():
    """Put torch's process-wide thread count back after a test that trains in this process with --threads 1."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child `workbench` process: this one, one torch thread, no Label Studio settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "WORKBENCH_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
        }
    )
    env.update(extra)
    return env


def workbench_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "workbench", *args]


def run_workbench(*args: str, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m workbench ARGS` to completion, output captured as text."""
    return subprocess.run(
        workbench_argv(*args),
        cwd=ROOT,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_workbench(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m workbench ARGS` in the background, in its own process group, output to `log`."""
    with open(log, "ab") as handle:
        return subprocess.Popen(
            workbench_argv(*args),
            cwd=ROOT,
            env=env or child_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def kill9(process: subprocess.Popen) -> None:
    """SIGKILL a child started with `start_workbench` (its whole process group) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM a child's process group, SIGKILL when it does not stop within 15 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        kill9(process)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_error_line(stderr: str, *needles: str) -> str:
    """stderr holds exactly one non-empty line, an `error: ...` naming every needle, and no traceback."""
    lines = error_lines(stderr)
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def write_export(path: Path, n: int = 12) -> Path:
    path.write_text(json.dumps(synthetic_export(n)), encoding="utf-8")
    return path


def snapshot(models: Path) -> tuple[bytes | None, list[str], list[str]]:
    """What must not change: the registry file's bytes, the complete versions and every visible folder."""
    pointer = models / REGISTRY_FILE
    visible = sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) if models.is_dir() else []
    return (pointer.read_bytes() if pointer.exists() else None, Registry(models).versions(), visible)


def clone_version(models: Path, source: str, data_hash: str) -> str:
    """A second complete version: a copy of `source` under a new version name (same weights; enough for swaps)."""
    registry = Registry(models)
    version = registry.new_version(data_hash)
    shutil.copytree(models / source, models / version)
    manifest = json.loads((models / version / MANIFEST_FILE).read_text())
    manifest["version"] = version
    manifest["data_hash"] = data_hash
    (models / version / MANIFEST_FILE).write_text(json.dumps(manifest))
    return version


def run_cli_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    """`workbench ARGS` through the real entry point (`workbench.cli.main`) in this process: (exit code, out, err).

    In-process so that a fault can be injected with monkeypatch (disk full, short Label Studio timeouts).
    """
    from workbench.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    captured = capsys.readouterr()
    code = stopped.value.code
    return (0 if code is None else code), captured.out, captured.err


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def get_json(url: str, timeout: float = 5) -> dict | None:
    """GET a JSON document, or None when the server does not answer (yet)."""
    import httpx

    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


class FakeLabelStudio:
    """A tiny local HTTP server standing in for Label Studio: whoami + the JSON export, each ok, slow or 503.

    `modes` maps "whoami"/"export" to "ok", "slow" (sleeps `slow_seconds` before answering, longer than the client
    timeout the test sets) or "503". Every request is recorded with its time and Authorization header.
    """

    def __init__(self, export: list[dict] | None = None, slow_seconds: float = 3.0) -> None:
        self.modes = {"whoami": "ok", "export": "ok"}
        self.export = export if export is not None else []
        self.slow_seconds = slow_seconds
        self.requests: list[tuple[float, str, str]] = []  # (monotonic time, route, authorization)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                route = "whoami" if path.rstrip("/").endswith("whoami") else "export" if "export" in path else "other"
                with fake.lock:
                    fake.requests.append((time.monotonic(), route, self.headers.get("Authorization", "")))
                mode = fake.modes.get(route, "404")
                if mode == "slow":
                    time.sleep(fake.slow_seconds)
                if mode == "503":
                    return self._send(503, b'{"detail": "Service Unavailable"}')
                if mode == "401":
                    return self._send(401, b'{"detail": "Invalid token."}')
                if route == "whoami":
                    user = {
                        "id": 1,
                        "email": "admin@example.com",
                        "username": "admin",
                        "first_name": "",
                        "last_name": "",
                    }
                    return self._send(200, json.dumps(user).encode())
                if route == "export":
                    return self._send(200, json.dumps(fake.export).encode())
                return self._send(404, b'{"detail": "Not found."}')

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def hits(self, route: str) -> list[float]:
        with self.lock:
            return [at for at, name, _ in self.requests if name == route]

    def __enter__(self) -> FakeLabelStudio:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
