"""The Parquet layout of bulk predictions, derived from the schema, and the conversion to and from `Prediction`.

One row per task: the task key (a column named like the schema's key field), `task_id` (the Label Studio task id
when known), per dimension its answer (single: a label or null, multi: a list of labels, spans: a list of
{start, end, text, label, score}) and for choice dimensions `<dimension>_score`, then the task `score` and the
`model_version`. Every part file of a run has exactly this Arrow schema, so the folder reads as one table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from annotation_config.errors import WorkbenchError
from annotation_config.regions import Prediction

if TYPE_CHECKING:
    import pyarrow as pa

    from annotation_config.schema import Schema

TASK_ID, SCORE, MODEL_VERSION = "task_id", "score", "model_version"
PROBLEM = "__problem"  # actor output only: why a row got no prediction (never written to Parquet)


def score_column(dimension: str) -> str:
    """The column holding a choice dimension's confidence."""
    return f"{dimension}_score"


def output_columns(schema: Schema) -> list[str]:
    """Column names in order; raises when the schema's names would collide with each other."""
    names = [schema.data.key, TASK_ID]
    for dim in schema.dimensions:
        names.append(dim.name)
        if dim.kind != "spans":
            names.append(score_column(dim.name))
    names += [SCORE, MODEL_VERSION]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise WorkbenchError(f"the output would have two columns named {', '.join(map(repr, clash))}: rename them")
    return names


def output_schema(schema: Schema, *, with_problem: bool = False) -> pa.Schema:
    """The Arrow schema of every part file (plus the actors' problem column when asked)."""
    import pyarrow as pa

    output_columns(schema)  # the collision check
    span = pa.struct(
        [("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()), ("label", pa.string())]
        + [("score", pa.float64())]
    )
    fields = [pa.field(schema.data.key, pa.string(), nullable=False), pa.field(TASK_ID, pa.int64())]
    for dim in schema.dimensions:
        if dim.kind == "single":
            fields.append(pa.field(dim.name, pa.string()))
        elif dim.kind == "multi":
            fields.append(pa.field(dim.name, pa.list_(pa.string())))
        else:
            fields.append(pa.field(dim.name, pa.list_(span)))
        if dim.kind != "spans":
            fields.append(pa.field(score_column(dim.name), pa.float64()))
    fields += [pa.field(SCORE, pa.float64()), pa.field(MODEL_VERSION, pa.string())]
    if with_problem:
        fields.append(pa.field(PROBLEM, pa.string()))
    return pa.schema(fields)


def prediction_row(
    schema: Schema, key: str, task_id: int | None, prediction: Prediction, model_version: str
) -> dict[str, Any]:
    """One output row for a task's Prediction."""
    row: dict[str, Any] = {schema.data.key: key, TASK_ID: task_id}
    for dim in schema.dimensions:
        value = prediction.labels.get(dim.name)
        if dim.kind == "spans":
            row[dim.name] = [
                {
                    "start": int(s["start"]),
                    "end": int(s["end"]),
                    "text": s.get("text"),
                    "label": s["label"],
                    "score": None if s.get("score") is None else float(s["score"]),
                }
                for s in value or []
            ]
            continue
        row[dim.name] = list(value or []) if dim.kind == "multi" else value
        score = prediction.scores.get(dim.name)
        row[score_column(dim.name)] = None if score is None else float(score)
    row[SCORE] = float(prediction.score)
    row[MODEL_VERSION] = model_version
    return row


def row_prediction(schema: Schema, row: Mapping[str, Any]) -> Prediction:
    """The Prediction a stored row holds (to write it into Label Studio without predicting again)."""
    labels: dict[str, Any] = {}
    scores: dict[str, float] = {}
    for dim in schema.dimensions:
        value = row.get(dim.name)
        if dim.kind == "spans":
            labels[dim.name] = [{k: v for k, v in dict(s).items() if v is not None} for s in value or []]
            continue
        if dim.kind == "multi":
            labels[dim.name] = list(value or [])
        elif value is not None:
            labels[dim.name] = value
        if row.get(score_column(dim.name)) is not None:
            scores[dim.name] = float(row[score_column(dim.name)])
    return Prediction(labels=labels, scores=scores, score=float(row.get(SCORE) or 0.0))


def to_table(schema: Schema, rows: Sequence[Mapping[str, Any]], *, with_problem: bool = False) -> pa.Table:
    """Rows as an Arrow table of the output schema (missing columns are null)."""
    import pyarrow as pa

    arrow_schema = output_schema(schema, with_problem=with_problem)
    return pa.Table.from_pylist([dict(r) for r in rows], schema=arrow_schema)
