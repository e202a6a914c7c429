"""How certain a task's suggestions are: small swappable strategies in the spirit of small-text's query strategies.

Every model rung (cold start, instant learner, fine-tuned model) hands the strategy one probability vector per
choice dimension: a softmax distribution for a single-choice dimension, per-label "on" probabilities for a
multi-choice one (each label is a yes/no decision). The strategy turns each dimension into a certainty in [0, 1]
and the task score is their mean. Label Studio shows that score and sorts by it, so the Data Manager tab that
`provision` creates (score ascending) puts the least certain tasks first.

The measures, for a single-choice distribution p over k labels (normalised to sum 1 first):

- least_confidence (the default): (max p - 1/k) / (1 - 1/k), the top probability rescaled so that a uniform
  distribution scores 0 and a one-hot one 1, which makes dimensions with different label counts comparable;
- margin: p(1) - p(2), the gap between the two likeliest labels;
- entropy: 1 - H(p) / log k, with H(p) = -sum p log p.

A multi-choice dimension is as certain as its least certain yes/no label: each label's on-probability q is the
binary distribution (q, 1 - q), and the dimension's certainty is the minimum over its labels (least confidence and
margin both give |2q - 1| there). A task with no choice dimension scores 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, Protocol

import numpy as np

Kind = Literal["single", "multi"]


class Uncertainty(Protocol):
    """A strategy: the certainty of one dimension's distribution (1 = sure, 0 = no idea)."""

    name: str

    def certainty(self, probs: np.ndarray, kind: Kind) -> float: ...


def _binary(probs: np.ndarray) -> np.ndarray:
    """[n, 2] yes/no distributions of a multi-choice dimension's labels."""
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 0.0, 1.0)
    return np.stack([p, 1.0 - p], axis=-1)


def _rows(probs: np.ndarray, kind: Kind) -> np.ndarray | float:
    """[n, k] distributions to score (one row for a single choice), or the certainty itself when there is nothing
    to score: 0.0 when they carry no information (NaN, inf, all zero), 1.0 when only one answer is possible."""
    p = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        return 0.0  # a NaN or inf from a broken head: treat the dimension as unknown, so it sorts first
    if kind == "multi":
        rows = _binary(p)
    elif kind == "single":
        p = np.clip(p.reshape(1, -1), 0.0, None)
        total = p.sum()
        if total <= 0:
            return 0.0
        rows = p / total  # callers may hand over scores that do not quite sum to 1 (rounding, a capped score)
    else:
        raise ValueError(f"uncertainty: dimension kind must be 'single' or 'multi' (got {kind!r})")
    if rows.shape[-1] < 2 or rows.size == 0:
        return 1.0  # one possible answer (or no label at all): nothing to be unsure about
    return rows


class _Measure:
    """A strategy that measures [n, k] distributions; the cases with nothing to measure are `_rows`'s."""

    name = ""

    def certainty(self, probs: np.ndarray, kind: Kind) -> float:
        """The certainty of one dimension's distribution (1 = sure, 0 = no idea)."""
        rows = _rows(probs, kind)
        return self.measure(rows) if isinstance(rows, np.ndarray) else float(rows)

    def measure(self, rows: np.ndarray) -> float:
        """The certainty of [n, k] distributions with k >= 2: the least certain row's."""
        raise NotImplementedError


class LeastConfidence(_Measure):
    """Certainty = the chosen answer's probability, rescaled (multi choice: its least certain yes/no decision)."""

    name = "least_confidence"

    def measure(self, rows: np.ndarray) -> float:
        """Max probability, rescaled so that a uniform distribution scores 0."""
        k = rows.shape[-1]
        top = rows.max(axis=-1)
        return float(np.clip((top.min() - 1.0 / k) / (1.0 - 1.0 / k), 0.0, 1.0))


class Margin(_Measure):
    """Certainty = gap between the two likeliest answers (multi choice: the smallest |2p - 1| over labels)."""

    name = "margin"

    def measure(self, rows: np.ndarray) -> float:
        """Best minus second best probability."""
        ordered = np.sort(rows, axis=-1)
        return float(np.clip((ordered[:, -1] - ordered[:, -2]).min(), 0.0, 1.0))


class Entropy(_Measure):
    """Certainty = 1 - normalised entropy (multi choice: of its most uncertain label)."""

    name = "entropy"

    def measure(self, rows: np.ndarray) -> float:
        """One minus the entropy divided by its maximum, log k."""
        k = rows.shape[-1]
        p = np.clip(rows, 1e-12, 1.0)  # 0 log 0 = 0; the clip keeps log finite at a negligible cost
        entropy = -(rows * np.log(p)).sum(axis=-1) / math.log(k)
        return float(np.clip(1.0 - entropy.max(), 0.0, 1.0))


STRATEGIES: dict[str, Uncertainty] = {s.name: s for s in (LeastConfidence(), Margin(), Entropy())}
DEFAULT_STRATEGY = "least_confidence"


def get_strategy(strategy: Uncertainty | str) -> Uncertainty:
    """The strategy with this name (or the strategy itself); one-line ValueError for an unknown name."""
    if not isinstance(strategy, str):
        return strategy
    try:
        return STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown uncertainty strategy {strategy!r}; use one of {', '.join(STRATEGIES)}") from None


def task_score(
    distributions: Mapping[str, tuple[Kind, np.ndarray]], strategy: Uncertainty | str = DEFAULT_STRATEGY
) -> float:
    """The task's certainty: the mean over its choice dimensions of `strategy`'s certainty (0.0 with none)."""
    chosen = get_strategy(strategy)
    values = [chosen.certainty(probs, kind) for kind, probs in distributions.values()]
    return float(np.mean(values)) if values else 0.0
