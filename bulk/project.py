"""`workbench predict` and a Label Studio project: read its tasks, write predictions in bulk, resumably.

Predictions are created with the bulk endpoint (POST /api/projects/<id>/import/predictions, label-studio-sdk's
`projects.import_predictions`), `batch_size` per request. A task that already holds a prediction of the run's
model_version is skipped (Label Studio's own rule for /predict), so a rerun writes only what is missing. A request
that fails with a connection error, a timeout or a 5xx is tried again with backoff; before each new try the tasks
of the batch are asked again for their versions, because a request that timed out may have been stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from annotation_config.annotations import task_key
from annotation_config.schema import Schema
from bulk.table import TASK_ID, row_prediction
from studio.provision import LS_ATTEMPTS, LS_BACKOFF, LabelStudioError, call, retried

PAGE_SIZE = 1000
DEFAULT_LS_BATCH = 100


@dataclass
class ProjectTask:
    """A task of the project: its id, data and the model versions of its predictions."""

    id: int
    data: dict[str, Any]
    versions: set[str]


def _versions(text: Any) -> set[str]:
    """Label Studio's `predictions_model_versions` column: the versions joined by commas."""
    return {part.strip() for part in str(text or "").split(",") if part.strip()}


def project_tasks(client: Any, project: int, schema: Schema) -> dict[str, ProjectTask]:
    """Every task of the project by task key (annotation_config's rule), with its prediction versions."""

    def fetch() -> list[Any]:
        pager = client.tasks.list(project=project, include="id,data,predictions_model_versions", page_size=PAGE_SIZE)
        return list(pager)

    tasks: dict[str, ProjectTask] = {}
    for index, task in enumerate(retried(fetch, f"list the tasks of project {project}")):
        data = dict(task.data or {})
        key = task_key({"data": data, "id": task.id}, schema, index)
        tasks.setdefault(key, ProjectTask(int(task.id), data, _versions(task.predictions_model_versions)))
    return tasks


def versions_of(client: Any, project: int, ids: Sequence[int]) -> dict[int, set[str]]:
    """The prediction versions of some tasks of the project, asked now."""
    query = json.dumps({"selectedItems": {"all": False, "included": list(ids)}})
    found = call(
        lambda: list(client.tasks.list(project=project, query=query, include="id,predictions_model_versions")),
        "read prediction versions",
    )
    return {int(task.id): _versions(task.predictions_model_versions) for task in found}


@dataclass
class ProjectWriter:
    """Writes one model version's predictions into a project; counts what it wrote, skipped and could not place."""

    client: Any
    project: int
    schema: Schema
    version: str
    tasks: dict[str, ProjectTask]
    batch_size: int = DEFAULT_LS_BATCH
    attempts: int = LS_ATTEMPTS
    backoff: float = LS_BACKOFF
    written: int = 0
    already: int = 0
    missing: list[str] = field(default_factory=list)  # keys with no task in the project

    def needs(self, key: str) -> bool:
        """Whether the task of `key` is in the project without a prediction of this version."""
        task = self.tasks.get(key)
        return task is not None and self.version not in task.versions

    def place(self, rows: Iterable[dict[str, Any]]) -> None:
        """Set each row's task_id to its project task (rows of keys the project lacks keep theirs)."""
        for row in rows:
            task = self.tasks.get(str(row[self.schema.data.key]))
            if task is not None:
                row[TASK_ID] = task.id

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Create the predictions of `rows` (output rows of this version) that the project does not hold yet."""
        payload = []
        for row in rows:
            key = str(row[self.schema.data.key])
            task = self.tasks.get(key)
            if task is None:
                self.missing.append(key)
                continue
            if self.version in task.versions:
                self.already += 1
                continue
            item = row_prediction(self.schema, row).to_label_studio(self.schema, task.data, self.version)
            payload.append({"task": task.id, **item})
            task.versions.add(self.version)  # a second row of the same key is not written twice
        for start in range(0, len(payload), self.batch_size):
            self._send(payload[start : start + self.batch_size])

    def _send(self, payload: list[dict[str, Any]]) -> None:
        doing = f"write {len(payload)} predictions into project {self.project}"
        for attempt in range(1, self.attempts + 1):
            try:
                call(lambda p=payload: self.client.projects.import_predictions(id=self.project, request=p), doing)
                self.written += len(payload)
                return
            except LabelStudioError as error:
                retriable = "HTTP 4" not in str(error) and "rejected the API key" not in str(error)
                if attempt == self.attempts or not retriable:
                    raise LabelStudioError(
                        f"{error} (after {attempt} attempt{'s' if attempt > 1 else ''}; {self.written} predictions "
                        "were written before it: run again to write the rest)"
                    ) from None
                time.sleep(self.backoff * 2 ** (attempt - 1))
                try:  # the failed request may have been stored: send only what is still missing
                    have = versions_of(self.client, self.project, [p["task"] for p in payload])
                except LabelStudioError:
                    continue
                stored = [p for p in payload if self.version in have.get(p["task"], set())]
                self.written += len(stored)
                payload = [p for p in payload if self.version not in have.get(p["task"], set())]
                if not payload:
                    return
