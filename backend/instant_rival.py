"""The instant learner as the gate's rival: fitted on a candidate's training rows, scored on its held-out rows.

Before any fine-tuned model is promoted the backend serves the instant learner (backend/ladder.py). A fine-tuned
candidate replaces it only if it scores at least as well on the same held-out rows (Registry.promote), so the
ladder never steps down. The rival is fitted like the backend fits it (same encoder settings, from the
WORKBENCH_* environment a backend job inherits) on the candidate's train + validation rows: the data the candidate
learnt from, since the instant learner needs no validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from annotation_config.regions import labels_to_results
from annotation_config.schema import Schema
from training.data import row_example
from training.evaluation import evaluate_predictions

log = logging.getLogger(__name__)


def instant_rival_report(
    schema: Schema,
    train_rows: Sequence[Mapping[str, Any]],
    test_rows: Sequence[Mapping[str, Any]],
    split: str = "test",
) -> dict[str, Any] | None:
    """{"split", "n", "primary", "model_version"} of the instant learner on `test_rows`; None when not comparable."""
    if not train_rows or not test_rows:
        return None
    from backend.cold_start.predictor import ColdStartPredictor, served_embedder
    from backend.instant_learner import InstantLearner
    from backend.settings import Settings

    embedder = served_embedder(Settings())
    learner = InstantLearner(schema, embedder, ColdStartPredictor(schema, embedder))
    tasks = []
    for number, row in enumerate(train_rows, start=1):
        example = row_example(row, schema)
        result = labels_to_results(schema, example.labels, example.data)
        tasks.append({"id": number, "data": example.data, "annotations": [{"id": number, "result": result}]})
    learner.load_tasks(tasks)
    predictor = learner.fit()
    if predictor is None:
        return None
    examples = [row_example(row, schema) for row in test_rows]
    predictions = predictor.predict([e.data for e in examples])
    report = evaluate_predictions(schema, [e.labels for e in examples], predictions)
    return {"split": split, "n": len(examples), "primary": report["primary"], "model_version": predictor.model_version}
