"""Whether a saved version serves on ONNX int8: its export, scored against torch fp32 on the model's own test split.

Kept apart from training/onnx_serving.py (the export and the runner) because it scores through the trained
predictor and the evaluation, which serve with that runner.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.modeling import MultiHeadModel
from training.onnx_serving import ONNX_FILE, ONNX_FILES, ONNX_RUNTIMES, TORCH_RUNTIME, export_onnx_model

log = logging.getLogger(__name__)

MAX_F1_DROP = 0.005  # 0.5 points of macro-F1 (partial F1 for spans), per dimension


def check_onnx_runtime(
    folder: str | os.PathLike, model: MultiHeadModel, tokenizer: Any, test_rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Export the model into `folder` (a saved version, companions included) and decide what serves it.

    An ONNX graph serves when every dimension's score on `test_rows` is within MAX_F1_DROP of torch fp32's, both
    read through TrainedPredictor (so calibration, companions and thresholds are those served). int8 is tried first,
    then the fused fp32 graph (the same arithmetic as torch, fused: identical answers in our runs, about 2.6x torch
    on the sample schema against int8's 5.6x); torch serves when neither passes. Returns the manifest's SERVING_KEY
    entry, with each runtime's per-dimension scores and how many answers differ from torch's. A graph that failed
    to export or load is removed; one refused for its scores stays, for an operator who accepts it
    (WORKBENCH_TRAINED_RUNTIME)."""
    from training.predict import TrainedPredictor

    folder = Path(folder)
    try:
        export_onnx_model(model, tokenizer, folder)
    except Exception as error:  # torch's exporter or onnxruntime's tools: torch serves, and the manifest says why
        log.warning("ONNX export failed; torch fp32 will serve: %s", error)
        shutil.rmtree(folder / Path(ONNX_FILE).parent, ignore_errors=True)
        return {"runtime": TORCH_RUNTIME, "reason": f"the ONNX export failed ({type(error).__name__}: {error})"}
    if not test_rows:
        shutil.rmtree(folder / Path(ONNX_FILE).parent, ignore_errors=True)
        return {"runtime": TORCH_RUNTIME, "reason": "no test rows to check the ONNX graphs against torch fp32"}
    records = [dict(row) for row in test_rows]
    reference = _scored(TrainedPredictor(folder, runtime=TORCH_RUNTIME, model_version=folder.name), records)
    checks: dict[str, Any] = {}
    refusals: list[str] = []
    for runtime in ONNX_RUNTIMES:
        name = runtime.replace("onnx-", "ONNX ")
        predictor = TrainedPredictor(folder, runtime=runtime, model_version=folder.name)
        if predictor.runtime != runtime:  # the graph did not load: the predictor fell back to torch
            (folder / ONNX_FILES[runtime]).unlink(missing_ok=True)
            refusals.append(f"{name}: {predictor.runtime_reason}")
            continue
        checks[runtime], worse = _compare(reference, _scored(predictor, records), records)
        if not worse:
            passed = f"{name} within {100 * MAX_F1_DROP:.1f} points of torch fp32 on every dimension"
            reason = "; ".join([*refusals, f"{passed} ({len(records)} test rows)"])
            return {"runtime": runtime, "reason": reason, "check": checks, "test_rows": len(records)}
        refusals.append(f"{name} lost more than {100 * MAX_F1_DROP:.1f} points on the test split: {'; '.join(worse)}")
    # graphs refused for their scores stay in the folder: WORKBENCH_TRAINED_RUNTIME may still choose one
    return {"runtime": TORCH_RUNTIME, "reason": "; ".join(refusals), "check": checks, "test_rows": len(records)}


def _scored(predictor: Any, records: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The evaluation report of `predictor` on `records` (gold labels in them) and its answers."""
    from training.evaluation import evaluate_outputs

    raw = predictor.outputs(records)
    probs = predictor.probabilities(raw, records)
    uncalibrated = raw.probabilities(predictor.dimensions)
    report = evaluate_outputs(predictor.dimensions, records, probs, raw.spans, uncalibrated, predictor.thresholds)
    return report, [p.labels for p in predictor.predictions(raw, probs, len(records))]


def _compare(
    reference: tuple[dict[str, Any], list[dict[str, Any]]],
    candidate: tuple[dict[str, Any], list[dict[str, Any]]],
    records: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Any], list[str]]:
    """Per dimension: both scores, rows, answers that differ; and the dimensions that lost more than MAX_F1_DROP."""
    from training.evaluation import dimension_score

    (torch_report, torch_answers), (onnx_report, onnx_answers) = reference, candidate
    check: dict[str, Any] = {}
    worse = []
    for name, metrics in torch_report["dimensions"].items():
        torch_score = dimension_score(metrics)
        onnx_score = dimension_score(onnx_report["dimensions"][name])
        if torch_score is None or onnx_score is None:
            continue
        labelled = [i for i, row in enumerate(records) if row.get(name) is not None]
        changed = sum(_answer(torch_answers[i][name]) != _answer(onnx_answers[i][name]) for i in labelled)
        check[name] = {"torch": round(torch_score, 4), "onnx": round(onnx_score, 4), "n": metrics["n"]}
        check[name]["changed_answers"] = changed
        if torch_score - onnx_score > MAX_F1_DROP + 1e-9:
            scores = f"{100 * onnx_score:.1f} vs {100 * torch_score:.1f}"
            worse.append(f"{name} {scores} ({changed} of {metrics['n']} answers differ)")
    return check, worse


def _answer(value: Any) -> Any:
    """A dimension's answer without its scores: spans by (start, end, label), choices as they are."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return sorted((span["start"], span["end"], span["label"]) for span in value)
    return value
