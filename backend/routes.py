"""The routes of Label Studio's ML backend protocol: /health, /setup, /predict, /webhook, /versions, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from annotation_config.label_config import config_differences
from backend.protocol import (
    KNOWN_EVENTS,
    TRAINING_EVENTS,
    ErrorResponse,
    Health,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    Versions,
    WebhookEvent,
    WebhookResponse,
)

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Basic auth is configured and the credentials are wrong."},
    403: {"model": ErrorResponse, "description": "The project is not one this backend serves (WORKBENCH_PROJECTS)."},
    413: {"model": ErrorResponse, "description": "The body, the task count or a text is over its limit."},
    422: {"model": ErrorResponse, "description": "The body does not fit the protocol or the label schema."},
}


def _service(request: Request):
    return request.app.state.service


def _error(status: int, loc: list[str | int], msg: str, kind: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": loc, "msg": msg, "type": kind}]}, status_code=status)


def _not_served(service, project: str | None, loc: list[str | int]) -> JSONResponse | None:
    """403 for a project outside WORKBENCH_PROJECTS (None when it is served): it starts and changes nothing."""
    if service.settings.serves_project(project):
        return None
    listed = ",".join(service.settings.projects)
    message = f"project {project!r} is not served by this backend (WORKBENCH_PROJECTS={listed})"
    return _error(403, loc, message, "project_not_served")


async def _record(request: Request, route: str) -> None:
    service = _service(request)
    if service.settings.record_dir is not None:
        service.record(route, await request.body())


@router.get("/health", response_model=Health)
@router.get("/", response_model=Health, include_in_schema=False)
def health(request: Request, project: str | None = None) -> Any:
    """Liveness plus what serves `project` (default: the only project seen so far, else requests naming none): the
    model version, its rung of the ladder and why, per project the instant learner, the promoted model and the
    rungs' running scores on recent annotations, and the training job status.

    With basic auth on, a caller without credentials gets only what Label Studio needs (status, model version):
    job details, log paths and errors are for the operator.
    """
    service = _service(request)
    rung = service.ladder.serving(project)
    current = rung.predictor
    if not getattr(request.state, "authorized", True):
        return JSONResponse({"status": "UP", "model_version": current.model_version})
    return Health(
        status="UP",
        model_version=current.model_version,
        model_kind=current.kind,
        model_runtime=getattr(current, "runtime_description", None),
        rung=rung.name,
        rung_reason=rung.reason,
        instant=service.ladder.snapshot(),
        schema_hash=service.schema.hash,
        training=service.jobs.snapshot(),
        last_reload_error=service.ladder.holder(project).last_error,
    )


@router.post("/setup", response_model=SetupResponse, responses=ERRORS)
async def setup(body: SetupRequest, request: Request) -> Any:
    """Check the project's labeling config fits the schema; answer the model version Label Studio will store."""
    await _record(request, "/setup")
    service = _service(request)
    refused = _not_served(service, body.project, ["body", "project"])
    if refused is not None:
        return refused
    if body.schema_:
        problems = config_differences(body.schema_, service.schema)
        if problems:
            message = f"the project's labeling config does not fit schema {service.schema.name!r}: " + "; ".join(
                problems
            )
            return _error(422, ["body", "schema"], message, "schema_mismatch")
    service.setup_hosts.remember(body.project, body.hostname, body.access_token)
    service.ladder.seen(body.project)  # first time: the project's stored annotations teach its instant learner
    # Label Studio skips tasks holding a prediction of this version: a new instant fit gives a new one.
    return SetupResponse(model_version=service.ladder.serving(body.project).predictor.model_version)


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
def predict(body: PredictRequest, request: Request) -> Any:
    """Exactly one prediction per task, in task order, covering every dimension of the schema."""
    service = _service(request)
    if service.settings.record_dir is not None:
        service.record("/predict", body.model_dump_json(by_alias=True).encode())
    settings, schema = service.settings, service.schema
    refused = _not_served(service, body.project, ["body", "project"])
    if refused is not None:
        return refused
    if not body.tasks:
        return _error(422, ["body", "tasks"], "no tasks: send at least one", "empty")
    problem = _task_problem(service, [task.data for task in body.tasks], ["body", "tasks"])
    if problem is not None:
        return problem
    service.ladder.seen(body.project)
    # One model for the whole request, even if a new one is fitted or promoted meanwhile.
    predictor = service.ladder.serving(body.project).predictor
    datas = [task.data for task in body.tasks]
    predictions = predictor.predict(datas)
    results = [
        p.to_label_studio(schema, data, predictor.model_version, max_spans=settings.max_spans)
        for p, data in zip(predictions, datas, strict=True)
    ]
    _count(service, predictions)
    return {"results": results, "model_version": predictor.model_version}


def _count(service, predictions) -> None:
    metrics = service.metrics
    metrics.tasks.inc(len(predictions))
    for prediction in predictions:
        for name, value in prediction.labels.items():
            if isinstance(value, str):
                metrics.predictions.labels(dimension=name, label=value).inc()
            else:
                for item in value:
                    label = item["label"] if isinstance(item, dict) else item
                    metrics.predictions.labels(dimension=name, label=label).inc()


def _task_problem(service, datas: list[Any], where: list[str | int], required: bool = True) -> JSONResponse | None:
    """The limits on tasks, for /predict and /webhook alike: at most WORKBENCH_MAX_TASKS tasks, and every text field
    of the schema a string of at most WORKBENCH_MAX_TEXT_CHARS (413 above a limit, 422 for a wrong type; `required`:
    a missing field is a 422 too). None when the tasks are within the limits."""
    settings, schema = service.settings, service.schema
    if len(datas) > settings.max_tasks:
        message = f"{len(datas)} tasks in one request; the limit is {settings.max_tasks} (WORKBENCH_MAX_TASKS)"
        return _error(413, where, message, "too_many")
    needed = list(dict.fromkeys([schema.data.text, *(d.field for d in schema.dimensions if d.field)]))
    for index, data in enumerate(datas):
        for name in needed:
            value = data.get(name) if isinstance(data, dict) else None
            loc: list[str | int] = [*where, index, "data", name]
            if value is None:
                if not required:
                    continue
                return _error(422, loc, f"task {index} has no field {name!r}", "missing")
            if not isinstance(value, str):
                return _error(422, loc, f"task {index}: {name!r} must be a string, not {type(value).__name__}", "type")
            if len(value) > settings.max_text_chars:
                message = (
                    f"task {index}: {name!r} has {len(value)} characters; the limit is {settings.max_text_chars} "
                    "(WORKBENCH_MAX_TEXT_CHARS)"
                )
                return _error(413, loc, message, "too_long")
    return None


@router.post("/webhook", response_model=WebhookResponse, responses=ERRORS)
async def webhook(event: WebhookEvent, request: Request) -> Any:
    """Any Label Studio event; answers at once (Label Studio waits 1 s) and hands training to the job runner."""
    service = _service(request)
    await _record(request, "/webhook")
    if event.action not in KNOWN_EVENTS:
        message = f"unknown event {event.action!r}; expected one of {sorted(KNOWN_EVENTS)}"
        return _error(422, ["body", "action"], message, "unknown_event")
    tasks = event.task if isinstance(event.task, list) else [event.task] if event.task is not None else []
    problem = _task_problem(service, [task.get("data") for task in tasks], ["body", "task"], required=False)
    if problem is not None:
        return problem
    # Training on demand is an operator action: with basic auth on it needs the credentials (the webhook secret
    # alone will not do), and a `force` (not sent by Label Studio: for scripts) counts only with them.
    operator = getattr(request.state, "operator", False)
    if event.action == "START_TRAINING" and service.settings.basic_auth and not operator:
        message = "START_TRAINING needs the basic-auth credentials (an operator action)"
        return _error(401, ["header", "authorization"], message, "unauthorized")
    service.metrics.webhooks.labels(action=event.action).inc()
    project = _project_id(event)
    refused = _not_served(service, project, ["body", "project", "id"])
    if refused is not None:
        return refused
    if event.action == "START_TRAINING":
        force = operator and bool((event.model_extra or {}).get("force"))
        status = service.jobs.submit("START_TRAINING", project, force=force)
    elif event.action in TRAINING_EVENTS:
        service.ladder.apply(project, event.model_dump())  # fast: the refit runs in the learner's own thread
        status = service.jobs.annotation_changed(project)
    else:
        status = "ignored"
    return WebhookResponse(status=status, action=event.action, job=service.jobs.snapshot())


def _project_id(event: WebhookEvent) -> str | None:
    project = event.project or {}
    value = project.get("id") if isinstance(project, dict) else None
    return str(value) if value is not None else None


@router.get("/versions", response_model=Versions)
def versions(request: Request, project: str | None = None) -> Versions:
    """The model versions available to `project` (default: the only project seen so far): the cold start, the
    instant learners' and every trained model in that project's registry; which one serves, on which rung and why."""
    service = _service(request)
    cold_start = f"cold-start-{service.schema.hash}"
    rung = service.ladder.serving(project)
    served = service.ladder.project_of(project)
    try:
        trained = service.versions(served)
    except Exception:
        trained = []
    return Versions(
        versions=[cold_start, *service.ladder.versions(project), *trained],
        current=rung.predictor.model_version,
        rung=rung.name,
        rung_reason=rung.reason,
    )


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text: requests, latency, model version, predictions by dimension and label, training jobs."""
    service = _service(request)
    current = service.ladder.serving(None).predictor
    service.metrics.serving(current.model_version, current.kind)
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
