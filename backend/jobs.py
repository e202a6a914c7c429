"""Training jobs: one at a time, in a separate process, never blocking a request.

A request while a job runs marks a follow-up run (new labels arrived), so nothing is lost and jobs never overlap.
Without a training command (training not installed or not configured) requests are only recorded.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class JobStatus:
    """What /health shows about training."""

    state: str = "idle"  # idle | running | succeeded | failed | recorded
    reason: str | None = None
    project: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    follow_up: bool = False
    jobs_started: int = 0
    requests: int = 0
    new_annotations: int = 0
    log_file: str | None = None
    history: list[dict] = field(default_factory=list)


# Builds the command line and extra environment of a training run for a project (None: use settings only).
CommandBuilder = Callable[[str | None], tuple[list[str], dict[str, str]]]


class JobRunner:
    """Starts `command` in a child process on request; reports through `status`; calls `on_success` after."""

    def __init__(
        self,
        command: CommandBuilder | None,
        log_dir: Path,
        on_finish: Callable[[bool], None] | None = None,
        train_every: int = 0,
    ) -> None:
        self._command = command
        self._log_dir = log_dir
        self._on_finish = on_finish
        self._train_every = train_every
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self.status = JobStatus()

    def snapshot(self) -> dict:
        """A copy of the status, safe to serialise."""
        with self._lock:
            data = asdict(self.status)
        data["history"] = data["history"][-5:]
        return data

    def annotation_changed(self, project: str | None) -> str:
        """Count an accepted-label change; start training when `train_every` changes have piled up."""
        with self._lock:
            self.status.new_annotations += 1
            due = self._train_every > 0 and self.status.new_annotations >= self._train_every
        if due:
            return self.submit(f"{self._train_every} new annotations", project)
        return "recorded"

    def submit(self, reason: str, project: str | None) -> str:
        """Ask for a training run: 'queued' (started now), 'busy' (runs after the current one) or 'recorded'."""
        with self._lock:
            self.status.requests += 1
            if self._command is None:
                self.status.state, self.status.reason, self.status.project = "recorded", reason, project
                return "recorded"
            if self._process is not None:
                self.status.follow_up = True
                return "busy"
            self._start_locked(reason, project)
            return "queued"

    def _start_locked(self, reason: str, project: str | None) -> None:
        assert self._command is not None
        argv, extra_env = self._command(project)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"train-{time.strftime('%Y%m%dT%H%M%S')}-{self.status.jobs_started + 1}.log"
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **extra_env},
                start_new_session=True,
            )
        self.status = JobStatus(
            state="running",
            reason=reason,
            project=project,
            started_at=time.time(),
            jobs_started=self.status.jobs_started + 1,
            requests=self.status.requests,
            log_file=str(log_path),
            history=self.status.history,
        )
        threading.Thread(target=self._wait, args=(self._process, log_path), daemon=True, name="train-wait").start()

    def _wait(self, process: subprocess.Popen, log_path: Path) -> None:
        code = process.wait()
        ok = code == 0
        error = None if ok else f"training exited with code {code}: {_last_line(log_path)}"
        with self._lock:
            self._process = None
            self.status.state = "succeeded" if ok else "failed"
            self.status.finished_at = time.time()
            self.status.error = error
            if ok:
                self.status.new_annotations = 0
            self.status.history.append(
                {"state": self.status.state, "reason": self.status.reason, "error": error, "log": str(log_path)}
            )
            follow_up, self.status.follow_up = self.status.follow_up, False
            project = self.status.project
        if error:
            log.error(error)
        if self._on_finish is not None:
            self._on_finish(ok)
        if follow_up:
            self.submit("labels changed during the last run", project)

    def stop(self) -> None:
        """Stop a running job (its process group)."""
        import signal

        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
