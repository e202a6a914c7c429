"""The Ray Data actor of `workbench predict`: loads the model once, then turns batches of rows into predictions.

It imports no Ray: Ray Data constructs it in each actor process and calls it with one pyarrow batch at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from annotation_config.annotations import derived_key, task_key
from bulk.model import ModelChoice, load_predictor
from bulk.table import PROBLEM, prediction_row, to_table

if TYPE_CHECKING:
    import pyarrow as pa

    from annotation_config.schema import Schema
    from backend.settings import Settings

# Columns a Label Studio source adds to its rows (the task data travels as JSON: tasks may differ in their fields).
LS_TASK_ID, LS_DATA = "__task_id", "__data"


def row_data(row: Mapping[str, Any], schema: Schema) -> tuple[dict[str, Any], int | None]:
    """A row's task `data` and Label Studio task id: a Label Studio source row, a Label Studio task
    ({"id", "data": {...}}: its data holds the text field) or a flat row of data fields."""
    if LS_DATA in row:
        return json.loads(row[LS_DATA]), row.get(LS_TASK_ID)
    data = row.get("data")
    if isinstance(data, Mapping) and schema.data.text not in row:
        task_id = row.get("id")
        return dict(data), task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None
    return dict(row), None


def row_key(data: Mapping[str, Any], task_id: int | None, schema: Schema) -> str:
    """The task key (annotation_config's rule: the key field, else task-<id>); a row of a file with neither gets
    the content key `workbench import` gives it, so file rows match the tasks imported from that file."""
    if data.get(schema.data.key) not in (None, "") or task_id is not None:
        return task_key({"data": data, "id": task_id}, schema, 0)
    return derived_key(data, schema)


def text_problem(data: Mapping[str, Any], schema: Schema) -> str | None:
    """Why a row cannot be predicted (no text to read), or None."""
    for name in dict.fromkeys([schema.data.text, *(d.field for d in schema.dimensions if d.field)]):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"no text in field {name!r}"
    return None


class BatchPredictor:
    """Ray Data callable class: one model per actor, built in __init__; each call predicts the batch's rows whose
    key is not yet done for this model version (resume), in one predictor call."""

    def __init__(self, choice: ModelChoice, settings: Settings, schema: Schema, done: Iterable[str] = ()) -> None:
        self.choice, self.schema = choice, schema
        self.predictor = load_predictor(choice, settings, schema)
        self.done = frozenset(done or ())  # keys the output folder holds for this version (resume)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Predictions (and problem rows) for the batch's new rows, as an Arrow table of the output schema."""
        rows, todo = [], []
        for raw in batch.to_pylist():
            data, task_id = row_data(raw, self.schema)
            key = row_key(data, task_id, self.schema)
            if key in self.done:
                continue
            problem = text_problem(data, self.schema)
            if problem:
                rows.append({self.schema.data.key: key, "task_id": task_id, PROBLEM: problem})
            else:
                todo.append((key, task_id, data))
        predictions = self.predictor.predict([data for _, _, data in todo]) if todo else []
        version = self.predictor.model_version
        for (key, task_id, _), prediction in zip(todo, predictions, strict=True):
            rows.append(prediction_row(self.schema, key, task_id, prediction, version))
        return to_table(self.schema, rows, with_problem=True)
