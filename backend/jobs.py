"""Training jobs: one at a time, in a separate process, never blocking a request.

A request while a job runs marks a follow-up run (new labels arrived), so nothing is lost and jobs never overlap.
Without a training command (training not installed or not configured) requests are only recorded.

Each job runs `training`'s command line (`<args>`, through backend/train_job.py, which adds the instant learner as
the gate's rival) in a process of its own, started by a launcher:
  WarmLauncher  forks it from a warm interpreter that already imported torch, transformers and the training code
                (multiprocessing's forkserver with those modules preloaded): no 4-18 s of imports per job.
  ColdLauncher  a fresh `python -m backend.train_job <args>` process per job (WORKBENCH_TRAIN_WARM=false).
Either way the job is the leader of its own process group, writes to its own log file, and a crash of it cannot
take the backend down.

Bounds and sharing (the models folder is shared by every `serve --workers N` process, each with its own runner):
  - one job per models folder: the runner holds an exclusive flock on `<models>/.training.lock` while its job runs,
    and writes the job's status to `<models>/.training.json`, which the other workers' /health show;
  - a request while a job runs (here or in another worker) touches `<models>/.training.follow-up.<project>`; the
    runner whose job ends takes one and starts one more run for that project;
  - `train_every` counts new annotations per project, and a job trains one project (its own registry);
  - a `train` job runs with `--if-new-data` unless forced, and exits with training.registry.SKIPPED_EXIT_CODE when
    there is nothing new: state "skipped";
  - with a timeout, a job running longer gets SIGTERM, then SIGKILL after `kill_grace` seconds. Before signalling,
    the runner takes back the job's token (training.registry.claim_job_token), so the job can no longer promote.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from training.registry import (  # torch-free
    JOB_TOKEN_ENV,
    SKIPPED_EXIT_CODE,
    SKIPPED_EXIT_ENV,
    claim_job_token,
    pid_alive,
    write_json_atomic,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".training.lock"  # flock held by the runner whose job runs: one job per models folder
STATUS_FILE = ".training.json"  # that job's status, for the /health of every worker
FOLLOW_UP_FILE = ".training.follow-up"  # + ".<project>": one more run for that project asked for while a job ran
TOKEN_PREFIX = ".training-token-"  # a job may promote only while its token exists (see claim_job_token)
KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
# The fields of a job that every worker shows the same (the rest are counters of the worker's own requests).
SHARED_FIELDS = ("state", "reason", "project", "started_at", "finished_at", "error", "detail", "log_file", "launcher")


@dataclass
class JobStatus:
    """What /health shows about training."""

    state: str = "idle"  # idle | running | succeeded | skipped | failed | recorded
    reason: str | None = None  # what asked for the job
    project: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    detail: str | None = None  # why a job was skipped
    follow_up: bool = False
    jobs_started: int = 0
    requests: int = 0
    new_annotations: int = 0
    log_file: str | None = None
    launcher: str | None = None
    backend_pid: int | None = None  # the backend process whose runner started the job
    history: list[dict] = field(default_factory=list)


# Builds the `training` arguments (e.g. ["train", "--quiet", ...]) and extra environment of a training run for a
# project (None: use settings only).
CommandBuilder = Callable[[str | None], tuple[list[str], dict[str, str]]]


class Job(Protocol):
    """A started job process: subprocess.Popen has this shape, and so has _ForkedJob."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...  # Popen raises TimeoutExpired, _ForkedJob: None


class ColdLauncher:
    """Each job is a fresh `python -m backend.train_job <args>` process."""

    name = "cold"

    def warm_up(self) -> None:
        """Nothing to prepare."""

    def start(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> Job:
        """Start `python -m backend.train_job <args>` with `env` added, output appended to `log_path`."""
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "backend.train_job", *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
            )


# What a warm training worker imports once (everything `train` imports lazily before its first step).
WARM_MODULES = ("backend.warm",)


class WarmLauncher:
    """Jobs are forks of a warm interpreter: multiprocessing's forkserver with the training code preloaded.

    The forkserver is a fresh interpreter started by this process (not a fork of the backend, so no ONNX sessions,
    threads or sockets leak into jobs); it imports `WARM_MODULES` once and then forks one child per job. Each child
    runs `backend.train_job.main(args)` as `python -m backend.train_job` would. The modules must not initialise CUDA
    or torch's thread pools, which do not survive a fork: importing them does neither (backend/warm.py).
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
        """Fork a job from the warm interpreter, with `env` added, output appended to `log_path`."""
        process = self._context.Process(
            target=_run_job, args=(list(args), dict(env), str(log_path)), name="workbench-train"
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


def _run_job(args: list[str], env: dict[str, str], log_path: str) -> None:
    """The body of a forked job: its own session and log file, then the training job's command line."""
    os.setsid()  # its own process group, as start_new_session=True gives a cold job: stop() signals the group
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((null_fd, 0), (log_fd, 1), (log_fd, 2)):
        os.dup2(source, target)
    os.close(log_fd)
    os.close(null_fd)
    os.environ.update(env)
    from backend.train_job import main

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
    """Starts a job through `launcher` on request; reports through `status`; calls `on_finish` after each job that
    ran (not after a skipped one). `models_dir` holds the lock and status shared with other workers (default: the
    parent of `log_dir`, as the backend's logs are `<models>/logs`); `timeout` (seconds, 0: none) bounds a job."""

    def __init__(
        self,
        command: CommandBuilder | None,
        log_dir: Path,
        on_finish: Callable[[bool], None] | None = None,
        train_every: int = 0,
        launcher: ColdLauncher | WarmLauncher | None = None,
        *,
        models_dir: Path | None = None,
        timeout: float = 0,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self._command = command
        self._log_dir = log_dir
        self._models_dir = Path(models_dir) if models_dir is not None else Path(log_dir).parent
        self._timeout = timeout
        self._kill_grace = kill_grace
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock_handle: IO[Any] | None = None  # the open LOCK_FILE while our job runs
        self._token: Path | None = None
        self._on_finish = on_finish
        self._train_every = train_every
        self._launcher = launcher or ColdLauncher()
        self._lock = threading.Lock()
        self._process: Job | None = None
        self._closed = False  # after stop(): no new jobs (a follow-up must not start during shutdown)
        self._ended = threading.Event()  # set when the running job's end is published (only _wait waits on a job)
        self._consumed = 0  # new annotations counted before the running job started (its data includes them)
        self._new: dict[str, int] = {}  # project -> accepted-label changes since its last job started
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
        """A copy of the status, safe to serialise; shows another worker's job when it is newer than ours."""
        with self._lock:
            data = asdict(self.status)
            running_here = self._process is not None
        if not running_here:
            self._merge_shared(data)
        data["follow_up"] = bool(self._follow_ups())
        data["worker"] = self.worker
        data["history"] = data["history"][-5:]
        return data

    def _merge_shared(self, data: dict) -> None:
        try:
            shared = json.loads((self._models_dir / STATUS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(shared, dict) or shared.get("owner") == self._owner:
            return
        if (shared.get("started_at") or 0) <= (data.get("started_at") or 0):
            return
        data.update({key: shared.get(key) for key in SHARED_FIELDS})
        data["backend_pid"] = shared.get("backend_pid")
        if data["state"] == "running" and not _owner_alive(shared):
            data["state"] = "failed"
            data["error"] = "the backend worker that ran this job stopped before it ended; see the job's log"

    def _publish_locked(self) -> None:
        """Write our job's status where the other workers' snapshots read it (we hold the job lock)."""
        payload = {key: getattr(self.status, key) for key in SHARED_FIELDS}
        payload.update(owner=self._owner, host=socket.gethostname(), backend_pid=os.getpid())
        try:
            write_json_atomic(self._models_dir / STATUS_FILE, payload)
        except OSError as error:  # only other workers' /health lose the details
            log.warning("could not write %s: %s", self._models_dir / STATUS_FILE, error)

    def annotation_changed(self, project: str | None) -> str:
        """Count an accepted-label change of a project; start training it when `train_every` changes piled up."""
        with self._lock:
            name = _follow_up_name(project)
            self._new[name] = self._new.get(name, 0) + 1
            self.status.new_annotations = sum(self._new.values())
            due = self._train_every > 0 and self._new[name] >= self._train_every
        if due:
            return self.submit(f"{self._train_every} new annotations", project)
        return "recorded"

    def submit(self, reason: str, project: str | None, force: bool = False) -> str:
        """Ask for a training run: 'queued' (started now), 'busy' (runs after the current one, here or in another
        worker), 'recorded' or 'failed'. Unless `force`, a `train` job is a quick no-op ("skipped") when no accepted
        label changed since the newest model."""
        with self._lock:
            self.status.requests += 1
            if self._command is None or self._closed:
                self.status.state, self.status.reason, self.status.project = "recorded", reason, project
                return "recorded"
            if self._process is not None:
                self._ask_follow_up(project)
                return "busy"
            try:
                if not self._acquire_job_lock():
                    # Another worker's job runs: leave it the follow-up, then try again, in case that job ended
                    # between our two tries (its runner releases the lock before it takes the marker, see _wait).
                    self._ask_follow_up(project)
                    if not self._acquire_job_lock():
                        return "busy"
                    self._take_follow_up(project)  # the run we start now covers that request
                self._start_locked(reason, project, force)
            except OSError as error:  # no process could be started (fork refused, log folder unwritable, ...)
                self._release_job_lock()
                self._finish_locked("failed", f"training could not start: {error}", None)
                log.error(self.status.error)
                return "failed"
            return "queued"

    def _start_locked(self, reason: str, project: str | None, force: bool) -> None:
        assert self._command is not None
        args, extra_env = self._command(project)
        args = list(args)
        if args[:1] == ["train"] and not force and not {"--force", "--if-new-data"} & set(args):
            args.append("--if-new-data")  # nothing new since the newest model: exits at once with SKIPPED_EXIT_CODE
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"train-{time.strftime('%Y%m%dT%H%M%S')}-{self.status.jobs_started + 1}.log"
        token = (self._models_dir / f"{TOKEN_PREFIX}{uuid.uuid4().hex}").absolute()  # the job's cwd may differ
        token.write_bytes(b"")
        env = {**extra_env, JOB_TOKEN_ENV: str(token), SKIPPED_EXIT_ENV: str(SKIPPED_EXIT_CODE)}
        try:
            process = self._launcher.start(args, env, log_path)
        except BaseException:
            token.unlink(missing_ok=True)
            raise
        # from now on the project's counter counts what this job cannot see
        self._consumed = self._new.pop(_follow_up_name(project), 0)
        self.status.new_annotations = sum(self._new.values())
        self.status = JobStatus(
            state="running",
            reason=reason,
            project=project,
            started_at=time.time(),
            jobs_started=self.status.jobs_started + 1,
            requests=self.status.requests,
            log_file=str(log_path),
            launcher=self._launcher.name,
            backend_pid=os.getpid(),
            history=self.status.history,
        )
        self._ended.clear()
        self._process, self._token = process, token
        self._publish_locked()
        threading.Thread(target=self._wait, args=(process, log_path, token), daemon=True, name="train-wait").start()

    def _wait(self, process: Job, log_path: Path, token: Path) -> None:
        code = _wait_for(process, self._timeout or None)
        timed_out = claimed = False
        if code is None:  # ran past the timeout
            timed_out = True
            # Take the token back before any signal: from here on the job cannot promote (Registry.promote claims
            # the token under the registry lock just before it writes the pointer). If the job claimed it first,
            # it is writing its promotion: give it the grace period to finish that instead of cutting it.
            claimed = not claim_job_token(token)
            if claimed:
                code = _wait_for(process, self._kill_grace)
            if code is None:
                code = self._terminate(process)
        detail = None
        if timed_out and not (claimed and code == 0):
            state = "failed"
            error = f"timed out after {self._timeout:g} s" + (" while promoting its model" if claimed else "")
        elif code == 0:
            state, error = "succeeded", None
        elif code == SKIPPED_EXIT_CODE:
            state, error, detail = "skipped", None, _last_line(log_path, self._launcher.name)
        else:
            state = "failed"
            error = f"training exited with code {code}: {_last_line(log_path, self._launcher.name)}"
        if error:
            log.error(error)
        # Swap in the new model before /health says "succeeded", so a client seeing that state gets the new model.
        if self._on_finish is not None and state != "skipped":
            try:
                self._on_finish(state == "succeeded")
            except Exception:  # the runner must outlive a failing callback
                log.exception("after-training step failed")
        with self._lock:
            self._process, self._token = None, None
            self._finish_locked(state, error, log_path, detail)
            self._publish_locked()
            self._release_job_lock()
            # Only after the release: a request that found the lock taken left the marker before trying again.
            follow_up = None if self._closed else self._take_any_follow_up()
        token.unlink(missing_ok=True)
        self._ended.set()
        if follow_up is not None:
            self.submit("labels changed during the last run", follow_up[0])

    def _terminate(self, process: Job) -> int | None:
        """SIGTERM the job's process group, SIGKILL it after the grace period; the exit code."""
        _signal_group(process.pid, signal.SIGTERM)
        code = _wait_for(process, self._kill_grace)
        if code is None:
            _signal_group(process.pid, signal.SIGKILL)
            code = _wait_for(process, None)
        return code

    def _finish_locked(self, state: str, error: str | None, log_path: Path | None, detail: str | None = None) -> None:
        """Publish a job's end in our status."""
        self.status.state = state
        self.status.finished_at = time.time()
        self.status.error = error
        self.status.detail = detail
        if state == "failed":  # the annotations it was to learn from are still new
            name = _follow_up_name(self.status.project)
            self._new[name] = self._new.get(name, 0) + self._consumed
            self.status.new_annotations = sum(self._new.values())
        self._consumed = 0
        self.status.history.append(
            {
                "state": state,
                "reason": self.status.reason,
                "error": error,
                "detail": detail,
                "log": str(log_path) if log_path else None,
            }
        )

    def _acquire_job_lock(self) -> bool:
        """Take the models folder's job lock without waiting; False when another runner holds it."""
        self._models_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self._models_dir / LOCK_FILE, "a")  # noqa: SIM115 (held open while the job runs)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        except OSError:
            handle.close()
            raise
        self._lock_handle = handle
        return True

    def _release_job_lock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the descriptor releases the flock
            self._lock_handle = None

    def _ask_follow_up(self, project: str | None) -> None:
        try:
            (self._models_dir / f"{FOLLOW_UP_FILE}.{_follow_up_name(project)}").touch()
        except OSError as error:
            log.warning("could not ask for a follow-up run: %s", error)

    def _take_follow_up(self, project: str | None) -> bool:
        """Whether a follow-up was asked for the project (and clear it): unlink succeeds for one taker only."""
        try:
            (self._models_dir / f"{FOLLOW_UP_FILE}.{_follow_up_name(project)}").unlink()
        except OSError:
            return False
        return True

    def _follow_ups(self) -> list[str]:
        """The projects a follow-up run was asked for, oldest request first."""
        try:
            marks = sorted(self._models_dir.glob(f"{FOLLOW_UP_FILE}.*"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []
        return [mark.name[len(FOLLOW_UP_FILE) + 1 :] for mark in marks]

    def _take_any_follow_up(self) -> tuple[str | None] | None:
        """Take the oldest follow-up request: (its project, None when it named none), or None when there is none."""
        for name in self._follow_ups():
            if self._take_follow_up(name):
                return (None if name == NO_PROJECT else name,)
        return None

    def stop(self) -> None:
        """Stop a running job (SIGTERM to its process group, SIGKILL if it is still there after the grace period),
        never let it promote, and start no more jobs (shutdown)."""
        with self._lock:
            process, token, self._closed = self._process, self._token, True
        if process is not None and process.poll() is None:
            if token is not None:
                claim_job_token(token)  # the backend gives up on it: it must not promote while it dies
            if not _signal_group(process.pid, signal.SIGTERM):
                return
            # Not process.wait(): two threads waiting on one forked job race for its exit code.
            if not self._ended.wait(self._kill_grace):
                _signal_group(process.pid, signal.SIGKILL)
                self._ended.wait(5)


NO_PROJECT = "none"  # the follow-up name of a request that named no project


def _follow_up_name(project: str | None) -> str:
    """A project's name in follow-up file names: its id, only if it is a safe one (a forged id names no path)."""
    value = str(project).split(".")[0].strip() if project is not None else ""
    return value if value.isdigit() or value == "default" else NO_PROJECT


def _wait_for(process: Job, timeout: float | None) -> int | None:
    """The job's exit code, or None if it still runs after `timeout` seconds (None: wait as long as it takes)."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _signal_group(pid: int, sig: int) -> bool:
    """Signal a job's process group; False when it is gone (or not ours)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # a forked job that has not called setsid yet has no group of its own
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
    except PermissionError:
        return False
    return True


def _owner_alive(shared: dict) -> bool:
    """Whether the backend process that wrote a shared status still runs (unknown on another host: yes)."""
    pid = shared.get("backend_pid")
    if shared.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    return pid_alive(pid)


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
