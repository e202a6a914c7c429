"""Serving throughput of a trained model: every encoder pass, against only the passes whose answers weigh something.

A model trained with the defaults serves its choice answers from the n-gram and embedding heads (weight 0.5 + 0.5),
so the encoder's passes for choice-only views (the sample schema: one (target, text) pass per stance target) weigh
nothing; `TrainedPredictor` skips them (`TrainedPredictor.views`). This bench trains such a model on the sample dev
set (data/dev_labels.jsonl, 108 paragraphs), or with `--fnc1 N` on N FNC-1 headline/body pairs (one paired pass,
bench/train_fnc1.py's split), then serves the same texts both ways in the same run (torch fp32, batches of 32,
--threads threads), checks that the answers agree, and prints texts/s and the ratio.

Run: .venv/bin/python bench/trained_serving.py [--repeat 3] [--threads 2]
     .venv/bin/python bench/trained_serving.py --fnc1 1000      # serves 1,000 held-out pairs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dev_tasks() -> list[dict]:
    """The dev set (data/dev_labels.jsonl) as Label Studio tasks with one annotation each."""
    from annotation_config.regions import labels_to_results
    from annotation_config.schema import load_schema

    schema = load_schema()
    tasks = []
    for n, line in enumerate((REPO / "data" / "dev_labels.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        data = {k: row[k] for k in ("key", "text", "article_id")}
        labels = {d.name: row[d.name] for d in schema.dimensions if row.get(d.name) is not None}
        tasks.append(
            {"id": n, "data": data, "annotations": [{"id": n, "result": labels_to_results(schema, labels, data)}]}
        )
    return tasks


def train_on_dev_set(folder: Path) -> Path:
    """A model trained with the product's defaults on the dev set's paragraphs."""
    from annotation_config.schema import load_schema
    from training.pipeline import run_training
    from training.training_args import TrainingArguments

    args = TrainingArguments(progress=False)
    outcome = run_training(dev_tasks(), load_schema(), folder, args, promote=False, source="bench")
    return outcome.model_dir


def fnc1_model_and_records(folder: Path, size: int) -> tuple[Path, list[dict]]:
    """A model trained with the defaults on `size` FNC-1 pairs, and 1,000 pairs of the held-out bodies."""
    import random

    from annotation_config.regions import labels_to_results
    from annotation_config.schema import load_schema
    from bench.train_fnc1 import DATA, SCHEMA_PATH, read_pairs, split_by_body
    from training.pipeline import run_training
    from training.training_args import TrainingArguments

    schema = load_schema(SCHEMA_PATH)
    train_pool, test_pool = split_by_body(read_pairs(DATA), 0)
    fields = ("key", "headline", "body", "body_id")
    tasks = []
    for n, pair in enumerate(random.Random(42).sample(train_pool, size), 1):
        data = {k: pair[k] for k in fields}
        result = labels_to_results(schema, {"stance": pair["stance"]}, data)
        tasks.append({"id": n, "data": data, "annotations": [{"id": n, "result": result}]})
    outcome = run_training(tasks, schema, folder, TrainingArguments(progress=False), promote=False, source="bench")
    return outcome.model_dir, [{k: p[k] for k in fields} for p in random.Random(1).sample(test_pool, 1000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a trained model folder (default: train one)")
    parser.add_argument("--repeat", type=int, default=3, help="times the 108 paragraphs are served per way")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fnc1", type=int, default=0, metavar="N", help="train on N FNC-1 pairs instead")
    args = parser.parse_args()

    from training.predict import TrainedPredictor

    with tempfile.TemporaryDirectory() as scratch:
        if args.fnc1:
            model_dir, records = fnc1_model_and_records(Path(scratch), args.fnc1)
        else:
            model_dir = args.model or train_on_dev_set(Path(scratch))
            lines = (REPO / "data" / "dev_labels.jsonl").read_text(encoding="utf-8").splitlines()
            records = [{k: row[k] for k in ("key", "text", "article_id")} for row in map(json.loads, lines)]
        predictor = TrainedPredictor(model_dir, threads=args.threads)
        records = records * args.repeat
        needed = predictor.views
        print(f"model {model_dir.name}: {len(predictor.config.views)} encoder passes, serving {needed}")
        predictor.predict(records[:32])  # warm up
        figures, answers = {}, {}
        for name, views in (("every pass", None), ("needed passes", needed)):
            predictor.views = views
            started = time.perf_counter()
            answers[name] = [p.labels for p in predictor.predict(records)]
            figures[name] = len(records) / (time.perf_counter() - started)
            print(f"  {name:<14} {figures[name]:7.1f} texts/s")
        same = answers["every pass"] == answers["needed passes"]
        print(f"ratio {figures['needed passes'] / figures['every pass']:.2f}x; same answers: {same}")


if __name__ == "__main__":
    main()
