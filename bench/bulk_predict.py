"""Bulk pre-annotation and the trained model on ONNX int8: paragraphs/s, latency and accuracy, in one run.

Setup: a model trained with the product's defaults on the hand-labelled dev set (data/dev_labels.jsonl, 108
paragraphs) in a temporary models folder, promoted; --paragraphs sample-like paragraphs (the 108 sample
paragraphs with their sentences rotated and a copy number, so no two are the same text).

Measured in the same run, on this machine, --threads threads everywhere:
  pipeline      transformers pipeline("text-classification") on the same encoder, one paragraph at a time, in
                process (the baseline a user would write; no HTTP cost, which favours it)
  /predict      `workbench serve` in its own process, requests of 32 tasks, then single-task requests for p50/p99
                latency: the cold start, the trained model on torch fp32, and on ONNX int8
                (WORKBENCH_TRAINED_RUNTIME)
  in process    TrainedPredictor.predict on batches of 32, torch fp32 against ONNX int8 and fp32, 1 and --threads
                threads
  workbench predict   the Ray Data job over all --paragraphs paragraphs into Parquet, with the trained model (ONNX
                int8) and with the cold start, on 1 and on --actors actors (one thread each); peak memory (RSS)
                per actor
  accuracy      per dimension, macro-F1 of torch fp32 and ONNX int8 on held-out folds: K-fold over the dev set
                (grouped by article), a model trained per fold, both runtimes scored on the same held-out rows;
                and on held-out SemEval-2016 tweets (80/20), with the defaults and with a fine-tuned encoder

Run: .venv/bin/python bench/bulk_predict.py [--paragraphs 10000] [--threads 2] [--actors 2] [--folds 5]
     [--skip-ray] [--skip-accuracy] [--skip-semeval]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.predict import (  # noqa: E402 (after the path insert)
    baseline_pipeline,
    measure_backend,
    measure_baseline,
    start_backend,
    wait_healthy,
)
from bench.retrain_turnaround import vary  # noqa: E402
from bench.trained_serving import dev_tasks  # noqa: E402

FIELDS = ("key", "text", "title", "source", "article_id")


def sample_like(count: int) -> list[dict]:
    """`count` distinct sample-like paragraph tasks (rotated sentences, a copy number)."""
    lines = (REPO / "data" / "sample_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    tasks = [json.loads(line) for line in lines if line.strip()]
    out = []
    for i in range(count):
        task, copy = tasks[i % len(tasks)], i // len(tasks)
        data = {k: task[k] for k in FIELDS if k in task}
        data["text"] = vary(task["text"], copy)
        data["key"] = f"{task['key']}~{copy}"
        out.append(data)
    return out


def train_promoted(models: Path, tasks: list[dict]) -> str:
    """Train with the defaults and make the version current (force: this bench measures serving, not the gate)."""
    from annotation_config.schema import load_schema
    from training.pipeline import run_training
    from training.registry import Registry, project_dir
    from training.training_args import TrainingArguments

    root = project_dir(models, None)  # `workbench predict` without --project serves this registry
    outcome = run_training(tasks, load_schema(), root, TrainingArguments(progress=False), promote=False)
    Registry(root).promote(outcome.version, force=True)
    return outcome.version


def in_process(model_dir: Path, tasks: list[dict], threads: int) -> dict[str, float]:
    """Paragraphs/s of TrainedPredictor.predict in batches of 32, per runtime."""
    from training.predict import TrainedPredictor

    figures = {}
    for runtime in ("torch-fp32", "onnx-int8", "onnx-fp32"):
        predictor = TrainedPredictor(model_dir, runtime=runtime, threads=threads)
        assert predictor.runtime == runtime, predictor.runtime_reason
        predictor.predict(tasks[:32])
        started = time.perf_counter()
        for start in range(0, len(tasks), 32):
            predictor.predict(tasks[start : start + 32])
        figures[runtime] = len(tasks) / (time.perf_counter() - started)
    return figures


def runtime_scores(model_dir: Path, held_out: list[dict]) -> dict[str, dict[str, float]]:
    """Per dimension and runtime (torch fp32, ONNX int8), the score x100 of a saved model on `held_out` rows."""
    from training.evaluation import dimension_score, evaluate_model
    from training.predict import TrainedPredictor

    out: dict[str, dict[str, float]] = {}
    for runtime in ("torch-fp32", "onnx-int8"):
        predictor = TrainedPredictor(model_dir, runtime=runtime)
        assert predictor.runtime == runtime, predictor.runtime_reason  # never torch standing in for ONNX
        for name, metrics in evaluate_model(model_dir, held_out, predictor)["dimensions"].items():
            value = dimension_score(metrics)
            if value is not None:
                out.setdefault(name, {})[runtime] = 100 * value
    return out


def accuracy_by_fold(folds: int, seed: int = 42) -> dict[str, dict[str, list[float]]]:
    """Per dimension and runtime, the macro-F1 (partial F1 for spans) of each fold's model on its held-out rows."""
    from sklearn.model_selection import GroupKFold

    from annotation_config.schema import load_schema
    from training.pipeline import run_training
    from training.training_args import TrainingArguments

    schema = load_schema()
    tasks = dev_tasks()
    rows = [json.loads(line) for line in (REPO / "data" / "dev_labels.jsonl").read_text().splitlines()]
    groups = [row["article_id"] for row in rows]
    scores: dict[str, dict[str, list[float]]] = {}
    splitter = GroupKFold(n_splits=folds)
    for fold, (train, test) in enumerate(splitter.split(rows, groups=groups)):
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(progress=False, seed=seed)
            outcome = run_training([tasks[i] for i in train], schema, scratch, args, promote=False)
            for name, by_runtime in runtime_scores(outcome.model_dir, [rows[i] for i in test]).items():
                for runtime, value in by_runtime.items():
                    scores.setdefault(name, {}).setdefault(runtime, []).append(value)
        print(f"  fold {fold + 1}/{folds} done", flush=True)
    return scores


def accuracy_semeval(fine_tune: bool, seed: int = 42) -> dict[str, dict[str, float]]:
    """Per target, macro-F1 of torch fp32 and ONNX int8 on a held-out set the project does not hold: the 20% of the
    SemEval-2016 task 6 training tweets (bench/train_semeval2016.py's fixed split), a model trained on the 80%.
    `fine_tune`: one epoch of fine-tuning and the encoder's own heads alone (no companions), so the int8 graph of a
    fine-tuned encoder answers every question; else the product's defaults."""
    import dataclasses

    from annotation_config.schema import load_schema
    from bench.train_semeval2016 import DEFAULT_DATA, SCHEMA_PATH, as_task, dimension_of, read_tweets, split_80_20
    from training.pipeline import run_training
    from training.training_args import TrainingArguments

    schema = load_schema(SCHEMA_PATH)
    train, test = split_80_20(read_tweets(DEFAULT_DATA), 2016)
    args = TrainingArguments(progress=False, seed=seed, max_length=64)
    if fine_tune:
        args = dataclasses.replace(args, epochs=1, ngram_weight=0.0, embedding_weight=0.0, refit_heads=False)
    # the held-out rows: the task's data and its one answered dimension (the tweet's own target)
    held_out = [{**as_task(t, schema)["data"], dimension_of(schema, t["target"]): t["stance"]} for t in test]
    with tempfile.TemporaryDirectory() as scratch:
        outcome = run_training([as_task(t, schema) for t in train], schema, scratch, args, promote=False)
        serving = json.loads((outcome.model_dir / "manifest.json").read_text())["serving"]
        print(f"  SemEval model ({'fine-tuned, encoder heads' if fine_tune else 'defaults'}): {serving['reason']}")
        return runtime_scores(outcome.model_dir, held_out)


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paragraphs", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--http-paragraphs", type=int, default=1_024, help="paragraphs sent to each /predict")
    parser.add_argument("--singles", type=int, default=200, help="single-task requests for latency")
    parser.add_argument("--baseline-paragraphs", type=int, default=512)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-semeval", action="store_true", help="no accuracy check on SemEval-2016 tweets")
    args = parser.parse_args()

    tasks = sample_like(args.paragraphs)
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models"
        version = train_promoted(models, dev_tasks())
        from training.registry import project_dir

        model_dir = project_dir(models, None) / version
        serving = json.loads((model_dir / "manifest.json").read_text())["serving"]
        print(f"model {version}: serving {serving['runtime']} ({serving['reason']})")

        classify = baseline_pipeline(args.threads)
        base = measure_baseline(classify, tasks[: args.baseline_paragraphs], 50)
        rates["pipeline, one at a time"] = base["throughput"]
        print(f"pipeline one at a time: {base['throughput']:.1f}/s  p50 {base['p50_ms']:.1f} ms")

        for label, extra in (
            ("cold start", {"WORKBENCH_MODELS_DIR": str(Path(scratch) / "empty")}),
            ("trained torch-fp32", {"WORKBENCH_TRAINED_RUNTIME": "torch-fp32"}),
            ("trained onnx-int8", {"WORKBENCH_TRAINED_RUNTIME": "onnx-int8"}),
        ):
            port = 18500 + len(rates)
            log = Path(scratch) / f"serve-{port}.log"
            os.environ.update(extra)
            process = start_backend(
                port, args.threads, "onnx:int8", Path(extra.get("WORKBENCH_MODELS_DIR", models)), log
            )
            for key in extra:
                os.environ.pop(key)
            try:
                wait_healthy(port, process, log)
                figures = measure_backend(port, tasks[: args.http_paragraphs], 32, args.singles)
            finally:
                process.terminate()
                process.wait(30)
            rates[f"/predict {label}"] = figures["throughput"]
            print(
                f"/predict {label}: {figures['throughput']:.1f}/s  single task p50 {figures['p50_ms']:.1f} ms"
                f"  p99 {figures['p99_ms']:.1f} ms"
            )

        for threads in sorted({1, args.threads}):
            for runtime, rate in in_process(model_dir, tasks[: args.http_paragraphs], threads).items():
                rates[f"in process {runtime}, {threads} thread(s)"] = rate
                print(f"in process {runtime}, {threads} thread(s): {rate:.1f}/s")

        if not args.skip_ray:
            ray_rates(args, tasks, models, Path(scratch), rates)

    print("\nratios (same run)")
    torch_rate = rates[f"in process torch-fp32, {args.threads} thread(s)"]
    onnx_rate = rates[f"in process onnx-int8, {args.threads} thread(s)"]
    print(f"  trained ONNX int8 / torch fp32, in process: {onnx_rate / torch_rate:.2f}x")
    http = rates["/predict trained onnx-int8"] / rates["/predict trained torch-fp32"]
    print(f"  trained ONNX int8 / torch fp32, /predict: {http:.2f}x")
    versus_pipeline = rates["/predict trained onnx-int8"] / base["throughput"]
    print(f"  trained ONNX int8 /predict / pipeline one at a time: {versus_pipeline:.2f}x")

    if not args.skip_accuracy:
        print(f"\naccuracy: {args.folds}-fold over the dev set, grouped by article (x100, mean +- sd over folds)")
        scores = accuracy_by_fold(args.folds)
        print(f"  {'dimension':<26} {'torch fp32':>14} {'onnx int8':>14} {'difference':>14}")
        for name, by_runtime in scores.items():
            diffs = [o - t for t, o in zip(by_runtime["torch-fp32"], by_runtime["onnx-int8"], strict=True)]
            print(
                f"  {name:<26} {mean_sd(by_runtime['torch-fp32']):>14} {mean_sd(by_runtime['onnx-int8']):>14}"
                f" {mean_sd(diffs):>14}"
            )
    if not args.skip_semeval:
        print("\naccuracy on SemEval-2016 task 6 (80/20 split of the training tweets, macro-F1 x100 per target)")
        print_semeval()


def print_semeval() -> None:
    for fine_tune in (False, True):
        scores = accuracy_semeval(fine_tune)
        print(f"  {'target':<26} {'torch fp32':>10} {'onnx int8':>10} {'difference':>10}")
        for name, by_runtime in scores.items():
            torch_f1, onnx_f1 = by_runtime["torch-fp32"], by_runtime["onnx-int8"]
            print(f"  {name:<26} {torch_f1:>10.1f} {onnx_f1:>10.1f} {onnx_f1 - torch_f1:>+10.1f}")


def ray_rates(args: argparse.Namespace, tasks: list[dict], models: Path, scratch: Path, rates: dict) -> None:
    """`workbench predict` (bulk.job.run_predict) over every paragraph into Parquet, per model and actor count."""
    import threading

    from bulk.job import PredictOptions, run_predict

    source = scratch / "archive.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    for label, cold_start in (("trained onnx-int8", False), ("cold start", True)):
        for actors in sorted({1, args.actors}):
            out = scratch / f"out-{label.replace(' ', '-')}-{actors}"
            peaks: dict[int, int] = {}
            stop = threading.Event()
            watcher = threading.Thread(target=watch_actor_memory, args=(peaks, stop), daemon=True)
            watcher.start()
            options = PredictOptions(
                out=out, source=source, cold_start=cold_start, models_dir=models, actors=actors, cpus_per_actor=1
            )
            result = run_predict(options, echo=lambda line: None, progress=False)
            stop.set()
            watcher.join()
            rss = f"{max(peaks.values()) / 2**20:.0f} MiB" if peaks else "n/a"
            rates[f"workbench predict {label}, {actors} actor(s)"] = result.steady_rate
            print(
                f"workbench predict {label}, {actors} actor(s): {result.predicted} paragraphs in {result.seconds:.1f} s"
                f" = {result.rate:.1f}/s ({result.steady_rate:.1f}/s once the models were loaded); peak RSS per"
                f" actor {rss}"
            )
    single = rates["in process onnx-int8, 1 thread(s)"]
    many = rates[f"workbench predict trained onnx-int8, {args.actors} actor(s)"]
    one = rates["workbench predict trained onnx-int8, 1 actor(s)"]
    print(
        f"  scaling 1 -> {args.actors} actors: {many / one:.2f}x; {args.actors} actors reach"
        f" {100 * many / (args.actors * single):.0f}% of {args.actors} x the single-process ONNX rate"
        f" ({single:.1f}/s on one thread)"
    )
    per_core = one
    print(
        f"  1M paragraphs: {1e6 / per_core / 3600:.1f} h on one core ({per_core:.1f}/s per actor);"
        f" {1e6 / many / 3600:.1f} h on this {args.actors}-core machine ({many:.1f}/s)"
    )


def watch_actor_memory(peaks: dict[int, int], stop: object) -> None:
    """Peak resident memory (VmHWM) of every Ray map worker process, read from /proc until `stop` is set."""
    while True:
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
                name = (status.parent / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "ray::" in name and "Map" in name:
                for line in text.splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[int(status.parent.name)] = int(line.split()[1]) * 1024
        if stop.wait(0.5):  # type: ignore[attr-defined]
            return


if __name__ == "__main__":
    main()
