"""Request and response bodies of Label Studio's ML backend protocol (1.23), as pydantic models.

They make the OpenAPI schema describe the real protocol; per-task checks that depend on the label schema
(the text field, its size) happen in the route, so errors can name the task index.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Every event Label Studio (Community and Enterprise) sends to a webhook, plus the ML backend's own START_TRAINING.
TRAINING_EVENTS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
KNOWN_EVENTS = TRAINING_EVENTS | {
    "START_TRAINING",
    "PROJECT_CREATED",
    "PROJECT_UPDATED",
    "PROJECT_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
    "LABEL_LINK_CREATED",
    "LABEL_LINK_UPDATED",
    "LABEL_LINK_DELETED",
    "REVIEW_CREATED",
    "REVIEW_UPDATED",
    "REVIEWS_DELETED",
}


class _Open(BaseModel):
    # Label Studio adds fields between versions; accept them rather than break.
    model_config = ConfigDict(extra="allow")


class Task(_Open):
    """A task as Label Studio sends it: its `data` holds the schema's fields."""

    id: int | str | None = None
    data: dict[str, Any]


class PredictRequest(_Open):
    """POST /predict: Label Studio asks for predictions on a batch of tasks."""

    tasks: list[Task]
    project: str | None = Field(default=None, description='"<project id>.<created timestamp>"')
    label_config: str | None = None
    params: dict[str, Any] | None = None


class PredictionItem(BaseModel):
    """One prediction: regions for every dimension, an overall score and the model version."""

    result: list[dict[str, Any]]
    score: float
    model_version: str


class PredictResponse(BaseModel):
    """Exactly one prediction per task, in task order."""

    results: list[PredictionItem]
    model_version: str


class SetupRequest(_Open):
    """POST /setup: Label Studio checks the model fits the project's labeling config."""

    project: str | None = None
    schema_: str | None = Field(default=None, alias="schema", description="The project's labeling config (XML).")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None


class SetupResponse(BaseModel):
    model_version: str


class WebhookEvent(_Open):
    """POST /webhook: any Label Studio event; START_TRAINING carries no annotation."""

    action: str
    project: dict[str, Any] | None = None
    # ANNOTATIONS_CREATED (bulk) carries lists under the singular keys.
    annotation: dict[str, Any] | list[dict[str, Any]] | None = None
    annotations: list[dict[str, Any]] | None = None
    task: dict[str, Any] | list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _ids_are_scalars(self) -> WebhookEvent:
        # An id is a key of the learner's tables: an object or a list there would be a 500, not bad input.
        for where, value in self._ids():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
                raise ValueError(f"{where} must be an integer or a string, not {type(value).__name__}")
        return self

    def _ids(self) -> list[tuple[str, Any]]:
        """(path, value) of every id the backend reads: project, annotations (and their task), tasks."""
        found: list[tuple[str, Any]] = [("project.id", (self.project or {}).get("id"))]
        groups = [("annotation", self.annotation), ("annotations", self.annotations), ("task", self.task)]
        for name, group in groups:
            items = group if isinstance(group, list) else [group] if group is not None else []
            for index, item in enumerate(items):
                where = f"{name}[{index}]" if isinstance(group, list) else name
                found.append((f"{where}.id", item.get("id")))
                task = item.get("task") if name != "task" else None
                if isinstance(task, dict):
                    found.append((f"{where}.task.id", task.get("id")))
                else:
                    found.append((f"{where}.task", task))
        return found


class WebhookResponse(BaseModel):
    status: Literal["queued", "recorded", "ignored", "busy", "failed"]
    action: str
    job: dict[str, Any] | None = None


class Health(BaseModel):
    """GET /health. Without credentials while basic auth is on, only `status` and `model_version` are given."""

    status: Literal["UP"]
    model_version: str
    model_kind: str | None = None
    model_runtime: str | None = Field(
        default=None, description="What runs the served model's encoder, e.g. 'onnx-int8 (why)' or 'torch-fp32 (why)'."
    )
    rung: Literal["cold-start", "instant", "trained"] | None = None
    rung_reason: str | None = None
    instant: dict[str, Any] | None = Field(default=None, description="Per project: its instant learner's state.")
    schema_hash: str | None = None
    training: dict[str, Any] | None = None
    last_reload_error: str | None = None


class Versions(BaseModel):
    versions: list[str]
    current: str
    rung: Literal["cold-start", "instant", "trained"] | None = None
    rung_reason: str | None = None


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem] | str
