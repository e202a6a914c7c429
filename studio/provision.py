"""Create or update the Label Studio project for a schema and import its tasks, through label-studio-sdk."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from annotation_config.errors import WorkbenchError
from annotation_config.jsonl import jsonl_lines
from annotation_config.label_config import render_label_config
from annotation_config.schema import Schema

DEFAULT_TASKS_PATH = Path(__file__).resolve().parents[1] / "data" / "sample_tasks.jsonl"
IMPORT_BATCH = 500
# Label Studio down, slow (no answer within LS_TIMEOUT seconds) or answering 5xx: the connection check and the
# export get LS_ATTEMPTS tries, waiting LS_BACKOFF, 2x, 4x ... seconds in between, then one LabelStudioError.
LS_TIMEOUT = 60.0
LS_ATTEMPTS = 4
LS_BACKOFF = 1.0
# The header Label Studio's webhook to the backend carries WORKBENCH_WEBHOOK_SECRET in (see connect_backend).
WEBHOOK_SECRET_HEADER = "X-Workbench-Webhook-Secret"

T = TypeVar("T")


class LabelStudioError(WorkbenchError):
    """Label Studio could not be reached or refused a request."""


class TaskFileError(WorkbenchError):
    """A task file that cannot be imported; the message names the line."""


@dataclass(frozen=True)
class ProvisionResult:
    """What provisioning did."""

    project_id: int
    url: str
    created: bool
    config_updated: bool
    imported: int
    skipped: int
    view_id: int | None = None  # the "Least certain first" Data Manager tab


def connect(ls_url: str, api_key: str) -> Any:
    """A label-studio-sdk client, checked with one request so a wrong URL or key fails here with one line."""
    from label_studio_sdk import LabelStudio

    if not ls_url.startswith(("http://", "https://")):
        raise LabelStudioError(f"--ls-url {ls_url!r} must start with http:// or https://")
    if not api_key:
        raise LabelStudioError("no Label Studio API key: pass --api-key or set LABEL_STUDIO_API_KEY")
    client = LabelStudio(base_url=ls_url.rstrip("/"), api_key=api_key, timeout=LS_TIMEOUT)
    no_sdk_retries: Any = {"max_retries": 0}  # `retried` does the retrying, with the same policy as the export
    retried(lambda: client.users.whoami(request_options=no_sdk_retries), f"connect to Label Studio at {ls_url}")
    return client


def call(request: Callable[[], T], doing: str) -> T:
    """Run one SDK request, turning connection and HTTP errors into a one-line LabelStudioError."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        return request()
    except ApiError as error:
        if error.status_code in (401, 403):
            raise LabelStudioError(
                f"could not {doing}: Label Studio rejected the API key ({error.status_code}); "
                "use the token from Account & Settings"
            ) from None
        detail = error.body if isinstance(error.body, str) else json.dumps(error.body)[:300]
        raise LabelStudioError(f"could not {doing}: HTTP {error.status_code}: {detail}") from None
    except httpx.HTTPError as error:
        raise LabelStudioError(
            f"could not {doing}: {type(error).__name__}: {error}; is Label Studio running?"
        ) from None


def retried(request: Callable[[], T], doing: str, attempts: int | None = None, backoff: float | None = None) -> T:
    """`call(request, doing)`, tried again with backoff while Label Studio is down, slow or failing (not on 4xx)."""
    import time

    attempts = attempts or LS_ATTEMPTS
    backoff = LS_BACKOFF if backoff is None else backoff
    for attempt in range(1, attempts + 1):
        try:
            return call(request, doing)
        except LabelStudioError as error:
            retriable = "HTTP 4" not in str(error) and "rejected the API key" not in str(error)
            if attempt == attempts or not retriable:
                raise LabelStudioError(f"{error} (after {attempt} attempt{'s' if attempt > 1 else ''})") from None
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def read_tasks(path: str | Path, schema: Schema) -> list[dict]:
    """Read a JSON-lines task file, checking every line has the key and text fields of the schema."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(
            f"{path}: no such task file; build it with `workbench data build` or pass --tasks"
        ) from None
    except UnicodeDecodeError as error:
        raise TaskFileError(f"{path}: not UTF-8 ({error.reason} at byte {error.start})") from None
    tasks: list[dict] = []
    keys: set[str] = set()
    for number, line in jsonl_lines(text):
        try:
            task = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskFileError(f"{path}:{number}: invalid JSON ({error.msg})") from None
        if not isinstance(task, dict):
            raise TaskFileError(f"{path}:{number}: expected a JSON object per line")
        for field in (schema.data.key, schema.data.text):
            if not isinstance(task.get(field), str) or not task[field]:
                raise TaskFileError(f"{path}:{number}: field {field!r} is missing or not a non-empty string")
        if task[schema.data.key] in keys:
            raise TaskFileError(f"{path}:{number}: duplicate task key {task[schema.data.key]!r}")
        keys.add(task[schema.data.key])
        tasks.append(task)
    return tasks


def task_data(task: dict, schema: Schema) -> dict:
    """The `data` of a Label Studio task: every field kept, shown fields never null (the Text tag needs a string)."""
    data = dict(task)
    for field in schema.data.shown_fields:
        if data.get(field) is None:
            data[field] = ""
        elif not isinstance(data[field], str):
            data[field] = str(data[field])
        data[field] = data[field].replace("\r\n", "\n")  # Label Studio counts \r\n as two characters
    return data


def find_project(client: Any, title: str) -> Any | None:
    """The project with exactly this title, or None."""
    for project in call(lambda: list(client.projects.list(title=title)), "list projects"):
        if project.title == title:
            return project
    return None


def existing_keys(client: Any, project_id: int, key_field: str) -> set[str]:
    """Task keys already in a project."""
    tasks = call(lambda: list(client.tasks.list(project=project_id, fields="task_only", page_size=500)), "list tasks")
    return {str(task.data.get(key_field)) for task in tasks if task.data and task.data.get(key_field) is not None}


def _batches(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def provision(client: Any, schema: Schema, tasks: list[dict], title: str, ls_url: str) -> ProvisionResult:
    """Create the project (or reuse the one with this title), update its config if needed, import new tasks."""
    config = render_label_config(schema)
    project = find_project(client, title)
    created = project is None
    config_updated = False
    settings = {
        "label_config": config,
        "description": schema.description,
        "expert_instruction": _instructions_html(schema),
        "show_instruction": True,
    }
    if project is None:
        project = call(lambda: client.projects.create(title=title, **settings), f"create project {title!r}")
    elif (project.label_config or "").strip() != config.strip():  # Label Studio strips the final newline
        project = call(lambda: client.projects.update(id=project.id, **settings), f"update project {title!r}")
        config_updated = True
    have = existing_keys(client, project.id, schema.data.key)
    new = [task for task in tasks if str(task[schema.data.key]) not in have]
    for batch in _batches(new, IMPORT_BATCH):
        payload = [{"data": task_data(task, schema)} for task in batch]
        call(lambda p=payload: client.projects.import_tasks(id=project.id, request=p), "import tasks")
    data_fields = {field for task in tasks for field in task}
    view_id = ensure_uncertainty_view(client, project.id, schema, data_fields)
    return ProvisionResult(
        project_id=project.id,
        url=f"{ls_url.rstrip('/')}/projects/{project.id}/data",
        created=created,
        config_updated=config_updated,
        imported=len(new),
        skipped=len(tasks) - len(new),
        view_id=view_id,
    )


# The Data Manager tab `provision` sets up: tasks ordered by prediction score ascending, so the least certain
# suggestions (training.uncertainty's task score) come first; tasks without a prediction sort last (NULLS LAST).
UNCERTAINTY_VIEW_TITLE = "Least certain first"
SCORE_COLUMN = "tasks:predictions_score"
# Label Studio 1.23's built-in task columns (data_manager/functions.py get_all_columns), as the Data Manager names
# them in a tab's hiddenColumns. Ids a server does not know are dropped by the Data Manager when it loads the tab.
TASK_COLUMNS = (
    "tasks:id",
    "tasks:inner_id",
    "tasks:completed_at",
    "tasks:total_annotations",
    "tasks:cancelled_annotations",
    "tasks:total_predictions",
    "tasks:annotators",
    "tasks:annotations_results",
    "tasks:annotations_ids",
    SCORE_COLUMN,
    "tasks:predictions_model_versions",
    "tasks:predictions_results",
    "tasks:file_upload",
    "tasks:storage_filename",
    "tasks:created_at",
    "tasks:updated_at",
    "tasks:updated_by",
    "tasks:avg_lead_time",
    "tasks:draft_exists",
)


def uncertainty_view_columns(schema: Schema) -> dict[str, set[str]]:
    """The columns the tab shows, per Data Manager mode: the labelled text, the counts and the prediction score."""
    fields = {schema.data.text, *(dim.field or schema.data.text for dim in schema.dimensions)}  # what is labelled
    texts = {f"tasks:data.{field}" for field in fields}
    return {
        "explore": {"tasks:id", *texts, "tasks:total_annotations", "tasks:total_predictions", SCORE_COLUMN},
        "labeling": {*texts, "tasks:total_annotations", SCORE_COLUMN},  # the narrow task list beside the editor
    }


def uncertainty_view_data(schema: Schema, data_fields: Iterable[str] = ()) -> dict[str, Any]:
    """The tab's `data`, in the shape Label Studio's Data Manager saves a tab (title, ordering, hiddenColumns ...)."""
    shown = uncertainty_view_columns(schema)
    every = [*TASK_COLUMNS, *(f"tasks:data.{field}" for field in sorted({*schema.data.all_fields, *data_fields}))]
    return {
        "title": UNCERTAINTY_VIEW_TITLE,
        "type": "list",
        "target": "tasks",
        "ordering": [SCORE_COLUMN],  # ascending; "-tasks:predictions_score" would be descending
        "filters": {"conjunction": "and", "items": []},
        "hiddenColumns": {mode: [c for c in every if c not in visible] for mode, visible in shown.items()},
    }


def ensure_uncertainty_view(client: Any, project_id: int, schema: Schema, data_fields: Iterable[str] = ()) -> int:
    """Create the "Least certain first" tab, or fix up the one with that title; returns its id (never duplicates).

    An existing tab keeps what annotators changed (widths, filters, extra columns); only the ordering and the
    columns this tab is for (text, counts, score) are put back.
    """
    wanted = uncertainty_view_data(schema, data_fields)
    views = call(lambda: list(client.views.list(project=project_id)), "list Data Manager tabs")
    existing = next((v for v in views if (v.data or {}).get("title") == UNCERTAINTY_VIEW_TITLE), None)
    if existing is None:
        view = call(lambda: client.views.create(project=project_id, data=wanted), "create the Data Manager tab")
        return int(view.id)
    # filters live in their own table and selectedItems in their own field: leave both out so they stay as they are
    data = {k: v for k, v in (existing.data or {}).items() if k not in ("filters", "selectedItems")}
    shown = uncertainty_view_columns(schema)
    hidden = data.get("hiddenColumns") or wanted["hiddenColumns"]
    fixed = {
        **data,
        "ordering": wanted["ordering"],
        "hiddenColumns": {mode: [c for c in hidden.get(mode, []) if c not in shown[mode]] for mode in shown},
    }
    if fixed != data:
        call(
            lambda: client.views.update(id=str(existing.id), project=project_id, data=fixed),
            "update the Data Manager tab",
        )
    return int(existing.id)


def _instructions_html(schema: Schema) -> str:
    """Annotator instructions for Label Studio's instruction panel: the schema text plus every definition."""
    from html import escape

    parts = [f"<p>{escape(line)}</p>" for line in schema.instructions.strip().splitlines() if line.strip()]
    for dim in schema.dimensions:
        parts.append(f"<h4>{escape(dim.title or dim.name)}</h4><ul>")
        parts += [f"<li><b>{escape(label.value)}</b>: {escape(label.definition)}</li>" for label in dim.labels]
        parts.append("</ul>")
    return "\n".join(parts)


def connect_backend(
    client: Any,
    project_id: int,
    url: str,
    title: str = "stance-workbench",
    basic_auth: tuple[str, str] | None = None,
    webhook_secret: str | None = None,
) -> int:
    """Connect the ML backend at `url` to the project (reusing an existing connection); returns its id.

    Label Studio calls the backend's /health and /setup here, so a backend that is down or whose schema does not
    fit the project's config fails now, with the backend's own message. Its annotation events go through the
    project webhook to `url`/webhook that Label Studio creates with the connection; that webhook gets the
    `webhook_secret` header (see `ensure_backend_webhook`).
    """
    existing = call(lambda: list(client.ml.list(project=project_id)), "list ML backends")
    backend_id = next((b.id for b in existing if b.url.rstrip("/") == url.rstrip("/")), None)
    if backend_id is None:
        auth: dict[str, Any] = {}
        if basic_auth:
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
        backend = call(
            lambda: client.ml.create(project=project_id, url=url, title=title, is_interactive=False, **auth),
            f"connect the ML backend at {url}",
        )
        backend_id = backend.id
    ensure_backend_webhook(client, project_id, url, webhook_secret, basic_auth)
    return backend_id


def webhook_headers(webhook_secret: str | None, basic_auth: tuple[str, str] | None = None) -> dict[str, str]:
    """The headers Label Studio's webhook sends the backend: the webhook secret, else (basic auth only) the
    credentials, since Label Studio's webhooks, unlike its ML connection, know no basic auth."""
    import base64

    if webhook_secret:
        return {WEBHOOK_SECRET_HEADER: webhook_secret}
    if basic_auth:
        pair = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def ensure_backend_webhook(
    client: Any,
    project_id: int,
    backend_url: str,
    webhook_secret: str | None,
    basic_auth: tuple[str, str] | None = None,
) -> int | None:
    """Give the project's webhook to the backend (`backend_url`/webhook, all events with payload) the headers of
    `webhook_headers`, creating the webhook if it is missing; its id (None: nothing to send, nothing done)."""
    headers = webhook_headers(webhook_secret, basic_auth)
    if not headers:
        return None
    target = backend_url.rstrip("/") + "/webhook"
    hooks = call(lambda: list(client.webhooks.list(project=str(project_id))), "list webhooks")
    hook = next((h for h in hooks if (h.url or "").rstrip("/") == target and h.project == project_id), None)
    if hook is None:
        created = call(
            lambda: client.webhooks.create(
                url=target, project=project_id, headers=headers, send_payload=True, send_for_all_actions=True
            ),
            f"create the webhook to {target}",
        )
        return int(created.id)
    current = dict(hook.headers or {})
    if any(current.get(name) != value for name, value in headers.items()):
        merged = {**current, **headers}  # headers someone added by hand stay
        call(lambda: client.webhooks.update(id=hook.id, headers=merged), f"update the webhook to {target}")
    return int(hook.id)


def request_predictions(client: Any, project_id: int) -> None:
    """Ask Label Studio to fetch predictions for every task (the Data Manager's "Retrieve Predictions")."""
    call(
        lambda: client.actions.create(
            id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []}
        ),
        "retrieve predictions",
    )


def export_tasks(client: Any, project_id: int, attempts: int | None = None, backoff: float | None = None) -> list[dict]:
    """Every task of a project with its annotations (Label Studio's JSON export), retried with backoff.

    A Label Studio that is down or slow gets `attempts` tries (default LS_ATTEMPTS; waits of backoff, 2x, 4x ...
    seconds), then one clear LabelStudioError; nothing is written before the whole export is in memory.
    """

    def download() -> list[dict]:
        body = b"".join(client.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=True))
        try:
            tasks = json.loads(body)
        except ValueError:
            raise LabelStudioError(f"project {project_id}: the export is not JSON") from None
        if not isinstance(tasks, list):
            raise LabelStudioError(f"project {project_id}: the export is not a list of tasks")
        return tasks

    return retried(download, f"export project {project_id}", attempts, backoff)
