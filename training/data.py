"""Accepted examples: the acceptance policy over Label Studio annotations, grouped splits, a stable data hash.

Input is Label Studio's JSON export: a list of tasks `{"id", "data": {...}, "annotations": [...]}`. The acceptance
policy lives in `accept` and nowhere else:

- an annotation counts when it was submitted and not cancelled (skipped); drafts and predictions never count;
- one vote per annotator (`completed_by`): their most recently updated annotation of the task;
- a counted annotation whose result does not fit the schema holds the whole task out ("invalid result: ...");
- an annotation marked ground truth wins for every dimension it answers (the latest one when there are several);
- otherwise each dimension is aggregated over the annotators who answered it: single choice by majority (a tie is
  held out), multi choice per label (kept when ticked by strictly more than half), spans per (start, end, label)
  (kept when marked by strictly more than half); with `min_annotators` or more answering, a majority share below
  `min_agreement` is held out as low agreement;
- a dimension nobody answered is missing for that task (masked in the loss, never a negative). A submitted
  annotation answers every multi-choice dimension (Label Studio stores no empty choices, so nothing ticked means no
  frames); it answers a span dimension only when it marks at least one span there (`empty_spans_answer=True`
  counts "no spans" as an answer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from annotation_config.annotations import annotator_of, counted, is_counted, is_ground_truth, stamp, task_key
from annotation_config.regions import RegionError, results_to_labels
from annotation_config.schema import Dimension, Schema

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class AcceptancePolicy:
    """The knobs of the acceptance policy (see the module docstring)."""

    min_agreement: float = 0.5
    min_annotators: int = 3
    empty_spans_answer: bool = False


@dataclass
class Example:
    """One task with its accepted labels: `labels` maps each answered dimension to its value (missing: absent)."""

    key: str
    task_id: int | None
    data: dict[str, Any]
    labels: dict[str, Any]
    annotators: int = 1


@dataclass(frozen=True)
class HeldOut:
    """A task dimension left out for adjudication; `dimension` None means the whole task."""

    task_id: int | None
    key: str
    dimension: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return {"task_id": self.task_id, "key": self.key, "dimension": self.dimension, "reason": self.reason}


@dataclass
class AcceptedData:
    """What the policy accepted, what it held out, and how many tasks had no counted annotation."""

    examples: list[Example] = field(default_factory=list)
    held_out: list[HeldOut] = field(default_factory=list)
    unlabeled: int = 0

    def summary(self) -> str:
        """One line for logs and the command line."""
        labels = sum(len(e.labels) for e in self.examples)
        return (
            f"{len(self.examples)} accepted tasks ({labels} dimension labels), {len(self.held_out)} held out for "
            f"adjudication, {self.unlabeled} tasks without a counted annotation"
        )


def accept(tasks: Iterable[Mapping[str, Any]], schema: Schema, policy: AcceptancePolicy | None = None) -> AcceptedData:
    """Apply the acceptance policy to Label Studio task dicts (as in a JSON export)."""
    policy = policy or AcceptancePolicy()
    out = AcceptedData()
    for index, task in enumerate(tasks):
        data = dict(task.get("data") or {})
        task_id = task.get("id")
        key = task_key(task, schema, index)
        annotations = task.get("annotations") or []
        votes = latest_votes(annotations)
        if not votes:
            out.unlabeled += 1
            continue
        # Ground truth counts even when the same person updated another annotation of the task later.
        truth_ids = {id(a) for a in counted(annotations) if is_ground_truth(a)}
        voted = {id(a) for a in votes}
        ordered = votes + [a for a in counted(annotations) if id(a) in truth_ids and id(a) not in voted]
        parsed: dict[int, dict] = {}
        invalid = None
        for annotation in ordered:
            try:
                parsed[id(annotation)] = results_to_labels(schema, annotation.get("result") or [], data)
            except RegionError as error:
                invalid = f"invalid result: annotation {annotation.get('id')}: {error}"
                break
        if invalid:
            out.held_out.append(HeldOut(task_id, key, None, invalid))
            continue
        records = [(a, parsed[id(a)]) for a in votes]
        truths = sorted(((a, parsed[id(a)]) for a in ordered if id(a) in truth_ids), key=lambda item: stamp(item[0]))
        labels: dict[str, Any] = {}
        for dim in schema.dimensions:
            truth = next((r for _, r in reversed(truths) if answered(dim, r, policy)), None)
            if truth is not None:
                labels[dim.name] = _as_record(dim, _clean(dim, truth[dim.name]))
                continue
            answers = [_clean(dim, r[dim.name]) for _, r in records if answered(dim, r, policy)]
            if not answers:
                continue
            value, problem = _aggregate(dim, answers, policy)
            if problem:
                out.held_out.append(HeldOut(task_id, key, dim.name, problem))
            else:
                labels[dim.name] = value
        if labels:
            out.examples.append(Example(key, task_id, data, labels, annotators=len(records)))
    return out


def latest_votes(annotations: Sequence[Any]) -> list[Mapping[str, Any]]:
    """Counted annotations, one per annotator (the latest update), in a stable order (oldest first).

    An annotation that names nobody (no `completed_by`) is a vote of its own."""
    latest: dict[Any, tuple[str, int, Mapping[str, Any]]] = {}
    for index, annotation in enumerate(annotations):
        if not is_counted(annotation):
            continue
        when = stamp(annotation)
        who = annotator_of(annotation)
        voter = ("annotator", who) if who is not None else ("annotation", index)
        if voter not in latest or (when, index) >= latest[voter][:2]:
            latest[voter] = (when, index, annotation)
    return [a for _, _, a in sorted(latest.values(), key=lambda item: item[:2])]


def answered(dim: Dimension, record: Mapping[str, Any], policy: AcceptancePolicy) -> bool:
    """Whether one annotation's label record answers `dim` (see the module docstring)."""
    if dim.kind == "single":
        return dim.name in record
    if dim.kind == "multi":
        return True
    return bool(record.get(dim.name)) or policy.empty_spans_answer


def _clean(dim: Dimension, value: Any) -> Any:
    if dim.kind == "spans":
        return sorted(
            {(s["start"], s["end"], s["label"]) for s in value}, key=lambda s: (s[0], s[1], s[2])
        )  # tuples: hashable for voting; _as_record turns them back into dicts
    if dim.kind == "multi":
        return [v for v in dim.values if v in set(value)]
    return value


def _aggregate(dim: Dimension, answers: list[Any], policy: AcceptancePolicy) -> tuple[Any, str | None]:
    """The majority value of one dimension, or a reason to hold it out."""
    n = len(answers)
    if dim.kind == "single":
        counts = Counter(answers).most_common()
        top = counts[0][1]
        if len(counts) > 1 and counts[1][1] == top:
            tied = sorted(label for label, c in counts if c == top)
            return None, f"tie: {' vs '.join(tied)} ({top} of {n} each)"
        if n >= policy.min_annotators and top / n < policy.min_agreement:
            return None, f"low agreement: {counts[0][0]} chosen by {top} of {n}"
        return counts[0][0], None
    if dim.kind == "multi":
        ticks = Counter(label for answer in answers for label in answer)
        if n >= policy.min_annotators and ticks:
            share = min(max(c, n - c) / n for c in ticks.values())
            if share < policy.min_agreement:
                return None, f"low agreement: per-label majority share {share:.2f} of {n} annotators"
        return [v for v in dim.values if ticks[v] * 2 > n], None
    marks = Counter(span for answer in answers for span in set(answer))
    return _as_record(dim, sorted(span for span, c in marks.items() if c * 2 > n)), None


def _as_record(dim: Dimension, value: Any) -> Any:
    """Spans back from hashable tuples to label-record dicts."""
    if dim.kind == "spans":
        return [{"start": s, "end": e, "label": label} for s, e, label in value]
    return value


def data_hash(examples: Iterable[Example]) -> str:
    """A stable hash of the accepted labels and the texts they label (order-independent)."""
    digest = hashlib.sha256()
    for key, text, labels in sorted(
        (e.key, json.dumps(e.data, sort_keys=True, ensure_ascii=False), json.dumps(e.labels, sort_keys=True))
        for e in examples
    ):
        digest.update(f"{key}\x1f{text}\x1f{labels}\x1e".encode())
    return digest.hexdigest()[:16]


def group_of(example: Example, schema: Schema) -> str:
    """The split group of an example: the schema's group field, or the task key when the field is absent."""
    value = example.data.get(schema.data.group) if schema.data.group else None
    return f"group:{value}" if value not in (None, "") else f"key:{example.key}"


def group_column(schema: Schema) -> str:
    """The dataset column holding the split group: the schema's group field, else "group"."""
    return schema.data.group or "group"


def features(schema: Schema):
    """The `datasets.Features` of the accepted-example columns for this schema."""
    from datasets import Features, List, Value

    columns: dict[str, Any] = {"key": Value("string"), schema.data.text: Value("string")}
    for ctx in schema.data.context:
        columns.setdefault(ctx.name, Value("string"))
    columns[group_column(schema)] = Value("string")
    for dim in schema.dimensions:
        if dim.kind == "single":
            columns[dim.name] = Value("string")
        elif dim.kind == "multi":
            columns[dim.name] = List(Value("string"))
        else:
            columns[dim.name] = List({"start": Value("int32"), "end": Value("int32"), "label": Value("string")})
    return Features(columns)


def example_row(example: Example, schema: Schema) -> dict[str, Any]:
    """One dataset row: key, text, context fields, group, and one column per dimension (None when missing)."""
    row: dict[str, Any] = {"key": example.key, schema.data.text: str(example.data.get(schema.data.text) or "")}
    for ctx in schema.data.context:
        value = example.data.get(ctx.name)
        row[ctx.name] = None if value is None else str(value)
    row[group_column(schema)] = group_of(example, schema).split(":", 1)[1]
    for dim in schema.dimensions:
        value = example.labels.get(dim.name)
        if dim.kind == "spans" and value is not None:
            value = [{"start": s["start"], "end": s["end"], "label": s["label"]} for s in value]
        row[dim.name] = value
    return row


def row_example(row: Mapping[str, Any], schema: Schema) -> Example:
    """The inverse of `example_row` (task ids are not kept in datasets)."""
    data = {schema.data.text: row[schema.data.text]}
    for ctx in schema.data.context:
        if row.get(ctx.name) is not None:
            data[ctx.name] = row[ctx.name]
    if schema.data.group:
        data[schema.data.group] = row.get(schema.data.group)
    labels = {d.name: row[d.name] for d in schema.dimensions if row.get(d.name) is not None}
    return Example(str(row["key"]), None, data, labels)


def split_examples(
    examples: Sequence[Example], schema: Schema, seed: int = 42, ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> dict[str, list[Example]]:
    """Assign examples to train/validation/test by group, stratified on the first single-choice dimension."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or ratios[0] <= 0:
        raise ValueError("ratios must be three non-negative numbers (train, validation, test) with train > 0")
    total = float(sum(ratios))
    ratios = [r / total for r in ratios]
    ordered = sorted(examples, key=lambda e: e.key)
    groups = [group_of(e, schema) for e in ordered]
    distinct = sorted(set(groups))
    wanted = [i for i in (1, 2) if ratios[i] > 0]
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    if not wanted or len(distinct) < 1 + len(wanted):
        if wanted:
            log.warning(
                "only %d group(s): everything goes to train; validation and test are empty (no early stopping, "
                "calibration or held-out metrics)",
                len(distinct),
            )
        out["train"] = list(ordered)
        return out
    folds = _fold_count(ratios, len(distinct))
    per_fold = _assign_folds(ordered, groups, schema, folds, seed)
    split_of = splits_of_folds(Counter(per_fold), ratios)
    for example, fold in zip(ordered, per_fold, strict=True):
        out[split_of[fold]].append(example)
    for name in ("validation", "test"):
        if not out[name] and ratios[SPLITS.index(name)] > 0:
            log.warning("too few groups (%d) for a %s split: it is empty", len(distinct), name)
    return out


def splits_of_folds(sizes: Mapping[int, int], ratios: Sequence[float]) -> dict[int, str]:
    """The split of each fold (`sizes`: rows per fold), so that each split's row count ends closest to its ratio.

    Largest fold first, each goes to the split furthest below its target row count (which is the choice that
    least raises the squared distance to the targets); each split with a positive ratio gets at least one fold
    while there are folds enough, train first. Before this, folds went to splits by index, and 40 rows in folds
    of 21, 17 and 2 became train 2, validation 17, test 21.
    """
    total = sum(sizes.values())
    targets = [ratio / sum(ratios) * total for ratio in ratios]
    counts = [0] * len(SPLITS)
    open_splits = [i for i, ratio in enumerate(ratios) if ratio > 0]
    unfilled = list(open_splits)  # splits that have no fold yet
    order = sorted(sizes, key=lambda fold: (-sizes[fold], fold))
    out: dict[int, str] = {}
    for position, fold in enumerate(order):
        forced = len(order) - position <= len(unfilled)  # the folds left are just enough for the empty splits
        choices = ([0] if 0 in unfilled else unfilled) if forced else open_splits
        pick = max(choices, key=lambda i: (targets[i] - counts[i], -i))  # ties: the earlier split
        counts[pick] += sizes[fold]
        if pick in unfilled:
            unfilled.remove(pick)
        out[fold] = SPLITS[pick]
    return out


def _fold_count(ratios: Sequence[float], n_groups: int) -> int:
    smallest = min(r for r in ratios if r > 0)
    return max(2, min(n_groups, round(1 / smallest)))


def stratum(example: Example, schema: Schema) -> str:
    """What splits keep in proportion: the first single-choice dimension the example answers, with its answer.

    Per-target schemas answer one target's question per row (SemEval-2016): that question and its answer.
    """
    for dim in schema.of_kind("single"):
        if example.labels.get(dim.name) is not None:
            return f"{dim.name}={example.labels[dim.name]}"
    return "unanswered"


def assign_folds(examples: Sequence[Example], schema: Schema, folds: int, seed: int) -> list[int]:
    """Fold index (0..folds-1) per example: grouped by `group_of`, stratified by `stratum`, seeded."""
    groups = [group_of(e, schema) for e in examples]
    return _assign_folds(examples, groups, schema, folds, seed)


def _assign_folds(
    examples: Sequence[Example], groups: Sequence[str], schema: Schema, folds: int, seed: int
) -> list[int]:
    """Fold index per example: StratifiedGroupKFold on the first single-choice dimension, seeded."""
    import numpy as np
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    strata = [stratum(e, schema) for e in examples]
    index = np.arange(len(examples))
    assignment = np.zeros(len(examples), dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the least populated class has fewer members than n_splits"
        try:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            parts = list(splitter.split(index, strata, groups))
        except ValueError:
            splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            parts = list(splitter.split(index, strata, groups))
    for fold, (_, test_index) in enumerate(parts):
        assignment[test_index] = fold
    return assignment.tolist()


def build_dataset(
    examples: Sequence[Example], schema: Schema, seed: int = 42, ratios: Sequence[float] = (0.8, 0.1, 0.1)
):
    """A `datasets.DatasetDict` with train/validation/test: grouped, stratified where possible, seeded."""
    from datasets import Dataset, DatasetDict

    if not examples:
        raise ValueError("no examples to build a dataset from")
    parts = split_examples(examples, schema, seed=seed, ratios=ratios)
    feats = features(schema)

    def to_dataset(rows: list[dict]) -> Dataset:
        if not rows:  # Dataset.from_list([]) cannot take features ("Keys mismatch"); an empty dict can
            return Dataset.from_dict({name: [] for name in feats}, features=feats)
        return Dataset.from_list(rows, features=feats)

    return DatasetDict({name: to_dataset([example_row(e, schema) for e in parts[name]]) for name in SPLITS})
