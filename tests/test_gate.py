"""The gate's statistic is the evaluation's primary metric, and its bootstrap is paired and deterministic."""

from __future__ import annotations

import random

import numpy as np
import pytest

from training.evaluation import answers_row_counts, evaluate_predictions, schema_dimensions
from training.gate import paired_bootstrap, primary_scores


def _random_answers(schema, rows: int, seed: int, narrow: bool = False) -> list[dict]:
    """Random labels per dimension; `narrow`: single choices from two labels only (a label only answers use)."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        labels: dict = {}
        for dim in schema.dimensions:
            if dim.kind == "single":
                labels[dim.name] = rng.choice([*(dim.values[:2] if narrow else dim.values), None])
            elif dim.kind == "multi":
                labels[dim.name] = [v for v in dim.values if rng.random() < 0.15]
            else:
                start = rng.randrange(0, 80)
                labels[dim.name] = [{"start": start, "end": start + rng.randrange(1, 20), "label": dim.values[0]}]
        out.append(labels)
    return out


def test_the_counts_give_exactly_the_reports_primary_metric(schema):
    gold = _random_answers(schema, 60, 1, narrow=True)
    for row in gold[::7]:
        row.pop(schema.dimensions[0].name)  # some rows without gold for a dimension
    answers = _random_answers(schema, 60, 2)
    gold = [{k: v for k, v in row.items() if v is not None} for row in gold]
    counts = answers_row_counts(schema_dimensions(schema), gold, answers)
    report = evaluate_predictions(schema, gold, answers)
    assert primary_scores(counts, np.ones((1, 60)))[0] == pytest.approx(report["primary"], abs=1e-12)


def test_the_bootstrap_is_paired_and_repeatable(schema):
    gold = _random_answers(schema, 80, 3)
    gold = [{k: v for k, v in row.items() if v is not None} for row in gold]
    dims = schema_dimensions(schema)
    a = answers_row_counts(dims, gold, _random_answers(schema, 80, 4))
    same = paired_bootstrap(a, a)
    assert same.difference == 0 and same.worse_confidence == 0 and same.low == same.high == 0
    perfect = answers_row_counts(dims, gold, gold)
    better = paired_bootstrap(perfect, a)
    assert better.difference > 0 and better.worse_confidence == 0 and not better.refused
    worse = paired_bootstrap(a, perfect)
    assert worse.refused and worse.high < 0 and worse == paired_bootstrap(a, perfect)
