"""Evaluation per dimension: macro-F1, stance F_avg, multi-label micro/macro-F1, exact and partial span F1, ECE.

`evaluate_outputs` scores probabilities against gold rows (dataset rows: one column per dimension, None when
missing); `evaluate_model` runs a saved model on accepted examples; `save_report` writes report.json and PNG
plots (a confusion matrix per single-choice dimension, one reliability diagram).

The primary metric, used by the promotion gate, is the mean over dimensions with gold labels of: macro-F1
(single and multi choice) and partial-overlap span F1 (spans).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.calibration import (
    confidence_and_correct,
    expected_calibration_error,
    nll,
    reliability_bins,
)

ABSTAIN_LABELS = ("none", "not_applicable", "neutral", "other")  # see evaluate_predictions
PRIMARY = "mean over dimensions of macro-F1 (single, multi) and partial span F1 (spans)"
STANCE_POLES = ("favor", "against")
# Fewer training rows than this answered otherwise than the commonest answer cannot tell whether the cold start beats
# that answer: one rare label, right or wrong, swings macro-F1 by half. The cold start then stays (training/prior.py).
# On the sample dev set (NATO enlargement: 5 of 108 paragraphs against) judging on 1-2 rare answers dropped it and
# cost 0.13 of that question's macro-F1 at 20 labels (BENCHMARKS.md, issue 15 round 5).
PRIOR_JUDGE_MIN_OTHERS = 5


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _per_label(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    out = {}
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        scores = _prf(tp, sum(p == label for p in pred), sum(g == label for g in gold))
        out[label] = {**scores, "support": sum(g == label for g in gold)}
    return out


def single_metrics(
    dim: Mapping[str, Any], gold: Sequence[str], probs: np.ndarray, uncalibrated: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 (over labels in gold or predictions), per-label scores, confusion matrix, ECE, NLL."""
    labels = list(dim["labels"])
    index = np.array([labels.index(g) for g in gold], dtype=int)
    pred = [labels[i] for i in probs.argmax(axis=1)]
    seen = [label for label in labels if label in set(gold) | set(pred)]
    per_label = _per_label(gold, pred, labels)
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for g, p in zip(index, probs.argmax(axis=1), strict=True):
        matrix[g, p] += 1
    confidence, correct = confidence_and_correct(probs, index, "single")
    out: dict[str, Any] = {
        "kind": "single",
        "n": len(gold),
        "accuracy": float(np.mean(correct)),
        "macro_f1": float(np.mean([per_label[label]["f1"] for label in seen])) if seen else 0.0,
        "per_label": per_label,
        "confusion": {"labels": labels, "matrix": matrix.tolist()},
        "ece": expected_calibration_error(confidence, correct),
        "nll": nll(np.log(np.clip(probs, 1e-12, 1.0)), index, "single"),
        "reliability": reliability_bins(confidence, correct),
    }
    if uncalibrated is not None:
        out["ece_uncalibrated"] = expected_calibration_error(*confidence_and_correct(uncalibrated, index, "single"))
    if dim.get("target") and all(pole in labels for pole in STANCE_POLES):
        out["f_avg"] = float(np.mean([per_label[pole]["f1"] for pole in STANCE_POLES]))
    return out


def multi_metrics(
    dim: Mapping[str, Any],
    gold: Sequence[Sequence[str]],
    probs: np.ndarray,
    uncalibrated: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Micro- and macro-F1 (macro over labels in gold or predictions) at the head's threshold, per label, ECE,
    NLL."""
    labels = list(dim["labels"])
    y = np.array([[label in set(g) for label in labels] for g in gold], dtype=bool).reshape(len(gold), len(labels))
    p = probs >= threshold
    per_label = {}
    for j, label in enumerate(labels):
        scores = _prf(int((y[:, j] & p[:, j]).sum()), int(p[:, j].sum()), int(y[:, j].sum()))
        per_label[label] = {**scores, "support": int(y[:, j].sum())}
    seen = [label for j, label in enumerate(labels) if y[:, j].any() or p[:, j].any()]
    confidence, correct = confidence_and_correct(probs, y, "multi")
    clipped = np.clip(probs, 1e-12, 1 - 1e-12)
    out: dict[str, Any] = {
        "kind": "multi",
        "n": len(gold),
        "micro_f1": _prf(int((y & p).sum()), int(p.sum()), int(y.sum()))["f1"],
        "macro_f1": float(np.mean([per_label[label]["f1"] for label in seen])) if seen else 1.0,
        "exact_match": float((y == p).all(axis=1).mean()) if len(gold) else 0.0,
        "per_label": per_label,
        "ece": expected_calibration_error(confidence, correct),
        "nll": nll(np.log(clipped) - np.log1p(-clipped), y, "multi"),
        "reliability": reliability_bins(confidence, correct),
    }
    if uncalibrated is not None:
        out["ece_uncalibrated"] = expected_calibration_error(*confidence_and_correct(uncalibrated, y, "multi"))
    return out


def span_metrics(
    dim: Mapping[str, Any], gold: Sequence[Sequence[Mapping[str, Any]]], pred: Sequence[Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """Exact F1 (same start, end and label) and partial F1 (overlap with the same label), overall and per label."""

    def score(label: str | None) -> dict[str, dict[str, float]]:
        exact_tp = partial_pred = partial_gold = n_pred = n_gold = 0
        for g_spans, p_spans in zip(gold, pred, strict=True):
            g = [(s["start"], s["end"], s["label"]) for s in g_spans if label in (None, s["label"])]
            p = [(s["start"], s["end"], s["label"]) for s in p_spans if label in (None, s["label"])]
            n_gold, n_pred = n_gold + len(g), n_pred + len(p)
            exact_tp += len(set(g) & set(p))
            overlap = lambda a, b: a[2] == b[2] and a[0] < b[1] and b[0] < a[1]  # noqa: E731
            partial_pred += sum(any(overlap(x, y) for y in g) for x in p)
            partial_gold += sum(any(overlap(y, x) for x in p) for y in g)
        exact = _prf(exact_tp, n_pred, n_gold)
        precision = partial_pred / n_pred if n_pred else 0.0
        recall = partial_gold / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "exact": exact,
            "partial": {"precision": precision, "recall": recall, "f1": f1},
            "support": n_gold,
            "predicted": n_pred,
        }

    overall = score(None)
    return {
        "kind": "spans",
        "n": len(gold),
        **overall,
        "per_label": {label: score(label) for label in dim["labels"]},
    }


def evaluate_outputs(
    dimensions: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    probs: Mapping[str, np.ndarray],
    spans: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    uncalibrated: Mapping[str, np.ndarray] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A report dict for predictions on `rows` (gold labels per dimension; None = missing, skipped); a multi-choice
    head ticks the labels at or above its threshold (default 0.5)."""
    report: dict[str, Any] = {"n": len(rows), "primary_metric": PRIMARY, "dimensions": {}}
    stance_gold: list[str] = []
    stance_pred: list[str] = []
    for dim in dimensions:
        name, kind = dim["name"], dim["kind"]
        have = [i for i, row in enumerate(rows) if row.get(name) is not None]
        if not have:
            report["dimensions"][name] = {"kind": kind, "n": 0}
            continue
        gold = [rows[i][name] for i in have]
        if kind == "spans":
            report["dimensions"][name] = span_metrics(dim, gold, [spans[name][i] for i in have])
            continue
        p = probs[name][have]
        raw = uncalibrated[name][have] if uncalibrated is not None else None
        if kind == "single":
            metrics = single_metrics(dim, gold, p, raw)
            if "f_avg" in metrics:
                stance_gold += gold
                stance_pred += [dim["labels"][k] for k in p.argmax(axis=1)]
        else:
            metrics = multi_metrics(dim, gold, p, raw, (thresholds or {}).get(name, 0.5))
        if dim.get("target"):
            metrics["target"] = dim["target"]
        report["dimensions"][name] = metrics
    if stance_gold:
        per_pole = _per_label(stance_gold, stance_pred, STANCE_POLES)
        report["stance_f_avg"] = float(np.mean([per_pole[pole]["f1"] for pole in STANCE_POLES]))
        labels = sorted(set(stance_gold) | set(stance_pred))
        report["stance_macro_f1"] = float(
            np.mean([v["f1"] for v in _per_label(stance_gold, stance_pred, labels).values()])
        )
    report["primary"] = primary_score(report)
    return report


def evaluate_predictions(schema: Any, gold: Sequence[Mapping[str, Any]], predictions: Sequence[Any]) -> dict[str, Any]:
    """A report for any predictor's answers (annotation_config.regions.Prediction) against gold label records.

    The answer counts, not its score: a single choice is one-hot on the label given. A question the predictor left
    unanswered (an abstaining cold start) counts as the schema's "none"-like label, the first of `ABSTAIN_LABELS`
    the dimension has, else as its first label: abstaining is not free.
    """
    dimensions = schema_dimensions(schema)
    probs, spans = answer_matrices(dimensions, predictions)
    return evaluate_outputs(dimensions, list(gold), probs, spans)


def schema_dimensions(schema: Any) -> list[dict[str, Any]]:
    """The schema's dimensions as evaluate_outputs takes them (name, kind, labels, target)."""
    return [
        {"name": d.name, "kind": d.kind, "labels": list(d.values), "target": {"id": d.target.id, "name": d.target.name}}
        if d.target
        else {"name": d.name, "kind": d.kind, "labels": list(d.values)}
        for d in schema.dimensions
    ]


def answer_matrices(
    dimensions: Sequence[Mapping[str, Any]], predictions: Sequence[Any]
) -> tuple[dict[str, np.ndarray], dict[str, list[list[Mapping[str, Any]]]]]:
    """(probabilities, spans) as evaluate_outputs takes them, for predictors' answers (Predictions, or their label
    dicts): one-hot on each answer, an unanswered single choice as its abstain label (see evaluate_predictions)."""
    answers = [getattr(p, "labels", p) for p in predictions]
    probs: dict[str, np.ndarray] = {}
    spans: dict[str, list[list[Mapping[str, Any]]]] = {}
    for dim in dimensions:
        name, labels = dim["name"], dim["labels"]
        if dim["kind"] == "spans":
            spans[name] = [list(a.get(name) or []) for a in answers]
            continue
        matrix = np.zeros((len(answers), len(labels)))
        for i, given in enumerate(answers):
            answer = given.get(name)
            if dim["kind"] == "single":
                if answer not in labels:
                    answer = next((v for v in ABSTAIN_LABELS if v in labels), labels[0])
                matrix[i, labels.index(answer)] = 1.0
            else:
                for value in answer or []:
                    if value in labels:
                        matrix[i, labels.index(value)] = 1.0
        probs[name] = matrix
    return probs, spans


def answers_row_counts(
    dimensions: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], predictions: Sequence[Any]
):
    """training.gate.RowCounts of predictors' answers on gold `rows` (the gate's rivals: cold start, instant
    learner)."""
    from training.gate import row_counts

    probs, spans = answer_matrices(dimensions, predictions)
    return row_counts(dimensions, rows, probs, spans)


def model_row_counts(model_dir: str | Path, rows: Sequence[Mapping[str, Any]]):
    """training.gate.RowCounts of a saved model's answers on gold dataset `rows`, with its calibration and
    thresholds applied (what it serves)."""
    from training.gate import row_counts
    from training.predict import TrainedPredictor

    predictor = TrainedPredictor(model_dir)
    raw = predictor.outputs(list(rows))
    probs = predictor.probabilities(raw, list(rows))
    return row_counts(predictor.dimensions, rows, probs, raw.spans, predictor.thresholds)


def prior_scores(
    schema: Any, names: Sequence[str], rows: Sequence[Mapping[str, Any]], answers: Sequence[Any]
) -> dict[str, dict[str, Any]]:
    """Per dimension in `names`: the macro-F1 of the cold start's `answers` on labelled `rows` (a column per
    dimension, None when unanswered) and that of always giving the rows' most common answer (a single choice's
    commonest label, a multi choice's labels ticked on more than half of its rows), and whether the rows can judge
    the two ("judged": at least PRIOR_JUDGE_MIN_OTHERS rows answered otherwise than the commonest answer).
    training/prior.py keeps the cold start where it wins."""
    from annotation_config.regions import Prediction
    from training.baselines import most_common_answers

    common = Prediction(labels=most_common_answers(schema, rows))
    cold = evaluate_predictions(schema, rows, answers)["dimensions"]
    most = evaluate_predictions(schema, rows, [common] * len(rows))["dimensions"]
    out = {}
    for name in names:
        given = Counter(json.dumps(row[name], sort_keys=True) for row in rows if row.get(name) is not None)
        others = sum(given.values()) - max(given.values(), default=0)
        scores = {"cold_start": dimension_score(cold[name]), "most_common": dimension_score(most[name])}
        out[name] = {**scores, "judged": others >= PRIOR_JUDGE_MIN_OTHERS}
    return out


def dimension_score(metrics: Mapping[str, Any]) -> float | None:
    """One dimension's share of the primary metric: macro-F1 (choices) or partial F1 (spans); None without gold."""
    if not metrics.get("n"):
        return None
    return metrics["partial"]["f1"] if metrics["kind"] == "spans" else metrics["macro_f1"]


def primary_score(report: Mapping[str, Any]) -> float | None:
    """The gate's metric: mean macro-F1 (choices) / partial F1 (spans) over dimensions with gold labels."""
    values = [v for v in map(dimension_score, report.get("dimensions", {}).values()) if v is not None]
    return float(np.mean(values)) if values else None


def evaluate_model(model_dir: str | Path, examples: Sequence[Any], predictor: Any | None = None) -> dict[str, Any]:
    """Evaluate a saved model folder on accepted examples (or dataset rows), with its calibration applied."""
    from training.data import Example
    from training.predict import TrainedPredictor

    predictor = predictor or TrainedPredictor(model_dir)
    records = [e.data if isinstance(e, Example) else e for e in examples]
    rows = [e.labels if isinstance(e, Example) else e for e in examples]
    if not records:
        return {"n": 0, "primary_metric": PRIMARY, "dimensions": {}, "primary": None}
    raw = predictor.outputs(records)
    probs = predictor.probabilities(raw, records)
    uncalibrated = raw.probabilities(predictor.dimensions)
    report = evaluate_outputs(predictor.dimensions, rows, probs, raw.spans, uncalibrated, predictor.thresholds)
    report["model_version"] = predictor.model_version
    return report


def jsonable(value: Any) -> Any:
    """A copy safe for strict JSON: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value


def save_report(report: Mapping[str, Any], folder: str | Path, name: str = "report.json", plots: bool = True) -> Path:
    """Write the report as JSON (NaN -> null) and, when asked, PNG plots next to it; returns the JSON path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(jsonable(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if plots:
        save_plots(report, folder / "plots")
    return path


def save_plots(report: Mapping[str, Any], folder: str | Path) -> list[Path]:
    """confusion_<dimension>.png per single-choice dimension and reliability.png (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    curves = []
    for name, metrics in report.get("dimensions", {}).items():
        if not metrics.get("n") or metrics["kind"] == "spans":
            continue
        curves.append((name, metrics))
        if metrics["kind"] != "single":
            continue
        labels = metrics["confusion"]["labels"]
        matrix = np.array(metrics["confusion"]["matrix"])
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color)
        ax.set_title(f"{name} (macro-F1 {metrics['macro_f1']:.2f}, n={metrics['n']})")
        fig.tight_layout()
        path = folder / f"confusion_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        for name, metrics in curves:
            points = [(b["confidence"], b["accuracy"]) for b in metrics["reliability"] if b["count"]]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=f"{name} (ECE {metrics['ece']:.3f})")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title("Reliability (calibrated)")
        ax.legend(fontsize="small", loc="upper left")
        fig.tight_layout()
        path = folder / "reliability.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
