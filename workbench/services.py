"""Start, watch and stop the local Label Studio server (its own virtual environment, embedded SQLite)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from annotation_config.errors import WorkbenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
LS_VERSION = "1.23.2"


class ServiceError(WorkbenchError):
    """A local service could not be started or died."""


def find_label_studio() -> Path:
    """The `label-studio` executable: $WORKBENCH_LABEL_STUDIO_BIN, the repo's .venv-ls, or PATH."""
    candidates = [os.environ.get("WORKBENCH_LABEL_STUDIO_BIN"), REPO_ROOT / ".venv-ls" / "bin" / "label-studio"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise ServiceError(
        f"Label Studio is not installed: run `make install` (it puts label-studio=={LS_VERSION} in .venv-ls) "
        "or set WORKBENCH_LABEL_STUDIO_BIN"
    )


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def label_studio_env(
    data_dir: Path, username: str, password: str, token: str, allow_local_backends: bool = False
) -> dict[str, str]:
    """Environment for a headless local Label Studio: admin user + legacy token; local ML backends allowed only
    when asked (both servers on loopback), otherwise Label Studio's SSRF protection stays as configured."""
    env = dict(os.environ)
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            # Legacy tokens must be enabled when the first organisation is created (LS >= 1.23).
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "DJANGO_DB": env.get("DJANGO_DB", "sqlite"),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        }
    )
    # LS 1.23.2 scores a task's "Prediction score" only over predictions whose model_version equals the project's,
    # which `ml.create` sets to the backend's title: the "least certain first" tab would sort nothing
    # (label-studio#7151). This flag makes it use the ML backend's current version instead.
    env.setdefault("ff_front_dev_1682_model_version_dropdown_070622_short", "true")
    if allow_local_backends:
        # LS >= 1.23.1 refuses ML backends and webhooks on local addresses unless both are off.
        # Only for a setup where nothing but this machine reaches either server (README, Security).
        env.update({"SSRF_PROTECTION_ENABLED": "false", "ML_BLOCK_LOCAL_IP": "false"})
    env.pop("LABEL_STUDIO_API_KEY", None)
    return env


@dataclass
class LabelStudioServer:
    """A Label Studio child process on its own data folder."""

    data_dir: Path
    port: int
    username: str
    password: str
    token: str
    host: str = "127.0.0.1"
    log_path: Path | None = None
    allow_local_backends: bool = False  # turn SSRF protection off: only when both servers are on loopback
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until /health answers (about 40 s on 2 cores)."""
        executable = find_label_studio()
        if not port_is_free(self.host, self.port):
            raise ServiceError(f"port {self.port} is in use: stop what listens there or choose another port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.data_dir / "label-studio.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--host", self.host, "--port", str(self.port)],
            env=label_studio_env(self.data_dir, self.username, self.password, self.token, self.allow_local_backends),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it in order
        )
        self.wait_healthy(timeout, log_path)

    def wait_healthy(self, timeout: float, log_path: Path) -> None:
        """Poll /health until it answers, the process dies, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
                raise ServiceError(
                    f"Label Studio exited with code {self.process.returncode} during start-up "
                    f"({tail[0] if tail else 'no output'}); see {log_path}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise ServiceError(f"Label Studio did not become healthy within {timeout:.0f} s; see {log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        stop_process_group(process, timeout)


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminate a child started with start_new_session=True, with everything it spawned."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        if sys.platform != "win32":
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


class ServerThread:
    """An ASGI app on a real uvicorn port of 127.0.0.1, in a thread of this process (tests and benchmarks)."""

    def __init__(self, app: object, timeout: float = 120.0) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ServiceError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
