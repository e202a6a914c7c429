"""How certain a task's suggestions are: small swappable strategies in the spirit of small-text's query strategies.

Every model rung (cold start, instant learner, fine-tuned model) hands the strategy one probability vector per
choice dimension: a softmax distribution for a single-choice dimension, per-label "on" probabilities for a
multi-choice one (each label is a yes/no decision). The strategy turns each dimension into a certainty in [0, 1]
and the task score is their mean. Label Studio shows that score and sorts by it, so the Data Manager tab that
`provision` creates (score ascending) puts the least certain tasks first.
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
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    return np.stack([p, 1.0 - p], axis=-1)


class LeastConfidence:
    """Certainty = probability of the chosen answer (multi choice: of its least certain yes/no decision)."""

    name = "least_confidence"

    def certainty(self, probs: np.ndarray, kind: Kind) -> float:
        """Max probability, rescaled so that a uniform distribution scores 0."""
        rows = _binary(probs) if kind == "multi" else np.asarray(probs, dtype=np.float64)[None, :]
        k = rows.shape[-1]
        if k < 2 or rows.size == 0:
            return 1.0
        top = rows.max(axis=-1)
        return float(np.clip((top.min() - 1.0 / k) / (1.0 - 1.0 / k), 0.0, 1.0))


class Margin:
    """Certainty = gap between the two likeliest answers (multi choice: the smallest |2p - 1| over labels)."""

    name = "margin"

    def certainty(self, probs: np.ndarray, kind: Kind) -> float:
        """Best minus second best probability."""
        rows = _binary(probs) if kind == "multi" else np.asarray(probs, dtype=np.float64)[None, :]
        if rows.shape[-1] < 2 or rows.size == 0:
            return 1.0
        ordered = np.sort(rows, axis=-1)
        return float(np.clip((ordered[:, -1] - ordered[:, -2]).min(), 0.0, 1.0))


class Entropy:
    """Certainty = 1 - normalised entropy (multi choice: of its most uncertain label)."""

    name = "entropy"

    def certainty(self, probs: np.ndarray, kind: Kind) -> float:
        """One minus the entropy divided by its maximum, log k."""
        rows = _binary(probs) if kind == "multi" else np.asarray(probs, dtype=np.float64)[None, :]
        k = rows.shape[-1]
        if k < 2 or rows.size == 0:
            return 1.0
        p = np.clip(rows, 1e-12, 1.0)
        entropy = -(p * np.log(p)).sum(axis=-1) / math.log(k)
        return float(np.clip(1.0 - entropy.max(), 0.0, 1.0))


STRATEGIES: dict[str, Uncertainty] = {s.name: s for s in (LeastConfidence(), Margin(), Entropy())}
DEFAULT_STRATEGY = "least_confidence"


def task_score(
    distributions: Mapping[str, tuple[Kind, np.ndarray]], strategy: Uncertainty | str = DEFAULT_STRATEGY
) -> float:
    """The task's certainty: the mean over its choice dimensions of `strategy`'s certainty (0.0 with none)."""
    chosen = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    values = [chosen.certainty(probs, kind) for kind, probs in distributions.values()]
    return float(np.mean(values)) if values else 0.0
