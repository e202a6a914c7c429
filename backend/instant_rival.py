"""What serves before any fine-tuned model, as the gate's rivals: scored on a candidate's held-out rows.

Before any fine-tuned model is promoted the backend serves the instant learner (backend/ladder.py), and before the
first label the cold start. A fine-tuned candidate replaces them only if it scores at least as well as each of
them on the same held-out rows (Registry.promote), so the ladder never steps down and an annotator never sees
worse suggestions after a retrain. The rivals are built like the backend builds them (same encoder settings, from
the WORKBENCH_* environment a backend job inherits); the instant learner is fitted on the candidate's train +
validation rows: the data the candidate learnt from, since the instant learner needs no validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from annotation_config.regions import labels_to_results
from annotation_config.schema import Schema
from training.data import row_example
from training.evaluation import dimension_score, evaluate_predictions

log = logging.getLogger(__name__)


def instant_rival_report(
    schema: Schema,
    train_rows: Sequence[Mapping[str, Any]],
    test_rows: Sequence[Mapping[str, Any]],
    split: str = "test",
) -> dict[str, dict[str, Any]] | None:
    """{"cold_start": report, "instant_learner": report} on `test_rows`, each {"split", "n", "primary",
    "dimensions" (macro-F1 per dimension), "model_version", "answers" (labels per row)}; None when not
    comparable."""
    if not test_rows:
        return None
    examples = [row_example(row, schema) for row in test_rows]
    records = [e.data for e in examples]
    cold_start, learner = _fit_rungs(schema, [row_example(row, schema) for row in train_rows])
    rivals = {"cold_start": _report(schema, examples, cold_start.predict(records), cold_start.model_version, split)}
    if learner is not None:
        predictions = learner.predict(records)
        rivals["instant_learner"] = _report(schema, examples, predictions, learner.model_version, split)
    return rivals


def rung_answers(schema: Schema, train: Sequence[Any], test: Sequence[Any], seed: int) -> dict[str, list]:
    """The cold start and the instant learner (fitted on `train` examples) answering `test` examples: a
    training.crossval.Method, for `workbench evaluate --cv` and the quality benches (the seed changes nothing)."""
    cold_start, learner = _fit_rungs(schema, train)
    records = [e.data for e in test]
    out = {"cold start": cold_start.predict(records)}
    out["instant learner"] = learner.predict(records) if learner is not None else out["cold start"]
    return out


def _fit_rungs(schema: Schema, train: Sequence[Any]) -> tuple[Any, Any]:
    """The cold start, and the instant learner fitted on `train` examples (None when it has nothing to fit)."""
    from backend.cold_start.embedder import served_embedder
    from backend.instant_learner import InstantLearner
    from backend.settings import Settings
    from training.cold_start import ColdStartPredictor

    embedder = served_embedder(Settings())
    cold_start = ColdStartPredictor(schema, embedder)
    learner = InstantLearner(schema, embedder, cold_start)
    tasks = []
    for number, example in enumerate(train, start=1):
        result = labels_to_results(schema, example.labels, example.data)
        tasks.append({"id": number, "data": example.data, "annotations": [{"id": number, "result": result}]})
    learner.load_tasks(tasks)
    return cold_start, learner.fit()


def _report(schema: Schema, examples: Sequence[Any], predictions: Sequence[Any], version: str, split: str) -> dict:
    report = evaluate_predictions(schema, [e.labels for e in examples], predictions)
    dimensions = {name: dimension_score(d) for name, d in report["dimensions"].items() if d.get("n")}
    return {
        "split": split,
        "n": len(examples),
        "primary": report["primary"],
        "dimensions": dimensions,
        "model_version": version,
        "answers": [prediction.labels for prediction in predictions],  # per row: the gate's paired bootstrap
    }
