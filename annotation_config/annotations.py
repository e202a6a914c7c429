"""The fields of Label Studio tasks and annotations (JSON export / API shape), read in one place.

Every command that looks at annotations (acceptance, agreement, the dataset export, the import, the instant
learner) asks these functions, so each rule has one meaning:

- **who made an annotation** (`annotator_of`): `completed_by`, the Label Studio user id. An export holds the id
  as a number, or as an expanded user object `{"id", "email", ...}`; the *id* is taken first, the e-mail only
  when an object has no id. Ids first because they are what Label Studio itself keys users by and what a plain
  export holds: the same person must count as one annotator whichever form an export uses (an id and an expanded
  object of that id are one vote), and an e-mail can change while the id cannot. None when nobody is named.
- **the task key** (`task_key`): the schema's `data.key` field; without one `task-<id>` from Label Studio's task
  id; without that `task-#<index>` (the task's position in its list). A row of a file with no key at all gets
  `derived_key`, from its content (`workbench import` stores it as the task's key; `workbench predict` matches by it).
- **counted** (`is_counted`): an annotation object that was submitted and not cancelled (skipped); `is_cancelled`
  and `is_ground_truth` read those flags, `stamp` the time of its last change (updated, else created).
"""

from __future__ import annotations

import hashlib
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


def derived_key(data: Mapping[str, Any], schema: Schema) -> str:
    """The key of a row that has none: `sha1:<16 hex>` of its text and of the fields a dimension pairs it with (a
    body paired with many headlines is many tasks), so the same row gets the same key in every command and run."""
    paired = dict.fromkeys(d.pair_with for d in schema.dimensions if d.pair_with)
    text = data.get(schema.data.text)
    content = "\x1f".join([str(text or ""), *(str(data.get(name) or "") for name in paired)])
    return "sha1:" + hashlib.sha1(content.encode("utf-8")).hexdigest()[:16]


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
