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
from training.onnx_serving import ONNX_FILE, ONNX_RUNTIME, TORCH_RUNTIME, export_onnx_model

log = logging.getLogger(__name__)

MAX_F1_DROP = 0.005  # 0.5 points of macro-F1 (partial F1 for spans), per dimension


def check_onnx_runtime(
    folder: str | os.PathLike, model: MultiHeadModel, tokenizer: Any, test_rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Export the model into `folder` (a saved version, companions included) and decide what serves it.

    ONNX int8 serves when every dimension's score on `test_rows` is within MAX_F1_DROP of torch fp32's, both read
    through TrainedPredictor (so calibration, companions and thresholds are those served). Returns the manifest's
    SERVING_KEY entry, with each dimension's scores and how many answers the runtimes give differently. A graph
    that failed to export or load is removed; one refused for its scores stays, for an operator who accepts it
    (WORKBENCH_TRAINED_RUNTIME=onnx-int8)."""
    from training.evaluation import dimension_score, evaluate_outputs
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
        return {"runtime": TORCH_RUNTIME, "reason": "no test rows to check the ONNX int8 graph against torch fp32"}
    records = [dict(row) for row in test_rows]
    reports, answers = {}, {}
    for runtime in (TORCH_RUNTIME, ONNX_RUNTIME):
        predictor = TrainedPredictor(folder, runtime=runtime, model_version=folder.name)
        if predictor.runtime != runtime:  # the graph did not load: the predictor fell back to torch
            shutil.rmtree(folder / Path(ONNX_FILE).parent, ignore_errors=True)
            return {"runtime": TORCH_RUNTIME, "reason": predictor.runtime_reason}
        raw = predictor.outputs(records)
        probs = predictor.probabilities(raw, records)
        uncalibrated = raw.probabilities(predictor.dimensions)
        reports[runtime] = evaluate_outputs(
            predictor.dimensions, records, probs, raw.spans, uncalibrated, predictor.thresholds
        )
        answers[runtime] = [p.labels for p in predictor.predictions(raw, probs, len(records))]
    check: dict[str, Any] = {}
    worse = []
    for name, metrics in reports[TORCH_RUNTIME]["dimensions"].items():
        torch_score = dimension_score(metrics)
        onnx_score = dimension_score(reports[ONNX_RUNTIME]["dimensions"][name])
        if torch_score is None or onnx_score is None:
            continue
        labelled = [i for i, row in enumerate(records) if row.get(name) is not None]
        changed = sum(
            _answer(answers[TORCH_RUNTIME][i][name]) != _answer(answers[ONNX_RUNTIME][i][name]) for i in labelled
        )
        check[name] = {"torch": round(torch_score, 4), "onnx": round(onnx_score, 4), "n": len(labelled)}
        check[name]["changed_answers"] = changed
        if torch_score - onnx_score > MAX_F1_DROP + 1e-9:
            scores = f"{100 * onnx_score:.1f} vs {100 * torch_score:.1f}"
            worse.append(f"{name} {scores} ({changed} of {len(labelled)} answers differ)")
    if worse:  # the graph stays in the folder: WORKBENCH_TRAINED_RUNTIME=onnx-int8 may still choose it
        reason = f"ONNX int8 lost more than {100 * MAX_F1_DROP:.1f} points on the test split: {'; '.join(worse)}"
        return {"runtime": TORCH_RUNTIME, "reason": reason, "check": check, "test_rows": len(test_rows)}
    reason = (
        f"ONNX int8 within {100 * MAX_F1_DROP:.1f} points of torch fp32 on every dimension ({len(test_rows)} test rows)"
    )
    return {"runtime": ONNX_RUNTIME, "reason": reason, "check": check, "test_rows": len(test_rows)}


def _answer(value: Any) -> Any:
    """A dimension's answer without its scores: spans by (start, end, label), choices as they are."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return sorted((span["start"], span["end"], span["label"]) for span in value)
    return value
