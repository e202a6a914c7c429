"""Inter-annotator agreement per dimension and label, and the tasks that need adjudication.

Input is Label Studio task dicts (a JSON export). Who voted is decided exactly as in the acceptance policy
(`training.data.accept`): submitted, not cancelled, one vote per annotator (their latest annotation of the task).
The aggregate each annotator is compared with is the policy's accepted label (ground truth wins, else majority).

What is compared (a "unit" is one coded item; an annotator codes a unit when they answered it):
- single choice: unit = task; the value is the chosen label. An annotator who left the question open did not code it.
- multi choice: per label, unit = task; the value is ticked (1) or not (0). A submitted annotation answers every
  multi-choice dimension (Label Studio stores no empty choices).
- spans: per label, unit = (task, token) with tokens `\\w+` or one punctuation character; the value is whether the
  token lies inside a span of that label. Only annotators who answered the span dimension in that task (per the
  policy: marked at least one span there, unless `empty_spans_answer`) code its tokens.

Figures:
- Krippendorff's alpha, nominal, from the `krippendorff` package (missing codes allowed; None when undefined: no
  unit coded twice, or no variation at all);
- percent agreement: the share of agreeing pairs of codes within a unit, averaged over units coded at least twice;
- Cohen's kappa (scikit-learn) for every pair of named annotators on the units both coded, and their mean over
  pairs where it is defined;
- each named annotator against the aggregate: accuracy and Cohen's kappa on the units they coded that have an
  accepted label (the aggregate includes the annotator's own vote, so these figures lean optimistic);
- multi and spans dimensions report every figure per label, and as the dimension's figure the mean over the labels
  someone used where it is defined (macro); annotator-vs-aggregate figures pool every label's decisions (micro).
Annotations without `completed_by` count for alpha and percent agreement but not for per-annotator figures.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from annotation_config.annotations import annotator_of, counted, is_cancelled, task_key
from annotation_config.regions import RegionError, results_to_labels
from annotation_config.schema import Dimension, Schema
from training.data import AcceptancePolicy, AcceptedData, accept, answered, latest_votes

_TOKEN = re.compile(r"\w+|[^\w\s]")

AnnotatorName = Callable[[Any], str]


@dataclass
class Unit:
    """One coded item: the codes of each annotator (None key: anonymous) and the accepted value, if any."""

    codes: list[tuple[str | None, Hashable]] = field(default_factory=list)
    aggregate: Hashable | None = None


def tokens(text: str) -> list[tuple[int, int]]:
    """Token offsets (code points) used as span-agreement units: words and single punctuation characters."""
    return [(m.start(), m.end()) for m in _TOKEN.finditer(text or "")]


# ---- the statistics, on lists of units ----


def _clean(value: float | None) -> float | None:
    import math

    return None if value is None or math.isnan(value) else float(value)


def krippendorff_alpha(units: Sequence[Unit], domain: Sequence[Hashable]) -> float | None:
    """Krippendorff's alpha (nominal) over the units; None when it is undefined."""
    import numpy as np
    from krippendorff import alpha

    index = {value: i for i, value in enumerate(domain)}
    counts = np.zeros((len(units), max(len(domain), 1)), dtype=float)
    for row, unit in enumerate(units):
        for _, value in unit.codes:
            counts[row, index[value]] += 1
    counts = counts[counts.sum(axis=1) >= 2]
    if not len(counts):
        return None
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        try:
            return _clean(alpha(value_counts=counts, level_of_measurement="nominal"))
        except (ValueError, ZeroDivisionError):
            return None


def percent_agreement(units: Sequence[Unit]) -> float | None:
    """Mean over units coded at least twice of the share of agreeing (ordered) pairs of codes."""
    shares = []
    for unit in units:
        n = len(unit.codes)
        if n < 2:
            continue
        counts = Counter(value for _, value in unit.codes)
        shares.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
    return sum(shares) / len(shares) if shares else None


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable], domain: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two aligned code lists (scikit-learn); None when undefined (e.g. one constant label)."""
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    if len(a) < 2:
        return None
    index = {value: i for i, value in enumerate(domain)}
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        try:
            value = cohen_kappa_score([index[x] for x in a], [index[x] for x in b], labels=list(range(len(domain))))
        except ValueError:
            return None
    return _clean(value)


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def pairwise(units: Sequence[Unit], domain: Sequence[Hashable]) -> list[dict[str, Any]]:
    """Cohen's kappa and percent agreement for every pair of named annotators, on the units both coded."""
    by_annotator: dict[str, dict[int, Hashable]] = defaultdict(dict)
    for i, unit in enumerate(units):
        for who, value in unit.codes:
            if who is not None:
                by_annotator[who][i] = value
    pairs = []
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        common = sorted(set(by_annotator[a]) & set(by_annotator[b]))
        if not common:
            continue
        left = [by_annotator[a][i] for i in common]
        right = [by_annotator[b][i] for i in common]
        agree = sum(x == y for x, y in zip(left, right, strict=True)) / len(common)
        pairs.append({"a": a, "b": b, "n": len(common), "kappa": cohen_kappa(left, right, domain), "agreement": agree})
    return pairs


def against_aggregate(units: Sequence[Unit], domain: Sequence[Hashable]) -> list[dict[str, Any]]:
    """Accuracy and Cohen's kappa of each named annotator against the accepted value, where there is one."""
    pairs: dict[str, list[tuple[Hashable, Hashable]]] = defaultdict(list)
    for unit in units:
        if unit.aggregate is None:
            continue
        for who, value in unit.codes:
            if who is not None:
                pairs[who].append((value, unit.aggregate))
    out = []
    for who in sorted(pairs):
        mine, agg = zip(*pairs[who], strict=True)
        accuracy = sum(x == y for x, y in pairs[who]) / len(pairs[who])
        out.append(
            {"annotator": who, "n": len(pairs[who]), "accuracy": accuracy, "kappa": cohen_kappa(mine, agg, domain)}
        )
    return out


def unit_figures(units: Sequence[Unit], domain: Sequence[Hashable]) -> dict[str, Any]:
    """Alpha, percent agreement and pairwise kappa (per pair and mean) of one set of units."""
    pairs = pairwise(units, domain)
    return {
        "units": sum(len(u.codes) >= 2 for u in units),
        "alpha": krippendorff_alpha(units, domain),
        "percent_agreement": percent_agreement(units),
        "kappa_mean": _mean(p["kappa"] for p in pairs),
        "pairs": pairs,
    }


# ---- from Label Studio tasks to units ----


@dataclass
class _Coded:
    key: str
    data: Mapping[str, Any]
    records: list[tuple[str | None, dict]]  # (annotator name, label record) per vote
    aggregate: dict[str, Any] | None  # accepted labels of the task, if any


def _coded_tasks(
    tasks: Sequence[Mapping[str, Any]], schema: Schema, accepted: Mapping[str, dict], name: AnnotatorName
) -> list[_Coded]:
    out = []
    for index, task in enumerate(tasks):
        data = dict(task.get("data") or {})
        key = task_key(task, schema, index)
        records = []
        for annotation in latest_votes(task.get("annotations") or []):
            try:
                record = results_to_labels(schema, annotation.get("result") or [], data)
            except RegionError:
                continue  # the policy holds the whole task out; it is listed for adjudication
            who = annotator_of(annotation)
            records.append((None if who is None else name(who), record))
        if records:
            out.append(_Coded(key, data, records, accepted.get(key)))
    return out


def _single_units(dim: Dimension, coded: Sequence[_Coded], policy: AcceptancePolicy) -> list[Unit]:
    units = []
    for task in coded:
        codes = [(who, r[dim.name]) for who, r in task.records if answered(dim, r, policy)]
        if codes:
            units.append(Unit(codes, (task.aggregate or {}).get(dim.name)))
    return units


def _multi_units(dim: Dimension, coded: Sequence[_Coded], policy: AcceptancePolicy) -> dict[str, list[Unit]]:
    units: dict[str, list[Unit]] = {label: [] for label in dim.values}
    for task in coded:
        answers = [(who, set(r[dim.name])) for who, r in task.records if answered(dim, r, policy)]
        if not answers:
            continue
        agg = (task.aggregate or {}).get(dim.name)
        for label in dim.values:
            codes: list[tuple[str | None, Hashable]] = [(who, int(label in ticked)) for who, ticked in answers]
            units[label].append(Unit(codes, None if agg is None else int(label in agg)))
    return units


def _covered(spans: Iterable[Mapping[str, Any]], label: str, toks: Sequence[tuple[int, int]]) -> list[int]:
    marks = [(s["start"], s["end"]) for s in spans if s["label"] == label]
    return [int(any(start < end_t and start_t < end for start, end in marks)) for start_t, end_t in toks]


def _span_units(dim: Dimension, coded: Sequence[_Coded], policy: AcceptancePolicy) -> dict[str, list[Unit]]:
    units: dict[str, list[Unit]] = {label: [] for label in dim.values}
    for task in coded:
        answers = [(who, r[dim.name]) for who, r in task.records if answered(dim, r, policy)]
        if not answers:
            continue
        toks = tokens(str(task.data.get(dim.field or "") or ""))
        agg = (task.aggregate or {}).get(dim.name)
        for label in dim.values:
            per_who = [(who, _covered(spans, label, toks)) for who, spans in answers]
            agg_marks = None if agg is None else _covered(agg, label, toks)
            for t in range(len(toks)):
                codes: list[tuple[str | None, Hashable]] = [(who, marks[t]) for who, marks in per_who]
                units[label].append(Unit(codes, None if agg_marks is None else agg_marks[t]))
    return units


def dimension_agreement(dim: Dimension, coded: Sequence[_Coded], policy: AcceptancePolicy) -> dict[str, Any]:
    """Every figure for one dimension (per label too, for multi choice and spans)."""
    if dim.kind == "single":
        units = _single_units(dim, coded, policy)
        figures = unit_figures(units, dim.values)
        return {"kind": dim.kind, **figures, "annotators": against_aggregate(units, dim.values)}
    per_label = _multi_units(dim, coded, policy) if dim.kind == "multi" else _span_units(dim, coded, policy)
    labels = {label: unit_figures(units, (0, 1)) for label, units in per_label.items()}
    pooled = [unit for units in per_label.values() for unit in units]
    # Labels nobody used agree trivially: the dimension's means count only labels someone ticked or marked.
    used = [labels[label] for label, units in per_label.items() if any(v for u in units for _, v in u.codes)]
    return {
        "kind": dim.kind,
        "unit": "task" if dim.kind == "multi" else "token",
        "units": max((f["units"] for f in labels.values()), default=0),
        "labels_used": len(used),
        "alpha": _mean(f["alpha"] for f in used),
        "percent_agreement": _mean(f["percent_agreement"] for f in used),
        "kappa_mean": _mean(f["kappa_mean"] for f in used),
        "labels": labels,
        "annotators": against_aggregate(pooled, (0, 1)),
    }


def agreement_report(
    tasks: Sequence[Mapping[str, Any]],
    schema: Schema,
    policy: AcceptancePolicy | None = None,
    annotator_name: AnnotatorName = str,
    accepted: AcceptedData | None = None,
) -> dict[str, Any]:
    """Counts, per-dimension agreement and the adjudication list for Label Studio task dicts (JSON-ready).

    `accepted`: the acceptance policy's result for these tasks under `policy`, when the caller has it already."""
    policy = policy or AcceptancePolicy()
    accepted = accepted if accepted is not None else accept(tasks, schema, policy)
    by_key = {example.key: example.labels for example in accepted.examples}
    coded = _coded_tasks(tasks, schema, by_key, annotator_name)
    annotations = [a for t in tasks for a in (t.get("annotations") or []) if isinstance(a, Mapping)]
    named = {annotator_of(a) for a in counted(annotations)} - {None}
    counts = {
        "tasks": len(tasks),
        "annotated_tasks": len(coded),
        "tasks_with_2_or_more_annotators": sum(len(t.records) >= 2 for t in coded),
        "annotations": len(counted(annotations)),
        "cancelled_annotations": sum(is_cancelled(a) for a in annotations),
        "annotators": len(named),
        "accepted_tasks": len(accepted.examples),
        "held_out": len(accepted.held_out),
    }
    return {
        "counts": counts,
        "policy": {
            "min_agreement": policy.min_agreement,
            "min_annotators": policy.min_annotators,
            "empty_spans_answer": policy.empty_spans_answer,
        },
        "dimensions": {dim.name: dimension_agreement(dim, coded, policy) for dim in schema.dimensions},
        "adjudication": [held.to_dict() for held in accepted.held_out],
    }


def summary_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per dimension, then one per label of multi and span dimensions (for tables and the card)."""
    rows = []
    for name, dim in (report.get("dimensions") or {}).items():
        rows.append({"dimension": name, "label": "", "kind": dim["kind"], **_figures(dim)})
        for label, figures in (dim.get("labels") or {}).items():
            rows.append({"dimension": name, "label": label, "kind": dim["kind"], **_figures(figures)})
    return rows


def _figures(figures: Mapping[str, Any]) -> dict[str, Any]:
    return {k: figures.get(k) for k in ("units", "alpha", "kappa_mean", "percent_agreement")}
