"""The FastAPI app speaking Label Studio's ML backend protocol: `create_app(settings)`."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from annotation_config.errors import WorkbenchError
from annotation_config.schema import Schema, load_schema
from backend.holder import ModelHolder
from backend.jobs import JobRunner, default_launcher
from backend.ladder import Ladder
from backend.metrics import Metrics
from backend.middleware import Guard
from backend.predictor import Predictor
from backend.settings import Settings, origin

log = logging.getLogger("backend")
ROUTES = {"/", "/health", "/setup", "/predict", "/webhook", "/versions", "/metrics"}


@dataclass
class Service:
    """Everything the routes share: settings, schema, the serving model, the job runner, metrics."""

    settings: Settings
    schema: Schema
    jobs: JobRunner
    metrics: Metrics
    versions: Any  # (project id) -> list of that project's registry versions
    projects: dict[str, dict[str, str]] = field(default_factory=dict)  # project id -> LS hostname/token from /setup
    setup_hosts: Any = None  # SetupHosts: which /setup hostnames are kept
    ladder: Any = None  # Ladder: which rung serves each project
    record_lock: threading.Lock = field(default_factory=threading.Lock)
    recorded: int = 0

    def record(self, route: str, body: bytes) -> None:
        """Save a request body for protocol debugging, with secrets redacted."""
        folder = self.settings.record_dir
        if folder is None:
            return
        try:
            payload: Any = json.loads(body)
        except ValueError:
            return
        payload = _redacted(payload)
        with self.record_lock:
            self.recorded += 1
            number = self.recorded
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{number:04d}-{route.strip('/') or 'root'}.json"
        # 0600 from the first byte: request bodies hold annotators' texts and labels
        descriptor = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(payload, indent=1, ensure_ascii=False))


def _redacted(value: Any) -> Any:
    """A copy of a JSON value with every token, password or secret replaced."""
    if isinstance(value, dict):
        return {
            key: "<redacted>" if _is_secret(key) and item is not None else _redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


SECRET_WORDS = ("token", "password", "secret", "api_key", "apikey", "api-key", "authorization", "cookie")


def _is_secret(key: str) -> bool:
    """Whether a body key names a credential: tokens, passwords, secrets, API keys and header-like keys
    (Authorization, Cookie, Set-Cookie)."""
    return any(word in str(key).lower() for word in SECRET_WORDS)


def registry_link(models_dir: Path):
    """The registry functions the backend needs, per project id: the promoted model, and all versions (torch-free)."""
    from training import registry

    def current(project: str) -> tuple[str, Path] | None:
        return registry.current_model(models_dir, project)

    def versions(project: str) -> list[str]:
        return registry.list_versions(models_dir, project)

    return current, versions


def default_predictors(settings: Settings, schema: Schema):
    """Factories for the cold-start predictor and for loading a trained model folder."""

    def cold_start() -> Predictor:
        from backend.cold_start.embedder import served_embedder
        from training.cold_start import ColdStartPredictor

        embedder = served_embedder(settings)
        log.info("cold-start encoder: %s", embedder.describe())
        return ColdStartPredictor(schema, embedder)

    def trained(version: str, folder: Path) -> Predictor:
        from training.predict import TrainedPredictor

        return TrainedPredictor(folder, threads=settings.threads, runtime=settings.trained_runtime)

    return cold_start, trained


def training_command(settings: Settings, service_projects: dict[str, dict[str, str]]):
    """How the job runner starts training: `train` arguments of training's command line for a child process, secrets
    via the environment (a command line is visible to every user in `ps`).

    Jobs talk only to a Label Studio the operator configured: LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY, or a URL
    in WORKBENCH_ALLOWED_LS_URLS that a /setup named, with the token that same /setup gave. The server's own key is
    never paired with a host that a request named (/setup only stores hostnames inside the allow-list).
    """
    import shlex

    def build(project: str | None) -> tuple[list[str], dict[str, str]]:
        argv = ["train", "--quiet", "--models", str(settings.models_dir)]
        argv += ["--keep-versions", str(settings.keep_versions)]
        argv += shlex.split(settings.train_args)
        if settings.schema_path:
            argv += ["--schema", str(settings.schema_path)]
        env: dict[str, str] = {}
        project_id = (project or "").split(".")[0]
        url, key = label_studio_for(settings, service_projects, project_id)
        if url and project_id:
            argv += ["--ls-url", url, "--project", project_id]
        if key:
            env["LABEL_STUDIO_API_KEY"] = key
        return argv, env

    return build


def label_studio_for(
    settings: Settings, service_projects: Mapping[str, Mapping[str, str]], project_id: str
) -> tuple[str | None, str | None]:
    """(URL, token) of the Label Studio that holds a project, for training jobs and the instant learners' start-up.

    The one rule: LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY, unless the project's /setup named another server of
    WORKBENCH_ALLOWED_LS_URLS, which then gets only the token that /setup sent. The server's own key never goes to
    a host that a request named.
    """
    known = service_projects.get(project_id, {})
    if known.get("hostname") and not settings.allows_label_studio(known["hostname"]):
        known = {}  # stored before the allow-list changed, or by mistake: never used
    server_key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None
    configured = settings.label_studio_url
    if known and not (configured and origin(known["hostname"]) == origin(configured)):
        return known["hostname"], known.get("access_token")  # another allowed server: its own token only
    return configured, server_key or known.get("access_token")


def project_loader(settings: Settings, service_projects: Mapping[str, Mapping[str, str]]):
    """Reads a project's tasks with their annotations from the configured Label Studio (None: none configured)."""

    def load(project_id: str) -> list[dict] | None:
        url, key = label_studio_for(settings, service_projects, project_id)
        if not (url and key and project_id.isdigit()):
            return None
        from studio.provision import connect, export_tasks

        return export_tasks(connect(url, key), int(project_id))

    return load


class SetupHosts:
    """What /setup may tell the backend about Label Studio: a hostname is kept only inside the allow-list.

    Label Studio sends its hostname and an access token on every /setup. Anyone who can reach the backend can send
    them too, so a hostname outside LABEL_STUDIO_URL / WORKBENCH_ALLOWED_LS_URLS is answered normally but not used
    (and logged once per hostname), and training jobs never contact it.
    """

    def __init__(self, settings: Settings, projects: dict[str, dict[str, str]]) -> None:
        self._settings = settings
        self._projects = projects
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, project: str | None, hostname: str | None, access_token: str | None) -> bool:
        """Store the project's Label Studio hostname and token when the hostname is allowed; True when stored."""
        if not (project and hostname and access_token):
            return False
        if not self._settings.allows_label_studio(hostname):
            with self._lock:
                first = hostname not in self._warned
                self._warned.add(hostname)
            if first:
                log.warning(
                    "ignoring the Label Studio hostname %r from /setup: it is not LABEL_STUDIO_URL nor in "
                    "WORKBENCH_ALLOWED_LS_URLS, so training jobs will not contact it",
                    hostname,
                )
            return False
        self._projects[project.split(".")[0]] = {"hostname": hostname, "access_token": access_token}
        return True


def create_app(settings: Settings | None = None, *, predictors=None, registry=None) -> FastAPI:
    """Build the app. `predictors` and `registry` override the defaults (cold start + training registry)."""
    settings = settings or Settings()
    problem = settings.exposure_problem()
    if problem:
        raise WorkbenchError(problem)
    if not settings.on_loopback and settings.basic_auth is None:
        log.warning(
            "listening on %s without basic auth (--insecure-no-auth): anyone who reaches it can use it", settings.host
        )
    schema = load_schema(settings.schema_path)
    cold_start_factory, trained = predictors or default_predictors(settings, schema)
    current_model, versions = registry or registry_link(settings.models_dir)
    metrics = Metrics()
    from training.registry import serving_candidates  # torch-free

    shared: list[Predictor] = []

    def cold_start() -> Predictor:  # one cold start for every project's holder
        if not shared:
            shared.append(cold_start_factory())
        return shared[0]

    def holder_for(project: str) -> ModelHolder:
        """The holder of one project's promoted model, watching that project's registry only."""
        # A custom `registry` (tests) has no versions to fall back on; the real one falls back on the best other one.
        fallbacks = None if registry else lambda: serving_candidates(settings.models_dir, project)
        return ModelHolder(cold_start, lambda: current_model(project), trained, schema=schema, fallbacks=fallbacks)

    ladder_box: list[Ladder] = []

    def after_training(ok: bool) -> None:
        metrics.training_jobs.labels(outcome="succeeded" if ok else "failed").inc()
        if ladder_box:
            ladder_box[0].refresh()

    projects: dict[str, dict[str, str]] = {}
    jobs = JobRunner(
        training_command(settings, projects),
        settings.models_dir / "logs",
        on_finish=after_training,
        train_every=settings.train_every,
        launcher=default_launcher(settings.train_warm),
        models_dir=settings.models_dir,
        timeout=settings.train_timeout,
    )
    service = Service(settings, schema, jobs, metrics, versions, projects)
    service.setup_hosts = SetupHosts(settings, projects)
    off = None if settings.instant_learner else "WORKBENCH_INSTANT_LEARNER=false"
    service.ladder = Ladder(
        schema,
        holder_for,
        project_loader(settings, projects),
        disabled_reason=off,
        max_projects=settings.max_projects,
        interval=settings.reload_interval,
    )
    ladder_box.append(service.ladder)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if registry is None:  # the projects with a promoted model serve it from the first request on
            from training.registry import projects as registry_projects

            known = [p for p in registry_projects(settings.models_dir) if p.isdigit() and settings.serves_project(p)]
            for project in known[: settings.max_projects]:
                service.ladder.seen(project)
        service.ladder.start()
        service.jobs.warm_up()
        yield
        service.ladder.stop()
        service.jobs.stop()

    app = FastAPI(
        title="Stance & framing ML backend",
        version="1",
        description="Label Studio ML backend: pre-annotations for every dimension of the label schema.",
        lifespan=lifespan,
    )
    app.state.service = service
    user, password = settings.basic_auth or (None, None)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    app.add_middleware(
        Guard, max_body_bytes=settings.max_body_bytes, user=user, password=password, webhook_secret=secret
    )
    hosts = settings.trusted_hosts()
    if hosts:
        # Against DNS rebinding: a web page's script reaching the backend under its own domain name is refused.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)

    @app.middleware("http")  # added after Guard, so it runs first and also counts 401 and 413 answers
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        try:
            response = await call_next(request)
        except Exception:  # never let a traceback reach the client
            log.exception("unhandled error on %s", route)
            response = JSONResponse({"detail": "internal error; see the backend log"}, status_code=500)
        metrics.requests.labels(route=route, status=str(response.status_code)).inc()
        metrics.latency.labels(route=route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(item.get("loc", [])), "msg": item.get("msg", "invalid"), "type": item.get("type", "invalid")}
            for item in error.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    from backend.routes import router

    app.include_router(router)
    rung = service.ladder.serving(None)
    metrics.serving(rung.predictor.model_version, rung.predictor.kind)
    return app
