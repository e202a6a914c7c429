"""Shared by the quality benches: k-fold CV x seeds (or a separate test file) over the standard methods, printed
as one table of mean +- sd per metric with seconds per fold, and written as JSON.

The protocol itself lives in training/crossval.py (`workbench evaluate --cv` runs the same code).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Metric = Callable[[dict[str, Any]], float | None]


def training_arguments(pairs: Sequence[str], **given: Any) -> Any:
    """The product's TrainingArguments (no progress bar), with `given` (None: not given) and "key=value" pairs on
    top: `--set epochs=0 --set ngram_weight=0.3` (values parsed as JSON where they parse, else kept as text)."""
    from training.training_args import TrainingArguments

    values: dict[str, Any] = {"progress": False, **{k: v for k, v in given.items() if v is not None}}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        try:
            values[key.strip().replace("-", "_")] = json.loads(text)
        except ValueError:
            values[key.strip().replace("-", "_")] = text
    try:
        return TrainingArguments(**values)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--set: {error}") from None


def rung_methods(wanted: bool) -> list[Any]:
    """The backend's cold start and instant learner as one crossval.Method (backend/instant_rival.py), if wanted."""
    if not wanted:
        return []
    from backend.instant_rival import rung_answers

    return [rung_answers]


def run(
    examples: Sequence[Any],
    schema: Any,
    args: Any,
    metrics: Mapping[str, Metric],
    *,
    folds: int,
    seeds: Sequence[int],
    test: Sequence[Any] | None = None,
    fine_tune: bool = True,
    extra_methods: Sequence[Any] = (),
    title: str = "",
    json_path: Path | None = None,
) -> dict[str, Any]:
    """CV over `examples` (or train on all of them and score `test`), print the table, return the figures."""
    from training.crossval import cross_validate, score_split, standard_methods

    methods = [*standard_methods(args, fine_tune=fine_tune), *extra_methods]
    started = time.perf_counter()

    def progress(score: Any) -> None:
        shown = "  ".join(f"{name} {_pct(metric(score.report))}" for name, metric in metrics.items())
        print(
            f"  seed {score.seed} fold {score.fold}  {score.method:<28} {shown}  ({score.seconds:.1f} s, "
            f"{score.n_train} train / {score.n_test} held out)",
            flush=True,
        )

    if test is None:
        result = cross_validate(examples, schema, methods, folds=folds, seeds=seeds, progress=progress)
        protocol = (
            f"{folds}-fold CV (grouped, stratified) x {len(seeds)} seeds {list(seeds)} on {len(examples)} examples"
        )
    else:
        result = score_split(examples, test, schema, methods, seeds=seeds, progress=progress)
        protocol = (
            f"trained on {len(examples)} examples, scored on {len(test)} of a separate test file, seeds {list(seeds)}"
        )
    table = {name: result.summary(metric) for name, metric in metrics.items()}
    report = {
        "title": title,
        "protocol": protocol,
        "hyperparameters": {k: v for k, v in args.to_dict().items() if k not in ("extra", "progress")},
        "methods": result.methods(),
        "figures": {method: {name: table[name][method] for name in metrics} for method in result.methods()},
        "folds": [
            {"method": s.method, "seed": s.seed, "fold": s.fold, "seconds": s.seconds}
            | {name: metric(s.report) for name, metric in metrics.items()}
            for s in result.scores
        ],
        "total_seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print_table(report, list(metrics))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def print_table(report: Mapping[str, Any], metric_names: Sequence[str]) -> None:
    """One row per method: mean +- sd of every metric (x100), seconds per fold."""
    print()
    print(report["title"])
    print(report["protocol"])
    print()
    header = f"{'method':<28}" + "".join(f" {name:>15}" for name in metric_names) + f" {'s / fold':>9}"
    print(header)
    for method, figures in report["figures"].items():
        cells = "".join(f" {_mean_sd(figures[name]):>15}" for name in metric_names)
        seconds = figures[metric_names[0]]["seconds"]
        print(f"{method:<28}{cells} {seconds:9.1f}")
    print(f"\ntotal {report['total_seconds']:.0f} s, peak RSS {report['peak_rss_mib']:.0f} MiB")


def _mean_sd(figure: Mapping[str, Any]) -> str:
    if figure.get("mean") is None:
        return "n/a"
    return f"{100 * figure['mean']:.1f} +- {100 * figure['sd']:.1f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:5.1f}"
