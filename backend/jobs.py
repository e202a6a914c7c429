"""Training jobs: one at a time, in a separate process, never blocking a request.

A request while a job runs marks a follow-up run (new labels arrived), so nothing is lost and jobs never overlap.
Without a training command (training not installed or not configured) requests are only recorded.

Each job runs `workbench <args>` in a process of its own, started by a launcher:
  WarmLauncher  forks it from a warm interpreter that already imported torch, transformers and the training code
                (multiprocessing's forkserver with those modules preloaded): no 4-18 s of imports per job.
  ColdLauncher  a fresh `python -m workbench <args>` process per job (WORKBENCH_TRAIN_WARM=false).
Either way the job is the leader of its own process group, writes to its own log file, and a crash of it cannot
take the backend down.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

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
    launcher: str | None = None
    history: list[dict] = field(default_factory=list)


# Builds the `workbench` arguments (e.g. ["train", "--quiet", ...]) and extra environment of a training run for a
# project (None: use settings only).
CommandBuilder = Callable[[str | None], tuple[list[str], dict[str, str]]]


class Job(Protocol):
    """A started job process: subprocess.Popen has this shape, and so has _ForkedJob."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


class ColdLauncher:
    """Each job is a fresh `python -m workbench <args>` process."""

    name = "cold"

    def warm_up(self) -> None:
        """Nothing to prepare."""

    def start(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> Job:
        """Start `workbench <args>` with `env` added, output appended to `log_path`."""
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "workbench", *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
            )


# What a warm training worker imports once (everything `workbench train` imports lazily before its first step).
WARM_MODULES = ("training.warm",)


class WarmLauncher:
    """Jobs are forks of a warm interpreter: multiprocessing's forkserver with the training code preloaded.

    The forkserver is a fresh interpreter started by this process (not a fork of the backend, so no ONNX sessions,
    threads or sockets leak into jobs); it imports `WARM_MODULES` once and then forks one child per job. Each child
    runs `workbench.cli.main(args)` as `python -m workbench` would. The modules must not initialise CUDA or torch's
    thread pools, which do not survive a fork: importing them does neither (training/warm.py).
    """

    name = "warm"

    def __init__(self) -> None:
        import multiprocessing

        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(WARM_MODULES))

    def warm_up(self, timeout: float = 300) -> None:
        """Start the forkserver and wait until it has imported the training code (a no-op child proves it).

        Raises RuntimeError when the worker cannot start or its imports failed (the forkserver skips a module that
        fails to import, so jobs would still run, only importing everything themselves).
        """
        probe = self._context.Process(target=_check_preloaded, name="workbench-train-probe")
        probe.start()
        probe.join(timeout)
        if probe.exitcode is None:
            probe.terminate()
            raise RuntimeError(f"the warm training worker did not start within {timeout:.0f} s")
        if probe.exitcode != 0:
            raise RuntimeError(f"the warm training worker could not import the training code (exit {probe.exitcode})")

    def start(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> Job:
        """Fork `workbench <args>` from the warm interpreter, with `env` added, output appended to `log_path`."""
        process = self._context.Process(
            target=_run_workbench, args=(list(args), dict(env), str(log_path)), name="workbench-train"
        )
        process.start()
        return _ForkedJob(process)


class _ForkedJob:
    """A multiprocessing.Process seen through the Popen methods the runner uses."""

    def __init__(self, process) -> None:  # noqa: ANN001 (a multiprocessing Process of the forkserver context)
        self._process = process
        self.pid = int(process.pid)

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int | None:
        self._process.join(timeout)
        return self._process.exitcode


def _check_preloaded() -> None:
    """The warm-up probe's body: exit 0 when the forkserver really holds the training code."""
    sys.exit(0 if all(name in sys.modules for name in WARM_MODULES) else 3)


def _run_workbench(args: list[str], env: dict[str, str], log_path: str) -> None:
    """The body of a forked job: its own session and log file, then the `workbench` command line."""
    os.setsid()  # its own process group, as start_new_session=True gives a cold job: stop() signals the group
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((null_fd, 0), (log_fd, 1), (log_fd, 2)):
        os.dup2(source, target)
    os.close(log_fd)
    os.close(null_fd)
    os.environ.update(env)
    from workbench.cli import main

    main(args)  # exits through SystemExit: multiprocessing turns its code into the exit code


def default_launcher(warm: bool) -> ColdLauncher | WarmLauncher:
    """The warm launcher where this platform has a forkserver (Linux, macOS), else a cold one."""
    if warm:
        import multiprocessing

        if "forkserver" in multiprocessing.get_all_start_methods():
            return WarmLauncher()
        log.warning("no forkserver on this platform: every training job imports torch afresh")
    return ColdLauncher()


class JobRunner:
    """Starts a job through `launcher` on request; reports through `status`; calls `on_finish` after each job."""

    def __init__(
        self,
        command: CommandBuilder | None,
        log_dir: Path,
        on_finish: Callable[[bool], None] | None = None,
        train_every: int = 0,
        launcher: ColdLauncher | WarmLauncher | None = None,
    ) -> None:
        self._command = command
        self._log_dir = log_dir
        self._on_finish = on_finish
        self._train_every = train_every
        self._launcher = launcher or ColdLauncher()
        self._lock = threading.Lock()
        self._process: Job | None = None
        self._closed = False  # after stop(): no new jobs (a follow-up must not start during shutdown)
        self._ended = threading.Event()  # set when the running job's end is published (only _wait waits on a job)
        self._consumed = 0  # new annotations counted before the running job started (its data includes them)
        self.status = JobStatus()
        # How jobs start: "cold" (a fresh process each), "warming" (the warm worker is importing), "warm", or why
        # the warm worker is not there (jobs then start anyway, only slower).
        self.worker = self._launcher.name if self._launcher.name == "cold" else "not started"

    def warm_up(self) -> None:
        """Start the warm worker in the background when training is configured; /health shows its state."""
        if self._command is None or self._launcher.name == "cold":
            return
        self.worker = "warming"
        threading.Thread(target=self._warm_up, daemon=True, name="train-warm-up").start()

    def _warm_up(self) -> None:
        started = time.perf_counter()
        try:
            self._launcher.warm_up()
        except Exception as error:  # a warm worker is an optimisation: jobs still start, only slower
            self.worker = f"failed: {error}"
            log.warning("training worker: %s; jobs will import the training code themselves", error)
            return
        self.worker = "warm"
        log.info("training worker warm after %.1f s", time.perf_counter() - started)

    def snapshot(self) -> dict:
        """A copy of the status, safe to serialise."""
        with self._lock:
            data = asdict(self.status)
        data["worker"] = self.worker
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
            if self._command is None or self._closed:
                self.status.state, self.status.reason, self.status.project = "recorded", reason, project
                return "recorded"
            if self._process is not None:
                self.status.follow_up = True
                return "busy"
            try:
                self._start_locked(reason, project)
            except OSError as error:  # no process could be started (fork refused, log folder unwritable, ...)
                self._finish_locked("failed", f"training could not start: {error}", None)
                log.error(self.status.error)
                return "failed"
            return "queued"

    def _start_locked(self, reason: str, project: str | None) -> None:
        assert self._command is not None
        args, extra_env = self._command(project)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"train-{time.strftime('%Y%m%dT%H%M%S')}-{self.status.jobs_started + 1}.log"
        self._consumed = self.status.new_annotations  # from now on the counter counts what this job cannot see
        self.status = JobStatus(
            state="running",
            reason=reason,
            project=project,
            started_at=time.time(),
            jobs_started=self.status.jobs_started + 1,
            requests=self.status.requests,
            log_file=str(log_path),
            launcher=self._launcher.name,
            history=self.status.history,
        )
        self._ended.clear()
        self._process = self._launcher.start(args, extra_env, log_path)
        threading.Thread(target=self._wait, args=(self._process, log_path), daemon=True, name="train-wait").start()

    def _wait(self, process: Job, log_path: Path) -> None:
        code = process.wait()
        ok = code == 0
        error = None if ok else f"training exited with code {code}: {_last_line(log_path, self._launcher.name)}"
        if error:
            log.error(error)
        # Swap in the new model before /health says "succeeded", so a client seeing that state gets the new model.
        if self._on_finish is not None:
            try:
                self._on_finish(ok)
            except Exception:  # the runner must outlive a failing callback
                log.exception("after-training step failed")
        with self._lock:
            self._process = None
            follow_up = self._finish_locked("succeeded" if ok else "failed", error, log_path)
            project = self.status.project
        self._ended.set()
        if follow_up:
            self.submit("labels changed during the last run", project)

    def _finish_locked(self, state: str, error: str | None, log_path: Path | None) -> bool:
        """Publish a job's end; returns whether a follow-up run was asked for meanwhile."""
        self.status.state = state
        self.status.finished_at = time.time()
        self.status.error = error
        if state == "failed":  # the annotations it was to learn from are still new
            self.status.new_annotations += self._consumed
        self._consumed = 0
        self.status.history.append(
            {"state": state, "reason": self.status.reason, "error": error, "log": str(log_path) if log_path else None}
        )
        follow_up, self.status.follow_up = self.status.follow_up, False
        return follow_up

    def stop(self) -> None:
        """Stop a running job (its process group), wait up to 10 s for it to end, and start no more (shutdown)."""
        with self._lock:
            process, self._closed = self._process, True
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                return
            # Not process.wait(): two threads waiting on one forked job race for its exit code.
            self._ended.wait(10)


def _last_line(path: Path, launcher: str) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    if lines:
        return lines[-1][:300]
    if launcher == "warm":  # it failed before its output went to the log: the reason is in the backend's log
        return "no output; see the backend's log (WORKBENCH_TRAIN_WARM=false starts each job as a fresh process)"
    return "no output"
