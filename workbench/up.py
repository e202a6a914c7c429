"""`workbench up`: Label Studio + the ML backend + the sample project, ready in a browser, in one command."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console

from annotation_config.errors import WorkbenchError
from workbench.services import LabelStudioServer, ServiceError, port_is_free, stop_process_group

console = Console()


@dataclass
class UpOptions:
    """Everything `workbench up` can be told."""

    state_dir: Path
    host: str = "127.0.0.1"
    ls_port: int = 8080
    backend_port: int = 9090
    ls_url: str | None = None
    api_key: str | None = None
    backend_url: str | None = None
    schema: Path | None = None
    tasks: Path | None = None
    title: str | None = None
    insecure_no_auth: bool = False


def _stored_credentials(state_dir: Path) -> dict[str, str]:
    """What credentials.json holds ({} before the first run)."""
    path = state_dir / "credentials.json"
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise WorkbenchError(f"{path} is not valid JSON: fix or delete it (a new login is then generated)") from None
    if not isinstance(stored, dict):
        raise WorkbenchError(f"{path} is not a JSON object: fix or delete it (a new login is then generated)")
    return stored


def _save_credentials(state_dir: Path, updates: dict[str, str]) -> dict[str, str]:
    """Merge `updates` into credentials.json (mode 0600 from the first byte, replaced atomically); the result."""
    path = state_dir / "credentials.json"
    stored = _stored_credentials(state_dir)
    merged = {**stored, **updates}
    if merged != stored:
        state_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(merged, handle, indent=1)
        os.replace(temporary, path)
    os.chmod(path, 0o600)
    return merged


def load_credentials(state_dir: Path) -> dict[str, str]:
    """The local admin login and API token: from the environment, else generated once and kept (mode 0600).
    `password_created` is "yes" on the run that generated the password (the only run that prints it)."""
    stored = _stored_credentials(state_dir)
    password = os.environ.get("LABEL_STUDIO_PASSWORD") or stored.get("password")
    credentials = {
        "username": os.environ.get("LABEL_STUDIO_USERNAME") or stored.get("username") or "admin@localhost.local",
        "password": password or secrets.token_urlsafe(12),
        "token": os.environ.get("LABEL_STUDIO_USER_TOKEN") or stored.get("token") or secrets.token_hex(20),
    }
    _save_credentials(state_dir, credentials)
    return {**credentials, "password_created": "" if password else "yes"}


def load_webhook_secret(state_dir: Path) -> str:
    """WORKBENCH_WEBHOOK_SECRET, else the one kept in credentials.json, else a new one saved there."""
    secret = os.environ.get("WORKBENCH_WEBHOOK_SECRET") or _stored_credentials(state_dir).get("webhook_secret")
    if not secret:
        secret = secrets.token_urlsafe(32)
        _save_credentials(state_dir, {"webhook_secret": secret})
    return secret


def backend_allowed_hosts(settings: Any, backend_url: str | None) -> list[str]:
    """WORKBENCH_ALLOWED_HOSTS plus the host name in --backend-url (Label Studio sends that Host header)."""
    hosts = list(settings.allowed_hosts)
    name = urlsplit(backend_url).hostname if backend_url else None
    if name and name not in hosts:
        hosts.append(name)
    return hosts


def both_on_loopback(options: UpOptions) -> bool:
    """Whether Label Studio and the backend both listen on loopback (only then may SSRF protection go off)."""
    from backend.settings import is_loopback

    backend_host = urlsplit(options.backend_url).hostname if options.backend_url else options.host
    return is_loopback(options.host) and is_loopback(backend_host or "")


def start_backend(options: UpOptions, env: dict[str, str]) -> subprocess.Popen:
    """Start `workbench serve` as a child process group and return it (health is checked by the caller)."""
    if not port_is_free(options.host, options.backend_port):
        raise ServiceError(f"port {options.backend_port} is in use: stop what listens there or pass --backend-port")
    log_path = options.state_dir / "backend.log"
    argv = [sys.executable, "-m", "workbench", "serve", "--host", options.host, "--port", str(options.backend_port)]
    argv += ["--models", str(options.state_dir / "models")]
    if options.insecure_no_auth:
        argv.append("--insecure-no-auth")
    if options.schema:
        argv += ["--schema", str(options.schema)]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def wait_for(url: str, process: subprocess.Popen | None, name: str, log: Path, timeout: float = 180) -> None:
    """Poll a health URL until it answers 200; fail with one line if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{name} exited with code {process.returncode} during start-up; see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServiceError(f"{name} did not answer {url} within {timeout:.0f} s; see {log}")


def run_up(options: UpOptions) -> None:
    """Start everything, provision and pre-annotate the sample project, then wait for Ctrl-C."""
    from annotation_config.schema import load_schema
    from studio.provision import DEFAULT_TASKS_PATH, read_tasks

    options.state_dir.mkdir(parents=True, exist_ok=True)
    schema = load_schema(options.schema)
    tasks = read_tasks(options.tasks or DEFAULT_TASKS_PATH, schema)
    studio: LabelStudioServer | None = None
    backend: subprocess.Popen | None = None
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C stops both servers even when started from a shell that ignores SIGINT in background jobs (a
    # non-interactive `cmd &`): Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, on_signal)
    try:
        with console.status("starting Label Studio…") as status:
            studio, ls_url, api_key, login = _label_studio(options)
            if studio is not None:
                if not port_is_free(options.host, options.ls_port):
                    raise ServiceError(f"port {options.ls_port} is in use: stop what listens there or pass --ls-port")
                status.update("starting Label Studio (about 40 s on first start)…")
                studio.start()
            console.print(f"[green]✓[/] Label Studio at {ls_url}")

            status.update("starting the ML backend…")
            from backend.settings import Settings

            secret = load_webhook_secret(options.state_dir)
            env = {**os.environ, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": api_key}
            env["WORKBENCH_WEBHOOK_SECRET"] = secret
            hosts = backend_allowed_hosts(Settings(), options.backend_url)
            if hosts:
                env["WORKBENCH_ALLOWED_HOSTS"] = ",".join(hosts)
            backend = start_backend(options, env)
            backend_url = options.backend_url or f"http://{options.host}:{options.backend_port}"
            wait_for(f"{backend_url}/health", backend, "the ML backend", options.state_dir / "backend.log")
            console.print(f"[green]✓[/] ML backend at {backend_url}")
            url = _provision_and_preannotate(options, status, schema, tasks, ls_url, api_key, backend_url, secret)

        console.print(f"\n[bold]ready:[/] {url}")
        if login and login["password_created"]:  # shown once, on the run that made it
            console.print(
                f"log in as {login['username']} / {login['password']} (saved in {options.state_dir}/credentials.json)"
            )
        elif login:
            console.print(f"log in as {login['username']} (password in {options.state_dir}/credentials.json)")
        console.print("label in the browser; retrain with `workbench train`; Ctrl-C stops both servers")
        _watch(studio, backend)
    except KeyboardInterrupt:
        stopping = True
    finally:
        if backend is not None:
            stop_process_group(backend)
        if studio is not None:
            studio.stop()
        if stopping:
            console.print("stopped Label Studio and the ML backend")


def _label_studio(options: UpOptions) -> tuple[LabelStudioServer | None, str, str, dict | None]:
    """(server to start or None, URL, API key, login to show): the Label Studio at --ls-url, else a local one."""
    if options.ls_url:
        return None, options.ls_url.rstrip("/"), options.api_key or os.environ.get("LABEL_STUDIO_API_KEY") or "", None
    credentials = load_credentials(options.state_dir)
    local_only = both_on_loopback(options)
    if not local_only:
        console.print(
            "[yellow]note:[/] the servers are not both on loopback, so Label Studio keeps its SSRF "
            "protection: it refuses an ML backend on a private address (README, Security)"
        )
    studio = LabelStudioServer(
        data_dir=options.state_dir / "label-studio",
        port=options.ls_port,
        host=options.host,
        username=credentials["username"],
        password=credentials["password"],
        token=credentials["token"],
        log_path=options.state_dir / "label-studio.log",
        allow_local_backends=local_only,
    )
    return studio, studio.url, credentials["token"], credentials


def _provision_and_preannotate(
    options: UpOptions,
    status: Any,
    schema: Any,
    tasks: list[dict],
    ls_url: str,
    api_key: str,
    backend_url: str,
    webhook_secret: str | None = None,
) -> str:
    """Create or update the project, connect the backend and ask for predictions of every task; the project URL."""
    from backend.settings import Settings
    from studio.provision import connect, connect_backend, provision, request_predictions

    status.update("provisioning the project…")
    client = connect(ls_url, api_key)
    result = provision(client, schema, tasks, options.title or schema.name, ls_url)
    console.print(
        f"[green]✓[/] project {result.project_id}: {result.imported} tasks imported, {result.skipped} already there"
    )
    status.update("connecting the backend and pre-annotating every task…")
    basic_auth = Settings().basic_auth
    connect_backend(client, result.project_id, backend_url, basic_auth=basic_auth, webhook_secret=webhook_secret)
    request_predictions(client, result.project_id)
    console.print(f"[green]✓[/] predictions requested for {len(tasks)} tasks")
    return result.url


def _watch(studio: LabelStudioServer | None, backend: subprocess.Popen) -> None:
    """Wait until Ctrl-C (KeyboardInterrupt); a server that exits on its own is a ServiceError."""
    while True:
        time.sleep(1)
        if studio is not None and studio.process is not None and studio.process.poll() is not None:
            raise ServiceError(f"Label Studio exited unexpectedly (code {studio.process.returncode}); see its log")
        if backend.poll() is not None:
            raise ServiceError(f"the ML backend exited unexpectedly (code {backend.returncode}); see backend.log")
