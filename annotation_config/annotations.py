"""The fields of Label Studio tasks and annotations (JSON export / API shape), read in one place.

Every command that looks at annotations (acceptance, agreement, the dataset export, the import, the instant
learner) asks these functions, so each rule has one meaning:

- **who made an annotation** (`annotator_of`): `completed_by`, the Label Studio user id. An export holds the id
  as a number, or as an expanded user object `{"id", "email", ...}`; the *id* is taken first, the e-mail only
  when an object has no id. Ids first because they are what Label Studio itself keys users by and what a plain
  export holds: the same person must count as one annotator whichever form an export uses (an id and an expanded
  object of that id are one vote), and an e-mail can change while the id cannot. None when nobody is named.
- **the task key** (`task_key`): the schema's `data.key` field; without one `task-<id>` from Label Studio's task
  id; without that `task-#<index>` (the task's position in its list).
- **counted** (`is_counted`): an annotation object that was submitted and not cancelled (skipped); `is_cancelled`
  and `is_ground_truth` read those flags, `stamp` the time of its last change (updated, else created).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from annotation_config.schema import Schema

# The annotation fields the acceptance policy reads (the instant learner keeps only these of a webhook's ~25).
ANNOTATION_FIELDS = ("id", "result", "was_cancelled", "ground_truth", "completed_by", "created_at", "updated_at")


def annotator_of(annotation: Mapping[str, Any]) -> Any:
    """Who made an annotation: the Label Studio user id of `completed_by` (see the module docstring), or None."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("id") if who.get("id") is not None else who.get("email")
    return who


def task_key(task: Mapping[str, Any], schema: Schema, index: int) -> str:
    """The task's key: its `data.key` field, else `task-<id>`, else `task-#<index>`."""
    data = task.get("data") or {}
    task_id = task.get("id")
    return str(data.get(schema.data.key) or (f"task-{task_id}" if task_id is not None else f"task-#{index}"))


def is_cancelled(annotation: Mapping[str, Any]) -> bool:
    """Skipped in Label Studio (`was_cancelled`)."""
    return bool(annotation.get("was_cancelled"))


def is_ground_truth(annotation: Mapping[str, Any]) -> bool:
    """Marked as ground truth in Label Studio."""
    return bool(annotation.get("ground_truth"))


def is_counted(annotation: Any) -> bool:
    """A submitted annotation (an object) that was not cancelled."""
    return isinstance(annotation, Mapping) and not is_cancelled(annotation)


def counted(annotations: Iterable[Any]) -> list[Mapping[str, Any]]:
    """The counted annotations, in their order."""
    return [a for a in annotations if is_counted(a)]


def stamp(annotation: Mapping[str, Any]) -> str:
    """When the annotation last changed (ISO text, comparable as a string): updated_at, else created_at, else ""."""
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")
