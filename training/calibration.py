"""Temperature scaling per head (fitted on validation by minimising NLL) and expected calibration error.

One temperature T per single-choice head (softmax(logits / T)) and per multi-choice head (sigmoid(logits / T),
shared by its labels). The fit is a grid over log T followed by a golden-section refinement: deterministic, no
torch, and exact enough (NLL is smooth and unimodal in log T for these cases). Span heads are not scaled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

T_MIN, T_MAX = 0.05, 20.0


@dataclass
class Temperature:
    """A fitted temperature with the validation NLL before and after, and how many labels it saw."""

    temperature: float = 1.0
    nll_before: float | None = None
    nll_after: float | None = None
    n: int = 0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / T."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Element-wise sigmoid of logits / T."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def nll(logits: np.ndarray, labels: np.ndarray, kind: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood: `labels` are class indices (single) or a 0/1 matrix (multi)."""
    logits = np.asarray(logits, dtype=np.float64)
    if kind == "single":
        z = logits / temperature
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(labels)), np.asarray(labels, dtype=int)].mean())
    z = logits / temperature
    y = np.asarray(labels, dtype=np.float64)
    # log(1 + e^z) - y z, stable for large |z|
    return float((np.logaddexp(0.0, z) - y * z).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, kind: str) -> Temperature:
    """The temperature minimising validation NLL (T = 1 when there are no labels)."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        return Temperature()
    objective = lambda log_t: nll(logits, labels, kind, math.exp(log_t))  # noqa: E731
    grid = np.linspace(math.log(T_MIN), math.log(T_MAX), 61)
    values = [objective(g) for g in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = objective(a), objective(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = objective(b)
    log_t = (lo + hi) / 2
    if objective(log_t) > values[best]:
        log_t = grid[best]
    before = nll(logits, labels, kind, 1.0)
    after = objective(log_t)
    if after > before:  # never worse than leaving the head alone
        return Temperature(1.0, before, before, len(logits))
    return Temperature(float(math.exp(log_t)), before, after, len(logits))


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the sample-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidences = np.asarray(confidences, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if confidences.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(correct[mask].mean() - confidences[mask].mean())
    return float(total / confidences.size)


def reliability_bins(confidences: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per confidence bin: its range, mean confidence, accuracy and count (for reliability diagrams)."""
    confidences = np.asarray(confidences, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "confidence": float(confidences[mask].mean()) if mask.any() else float("nan"),
                "accuracy": float(correct[mask].mean()) if mask.any() else float("nan"),
                "count": int(mask.sum()),
            }
        )
    return out


def confidence_and_correct(probs: np.ndarray, labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per decision: the confidence of the answer given and whether it was right (multi: each label a decision)."""
    probs = np.asarray(probs, dtype=np.float64)
    if kind == "single":
        return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(labels, dtype=int))
    predicted = probs >= 0.5
    return np.where(predicted, probs, 1.0 - probs).ravel(), (predicted == (np.asarray(labels) > 0.5)).ravel()


def save_calibration(temperatures: Mapping[str, Temperature], path: str | Path) -> None:
    """Write calibration.json: {dimension: {temperature, nll_before, nll_after, n}}."""
    Path(path).write_text(json.dumps({k: asdict(v) for k, v in temperatures.items()}, indent=2) + "\n")


def load_calibration(path: str | Path) -> dict[str, Temperature]:
    """Read calibration.json (an absent file means T = 1 everywhere)."""
    path = Path(path)
    if not path.exists():
        return {}
    raw: dict[str, Any] = json.loads(path.read_text())
    return {k: Temperature(**v) for k, v in raw.items()}


THRESHOLD_GRID = np.round(np.arange(0.10, 0.901, 0.05), 2)
THRESHOLDS_FILE = "thresholds.json"


def fit_threshold(probs: np.ndarray, labels: Any) -> float:
    """The decision threshold of a multi-choice head that maximises micro-F1 on validation rows ([rows, labels]
    probabilities and 0/1 labels), from a grid of 0.10-0.90; ties go to the threshold nearest 0.5.

    Balanced heads at 0.5 tick rare labels too readily and common ones too rarely for micro-F1; one threshold per
    head (not per label: a label with a handful of validation positives would overfit) is the measured middle way.
    """
    y = np.asarray(labels, dtype=bool)
    best, best_f1 = 0.5, -1.0
    for t in sorted(THRESHOLD_GRID, key=lambda t: abs(t - 0.5)):
        p = np.asarray(probs) >= t
        tp, predicted, gold = int((p & y).sum()), int(p.sum()), int(y.sum())
        f1 = 2 * tp / (predicted + gold) if predicted + gold else 1.0
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), f1
    return best


def save_thresholds(thresholds: Mapping[str, float], path: str | Path) -> None:
    """Write thresholds.json: {multi-choice dimension: decision threshold}."""
    Path(path).write_text(json.dumps(dict(thresholds), indent=2) + "\n")


def load_thresholds(path: str | Path) -> dict[str, float]:
    """Read thresholds.json (absent: 0.5 everywhere, as models before 2026-12-03 decided)."""
    path = Path(path)
    return {k: float(v) for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
