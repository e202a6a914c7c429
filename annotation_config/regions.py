"""Convert between Label Studio result JSON and plain label records; the only module that knows that format.

A label record maps each dimension name to its value:
  single -> "favor"                       (absent when the annotator left the question open)
  multi  -> ["Economic", "Political"]     (schema order; empty list when nothing was ticked)
  spans  -> [{"start": 3, "end": 9, "text": "Russia", "label": "actor"}, ...]   (sorted by offsets)

Offsets are Python string indices (Unicode code points). Label Studio's Text tag counts code points too (its
frontend test "Should calculate offsets by code points in text"), so characters outside the BMP such as emoji
count as one, unlike JavaScript's UTF-16 string length. Task text must keep "\\r\\n" out: Label Studio counts
it as two characters but browsers render one line break.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from annotation_config.errors import WorkbenchError
from annotation_config.schema import Dimension, Schema

_RESULT_TYPE = {"single": "choices", "multi": "choices", "spans": "labels"}


class RegionError(WorkbenchError, ValueError):
    """A Label Studio result that does not fit the schema; the message names the result index and the field."""


def region_id(*parts: object) -> str:
    """A short deterministic region id (Label Studio needs one per region; stable ids make diffs readable)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:10]


def results_to_labels(schema: Schema, results: Sequence[Mapping[str, Any]], data: Mapping[str, Any]) -> dict:
    """Turn Label Studio `result` items (of an annotation or prediction) into a label record."""
    if not isinstance(results, Sequence) or isinstance(results, str | bytes):
        raise RegionError("result: expected a list of regions")
    labels: dict[str, Any] = {}
    for dim in schema.of_kind("multi"):
        labels[dim.name] = []
    for dim in schema.of_kind("spans"):
        labels[dim.name] = []
    for i, item in enumerate(results):
        where = f"result[{i}]"
        if not isinstance(item, Mapping):
            raise RegionError(f"{where}: expected an object, got {type(item).__name__}")
        if item.get("type") == "relation":
            raise RegionError(f"{where}: relations are not part of the schema")
        name = item.get("from_name")
        try:
            dim = schema.dimension(name)  # type: ignore[arg-type]
        except KeyError:
            known = ", ".join(d.name for d in schema.dimensions)
            raise RegionError(f"{where}.from_name: unknown control {name!r}; the schema has {known}") from None
        where = f"{where} ({dim.name})"
        to_name = dim.field or schema.data.text
        if item.get("to_name", to_name) != to_name:
            raise RegionError(f"{where}.to_name: expected {to_name!r}, got {item.get('to_name')!r}")
        value = item.get("value")
        if not isinstance(value, Mapping):
            raise RegionError(f"{where}.value: expected an object")
        if dim.kind == "spans":
            labels[dim.name].extend(_spans_from_value(dim, value, data.get(to_name), where))
        else:
            chosen = _choices_from_value(dim, value, where)
            if dim.kind == "single":
                if dim.name in labels:
                    raise RegionError(f"{where}: a second answer for single-choice {dim.name!r}")
                labels[dim.name] = chosen[0]
            else:
                merged = set(labels[dim.name]) | set(chosen)
                labels[dim.name] = [v for v in dim.values if v in merged]
    for dim in schema.of_kind("spans"):
        labels[dim.name].sort(key=lambda s: (s["start"], s["end"], s["label"]))
    return labels


def _choices_from_value(dim: Dimension, value: Mapping[str, Any], where: str) -> list[str]:
    choices = value.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise RegionError(f"{where}.value.choices: expected a list of label strings")
    if dim.kind == "single" and len(choices) != 1:
        raise RegionError(f"{where}.value.choices: single-choice {dim.name!r} needs exactly one, got {len(choices)}")
    for choice in choices:
        if choice not in dim.values:
            raise RegionError(f"{where}.value.choices: unknown label {choice!r}; expected one of {dim.values}")
    return list(choices)


def _spans_from_value(dim: Dimension, value: Mapping[str, Any], text: Any, where: str) -> list[dict]:
    if not isinstance(text, str):
        raise RegionError(f"{where}: the task has no text in field {dim.field!r} to hold spans")
    start, end = value.get("start"), value.get("end")
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
        raise RegionError(f"{where}.value: start and end must be integers, got {start!r} and {end!r}")
    if not 0 <= start < end <= len(text):
        raise RegionError(f"{where}.value: span {start}..{end} is out of range for a text of {len(text)} characters")
    covered = text[start:end]
    if "text" in value and value["text"] != covered:
        raise RegionError(
            f"{where}.value.text: {value['text']!r} does not match the task text at {start}..{end} ({covered!r})"
        )
    names = value.get("labels")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RegionError(f"{where}.value.labels: expected a non-empty list of label strings")
    spans = []
    for label in names:
        if label not in dim.values:
            raise RegionError(f"{where}.value.labels: unknown label {label!r}; expected one of {dim.values}")
        spans.append({"start": start, "end": end, "text": covered, "label": label})
    return spans


def labels_to_results(
    schema: Schema,
    labels: Mapping[str, Any],
    data: Mapping[str, Any],
    scores: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Turn a label record into Label Studio `result` items; `scores` adds a per-region score for predictions.

    `scores[dim]` is a float for choice dimensions; for spans each span dict may carry its own "score".
    """
    results: list[dict] = []
    for name in labels:
        try:
            schema.dimension(name)
        except KeyError:
            raise RegionError(f"{name}: not a dimension of the schema") from None
    for dim in schema.dimensions:
        value = labels.get(dim.name)
        if value is None or value == []:
            continue
        to_name = dim.field or schema.data.text
        if dim.kind == "spans":
            results.extend(_span_result(schema, dim, span, data.get(to_name)) for span in value)
            continue
        chosen = _choices_from_value(dim, {"choices": [value] if dim.kind == "single" else list(value)}, dim.name)
        chosen = [v for v in dim.values if v in chosen]  # schema order, like results_to_labels
        item = {
            "id": region_id(dim.name, *chosen),
            "from_name": dim.name,
            "to_name": to_name,
            "type": _RESULT_TYPE[dim.kind],
            "value": {"choices": chosen},
        }
        if scores and scores.get(dim.name) is not None:
            item["score"] = float(scores[dim.name])
        results.append(item)
    return results


def _span_result(schema: Schema, dim: Dimension, span: Mapping[str, Any], text: Any) -> dict:
    if not isinstance(span, Mapping):
        raise RegionError(f"{dim.name}: each span must be an object with start, end and label")
    to_name = dim.field or schema.data.text
    value = {"start": span.get("start"), "end": span.get("end"), "labels": [span.get("label")]}
    if isinstance(text, str) and isinstance(value["start"], int) and isinstance(value["end"], int):
        value["text"] = text[value["start"] : value["end"]]
    if "text" in span and span["text"] != value.get("text"):
        value["text"] = span["text"]  # let the shared check report the mismatch
    _spans_from_value(dim, value, text, dim.name)
    item = {
        "id": region_id(dim.name, value["start"], value["end"], span.get("label")),
        "from_name": dim.name,
        "to_name": to_name,
        "type": _RESULT_TYPE[dim.kind],
        "value": value,
    }
    if span.get("score") is not None:
        item["score"] = float(span["score"])
    return item


@dataclass
class Prediction:
    """One task's model output as a label record with scores, before conversion to Label Studio JSON.

    `labels` is a label record (spans may carry a "score"); `scores[dim]` is the confidence of the answer given
    for each choice dimension (for multi: of the least certain decision); `score` is the task's overall
    confidence, which Label Studio shows and sorts by (low first = active learning).
    """

    labels: dict
    scores: dict[str, float] = field(default_factory=dict)
    score: float = 0.0

    def to_label_studio(
        self, schema: Schema, data: Mapping[str, Any], model_version: str, max_spans: int | None = None
    ) -> dict:
        """The item Label Studio expects in `results` of a /predict response; `max_spans`: keep at most that many
        span regions in the task, the highest-scoring ones (None: all)."""
        labels = self.labels if max_spans is None else top_spans(schema, self.labels, max_spans)
        return {
            "result": labels_to_results(schema, labels, data, self.scores),
            "score": float(self.score),
            "model_version": model_version,
        }


def top_spans(schema: Schema, labels: Mapping[str, Any], limit: int) -> dict:
    """A copy of a label record with at most `limit` spans over all span dimensions: the highest-scoring ones (ties:
    the earlier span), each dimension still sorted by offsets."""
    spans = [
        (dim.name, i, span) for dim in schema.of_kind("spans") for i, span in enumerate(labels.get(dim.name) or [])
    ]
    if len(spans) <= limit:
        return dict(labels)

    def score(item: tuple[str, int, Any]) -> float:
        span = item[2]
        return float(span.get("score") or 0.0) if isinstance(span, Mapping) else 0.0

    kept = {(name, i) for name, i, _ in sorted(spans, key=score, reverse=True)[:limit]}  # stable: ties keep order
    capped = dict(labels)
    for dim in schema.of_kind("spans"):
        if labels.get(dim.name):
            capped[dim.name] = [s for i, s in enumerate(labels[dim.name]) if (dim.name, i) in kept]
    return capped
