"""The promotion gate's statistics: the primary metric from per-row counts, and a paired bootstrap over rows.

On a held-out split of 100 rows one changed answer moves macro-F1 by about a point, so "the candidate scored lower"
is no evidence that it is worse. The gate scores both models on the same rows, resamples those rows (the same
resample for both: paired), and refuses a candidate only when it is worse in at least `GATE_CONFIDENCE` of the
resamples. The statistic is exactly training.evaluation's primary metric (mean over dimensions of macro-F1, and
partial span F1): each row contributes counts (true positives, predictions, gold per label), and a resample's score
is computed from its summed counts.

Counts per dimension, one row per example:
  single, multi  [tp per label | predicted per label | gold per label | has gold]   (3 L + 1 columns)
  spans          [partial hits of predictions | partial hits of gold | predicted | gold | has gold]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Refuse only when the candidate is worse in at least this share of the paired resamples ("worse with 90%
# confidence"); a candidate within noise of what serves is promoted, since it learnt from more labels.
GATE_CONFIDENCE = 0.9
COUNTS_FILE = "gate_counts.npz"  # a version's answers on its test split, from the heads fitted without those rows
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same rows and answers always give the same decision


@dataclass(frozen=True)
class RowCounts:
    """Per-row counts of one model's answers on gold rows, per dimension (see the module docstring)."""

    kinds: Mapping[str, str]  # dimension -> single | multi | spans
    counts: Mapping[str, np.ndarray]  # dimension -> (n rows, columns)

    @property
    def n(self) -> int:
        """Number of rows."""
        return next((len(c) for c in self.counts.values()), 0)

    def take(self, rows: Sequence[int]) -> RowCounts:
        """The counts of these rows only (by index), in that order."""
        index = np.asarray(list(rows), dtype=int)
        return RowCounts(dict(self.kinds), {name: c[index] for name, c in self.counts.items()})

    def save(self, path: str | Path) -> None:
        """Write as .npz: one array per dimension, and the kinds as JSON (plain arrays, no pickle)."""
        arrays = {f"counts/{name}": c for name, c in self.counts.items()}
        np.savez(path, kinds=np.array(json.dumps(dict(self.kinds))), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> RowCounts:
        """Read what `save` wrote."""
        with np.load(path, allow_pickle=False) as data:
            kinds = json.loads(str(data["kinds"]))
            return cls(kinds, {name: np.asarray(data[f"counts/{name}"]) for name in kinds})


@dataclass(frozen=True)
class Comparison:
    """Candidate against the model that serves, on the same `n` rows: point scores, the difference and its 90%
    interval over resamples, and the share of resamples in which the candidate is worse."""

    candidate: float | None
    current: float | None
    difference: float | None
    low: float | None
    high: float | None
    worse_confidence: float
    n: int

    @property
    def refused(self) -> bool:
        """Whether the candidate is worse with at least GATE_CONFIDENCE."""
        return self.worse_confidence >= GATE_CONFIDENCE

    def describe(self) -> str:
        """e.g. "0.612 vs 0.640 (difference -0.028, 90% interval -0.061..+0.004; worse in 88% of resamples, n=120)"."""
        if self.candidate is None or self.current is None or self.difference is None:
            return f"no comparable score on n={self.n} rows"
        return (
            f"{self.candidate:.3f} vs {self.current:.3f} (difference {self.difference:+.3f}, 90% interval "
            f"{self.low:+.3f}..{self.high:+.3f}; worse in {self.worse_confidence:.0%} of resamples, n={self.n})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return asdict(self)


def choice_counts(kind: str, labels: Sequence[str], gold: Sequence[Any], answers: np.ndarray) -> np.ndarray:
    """Counts of a single- or multi-choice dimension: `gold` per row (None: no gold), `answers` a (rows, labels)
    0/1 matrix of what the model answered (one-hot for a single choice)."""
    width = len(labels)
    out = np.zeros((len(gold), 3 * width + 1))
    for i, value in enumerate(gold):
        if value is None:
            continue
        truth = np.zeros(width)
        if kind == "single":
            truth[list(labels).index(value)] = 1.0
        else:
            for label in value:
                truth[list(labels).index(label)] = 1.0
        answer = np.asarray(answers[i], dtype=float)
        out[i, :width] = truth * answer
        out[i, width : 2 * width] = answer
        out[i, 2 * width : 3 * width] = truth
        out[i, 3 * width] = 1.0
    return out


def span_counts(gold: Sequence[Any], predicted: Sequence[Sequence[Mapping[str, Any]]]) -> np.ndarray:
    """Counts of a span dimension (partial overlap with the same label, as training.evaluation.span_metrics)."""
    out = np.zeros((len(gold), 5))
    for i, (g_spans, p_spans) in enumerate(zip(gold, predicted, strict=True)):
        if g_spans is None:
            continue
        g = [(s["start"], s["end"], s["label"]) for s in g_spans]
        p = [(s["start"], s["end"], s["label"]) for s in p_spans]

        def overlap(a: tuple, b: tuple) -> bool:
            return a[2] == b[2] and a[0] < b[1] and b[0] < a[1]

        out[i] = [
            sum(any(overlap(x, y) for y in g) for x in p),
            sum(any(overlap(y, x) for x in p) for y in g),
            len(p),
            len(g),
            1.0,
        ]
    return out


def row_counts(
    dimensions: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    probs: Mapping[str, np.ndarray],
    spans: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    thresholds: Mapping[str, float] | None = None,
) -> RowCounts:
    """Counts of a model's answers, given as training.evaluation.evaluate_outputs takes them: a single choice is its
    most probable label, a multi choice ticks labels at or above its threshold (default 0.5)."""
    kinds, counts = {}, {}
    for dim in dimensions:
        name, kind = dim["name"], dim["kind"]
        gold = [row.get(name) for row in rows]
        kinds[name] = kind
        if kind == "spans":
            counts[name] = span_counts(gold, spans[name])
            continue
        p = np.asarray(probs[name])
        if kind == "single":
            answers = np.zeros_like(p)
            if len(p):
                answers[np.arange(len(p)), p.argmax(axis=1)] = 1.0
        else:
            answers = (p >= (thresholds or {}).get(name, 0.5)).astype(float)
        counts[name] = choice_counts(kind, dim["labels"], gold, answers)
    return RowCounts(kinds, counts)


def primary_scores(counts: RowCounts, weights: np.ndarray) -> np.ndarray:
    """The primary metric under each row weighting: `weights` (samples, rows) -> (samples,), NaN where no
    dimension has gold. All-ones weights give training.evaluation's primary score."""
    scores = []
    for name, kind in counts.kinds.items():
        summed = weights @ counts.counts[name]
        has = summed[:, -1] > 0
        if kind == "spans":
            hit_pred, hit_gold, n_pred, n_gold = summed[:, 0], summed[:, 1], summed[:, 2], summed[:, 3]
            precision = np.divide(hit_pred, n_pred, out=np.zeros_like(n_pred), where=n_pred > 0)
            recall = np.divide(hit_gold, n_gold, out=np.zeros_like(n_gold), where=n_gold > 0)
            total = precision + recall
            score = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
        else:
            width = (summed.shape[1] - 1) // 3
            tp, pred, gold = summed[:, :width], summed[:, width : 2 * width], summed[:, 2 * width : 3 * width]
            seen = (pred + gold) > 0  # macro over the labels in gold or answers, as the report computes it
            f1 = np.divide(2 * tp, pred + gold, out=np.zeros_like(tp), where=seen)
            n_seen = seen.sum(axis=1)
            empty = 0.0 if kind == "single" else 1.0
            score = np.where(n_seen > 0, f1.sum(axis=1) / np.maximum(n_seen, 1), empty)
        scores.append(np.where(has, score, np.nan))
    if not scores:
        return np.full(len(weights), np.nan)
    stacked = np.vstack(scores)
    with np.errstate(invalid="ignore"):
        present = ~np.isnan(stacked)
        return np.where(present.any(axis=0), np.nansum(stacked, axis=0) / np.maximum(present.sum(axis=0), 1), np.nan)


def paired_bootstrap(
    candidate: RowCounts, current: RowCounts, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> Comparison:
    """Compare two models' counts on the same rows: point scores, and the difference over paired resamples."""
    n = candidate.n
    if n != current.n:
        raise ValueError(f"the two models were scored on different rows ({n} and {current.n})")
    ones = np.ones((1, n))
    point_a, point_b = primary_scores(candidate, ones)[0], primary_scores(current, ones)[0]
    if n == 0 or np.isnan(point_a) or np.isnan(point_b):
        return Comparison(None, None, None, None, None, 0.0, n)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)
    difference = primary_scores(candidate, weights) - primary_scores(current, weights)
    difference = difference[~np.isnan(difference)]
    low, high = np.quantile(difference, [0.05, 0.95])
    return Comparison(
        float(point_a),
        float(point_b),
        float(point_a - point_b),
        float(low),
        float(high),
        float(np.mean(difference < 0)),
        n,
    )
