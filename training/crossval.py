"""Cross-validation that cannot flatter: k folds (grouped, stratified) x seeds, every method on the same folds.

One split of a few hundred examples moves by +-3 points, so a figure worth stating is a mean over folds and seeds
with its standard deviation, next to the simple baselines scored on exactly the same folds (training/baselines.py).
For each seed the examples are dealt into `folds` folds by `training.data.assign_folds`: grouped by the schema's
group field (a whole article stays in one fold), stratified by `stratum`. Each fold is held out once; every method
learns from the other folds and answers the held-out one. The fine-tuned model (`model_method`) runs the pipeline
`workbench train` runs, which carves its own validation split from the training folds; it never sees the held-out
fold.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from annotation_config.regions import labels_to_results
from annotation_config.schema import Schema
from training.data import Example, assign_folds
from training.evaluation import dimension_score, evaluate_predictions
from training.registry import MANIFEST_FILE
from training.training_args import TrainingArguments

# (schema, training examples, held-out examples, seed) -> {method name: one Prediction per held-out example}. One
# fit may answer under several names (the fine-tuned model with and without its n-gram heads).
Method = Callable[[Schema, Sequence[Example], Sequence[Example], int], Mapping[str, Sequence[Any]]]
DEFAULT_SEEDS = (42, 7, 13)


@dataclass
class FoldScore:
    """One method on one held-out fold."""

    method: str
    seed: int
    fold: int
    n_train: int
    n_test: int
    seconds: float  # the fit + prediction that produced it (shared by the names one fit answers under)
    report: dict[str, Any]  # training.evaluation's report of the held-out fold
    predictions: list[Any] = field(default_factory=list, repr=False)


@dataclass
class CrossValidation:
    """Every fold score of a run, and their summary."""

    folds: int
    seeds: tuple[int, ...]
    scores: list[FoldScore] = field(default_factory=list)

    def methods(self) -> list[str]:
        """Method names in the order they first scored."""
        return list(dict.fromkeys(s.method for s in self.scores))

    def summary(self, metric: Callable[[dict[str, Any]], float | None] | None = None) -> dict[str, dict[str, Any]]:
        """Per method: mean, sd and count of `metric` over folds x seeds (default: the primary metric), and the
        mean seconds per fold; per dimension, mean and sd of its macro-F1 (partial F1 for spans)."""
        metric = metric or (lambda report: report.get("primary"))
        out: dict[str, dict[str, Any]] = {}
        for method in self.methods():
            mine = [s for s in self.scores if s.method == method]
            values = [v for v in (metric(s.report) for s in mine) if v is not None]
            dims: dict[str, list[float]] = {}
            for s in mine:
                for name, d in s.report.get("dimensions", {}).items():
                    value = dimension_score(d)
                    if value is not None:
                        dims.setdefault(name, []).append(value)
            out[method] = {
                **mean_sd(values),
                "seconds": statistics.fmean(s.seconds for s in mine),
                "dimensions": {name: mean_sd(v) for name, v in dims.items()},
            }
        return out


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "sd", "n"}: the sample standard deviation (0 for one value)."""
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}


def cross_validate(
    examples: Sequence[Example],
    schema: Schema,
    methods: Sequence[Method],
    folds: int = 5,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    progress: Callable[[FoldScore], None] | None = None,
) -> CrossValidation:
    """Score every method on every held-out fold of every seed."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds (got {folds})")
    if len(examples) < folds:
        raise ValueError(f"{len(examples)} labelled examples cannot fill {folds} folds")
    ordered = sorted(examples, key=lambda e: e.key)  # the folds depend on the data, not on its order
    result = CrossValidation(folds, tuple(seeds))
    for seed in seeds:
        assignment = assign_folds(ordered, schema, folds, seed)
        for fold in range(folds):
            train = [e for e, f in zip(ordered, assignment, strict=True) if f != fold]
            test = [e for e, f in zip(ordered, assignment, strict=True) if f == fold]
            if test and train:
                _score_fold(result, schema, methods, train, test, seed, fold, progress)
    return result


def score_split(
    train: Sequence[Example],
    test: Sequence[Example],
    schema: Schema,
    methods: Sequence[Method],
    seeds: Sequence[int] = DEFAULT_SEEDS,
    progress: Callable[[FoldScore], None] | None = None,
) -> CrossValidation:
    """Every method trained on `train` and scored on a separate `test` set, once per seed (a "1-fold" run)."""
    if not train or not test:
        raise ValueError("both the training and the test set need labelled examples")
    result = CrossValidation(1, tuple(seeds))
    for seed in seeds:
        _score_fold(result, schema, methods, train, test, seed, 0, progress)
    return result


def _score_fold(
    result: CrossValidation,
    schema: Schema,
    methods: Sequence[Method],
    train: Sequence[Example],
    test: Sequence[Example],
    seed: int,
    fold: int,
    progress: Callable[[FoldScore], None] | None,
) -> None:
    for method in methods:
        started = time.perf_counter()
        answers = method(schema, train, test, seed)
        seconds = time.perf_counter() - started
        for name, predictions in answers.items():
            report = evaluate_predictions(schema, [e.labels for e in test], list(predictions))
            score = FoldScore(name, seed, fold, len(train), len(test), seconds, report, list(predictions))
            result.scores.append(score)
            if progress is not None:
                progress(score)


def standard_methods(args: TrainingArguments | None = None, fine_tune: bool = True) -> list[Method]:
    """The baselines every figure stands next to, then the fine-tuned model (when `fine_tune`)."""
    from functools import partial

    from training import baselines

    args = args or TrainingArguments()
    frozen = partial(baselines.frozen_lr, encoder=args.encoder)
    methods: list[Method] = [baselines.majority, baselines.ngram_svm, frozen]
    return [*methods, model_method(args)] if fine_tune else methods


def as_tasks(examples: Sequence[Example], schema: Schema) -> list[dict[str, Any]]:
    """Label Studio task dicts, one annotation each, that `training.data.accept` turns back into `examples`."""
    tasks = []
    for number, example in enumerate(examples, start=1):
        task_id = example.task_id if example.task_id is not None else number
        result = labels_to_results(schema, example.labels, example.data)
        tasks.append({"id": task_id, "data": dict(example.data), "annotations": [{"id": number, "result": result}]})
    return tasks


def model_method(args: TrainingArguments | None = None) -> Method:
    """The model as `workbench train` trains it (seeded per CV seed), answering twice: as served ("trained model",
    the blend of its embedding and n-gram heads with the encoder's) and as its encoder's own heads alone (left out
    when the encoder's heads learnt nothing: without fine-tuning, passes the companions answer wholly are not probed
    and their heads answer the label shares, a majority baseline)."""
    args = args or TrainingArguments()

    def run(schema: Schema, train: Sequence[Example], test: Sequence[Example], seed: int) -> dict[str, list]:
        from training.pipeline import run_training
        from training.predict import TrainedPredictor

        with tempfile.TemporaryDirectory(prefix="workbench-cv-") as scratch:
            # no test split of its own: the held-out fold is the test (validation still steers early stopping)
            fold_args = replace(args, seed=seed, split_ratios=(0.9, 0.1, 0.0))
            outcome = run_training(as_tasks(train, schema), schema, scratch, fold_args, promote=False, source="cv")
            predictor = TrainedPredictor(outcome.model_dir)
            records = [e.data for e in test]
            manifest = json.loads((outcome.model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
            unprobed = set(manifest.get("chosen", {}).get("companion_only_views", []))
            probed = [v.id for v in predictor.config.views if v.id not in unprobed]
            if predictor.has_companions and probed:
                predictor.views = None  # every pass, so the encoder alone can answer too (served answers unchanged)
            raw = predictor.outputs(records)  # one forward pass answers for both
            served = predictor.predictions(raw, predictor.probabilities(raw, records), len(records))
            if not predictor.has_companions or not probed:
                return {"trained model": served}
            encoder = raw.probabilities(predictor.dimensions, predictor.temperatures)
            alone = predictor.predictions(raw, encoder, len(records))
            return {"trained model": served, "trained model, encoder heads alone": alone}

    return run
