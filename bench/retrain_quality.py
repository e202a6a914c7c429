"""Full-retrain quality on the hand-labelled dev set (issue 13, item 5): training recipes against each other.

Leave-one-article-out on data/dev_labels.jsonl (108 sample paragraphs, 5 articles): for each article, every
paragraph of the other four (83-91) is an accepted annotation, `training.pipeline.run_training` trains on them as the
backend's job would (its own grouped 0.8/0.1/0.1 split, early stopping, calibration; promote=False, no instant-
learner rival, a temporary models folder), and the model is scored through `training.predict.TrainedPredictor` on
the held-out article. The 5 held-out articles are pooled (108 paragraphs, one score per seed) and the figures are
mean +- sd over --seeds training seeds. Baselines on the same folds (they do not depend on the seed): the majority
label (frames: the two commonest), TF-IDF 1-2gram LinearSVC (balanced) and logistic regression (balanced) on the
served encoder's frozen embeddings.

Recipes (--recipes, comma-separated):
  default     the current TrainingArguments defaults
  before      the defaults before 2026-12-02: pair target encoding, no probe stage, no CPU epoch budget
  late        before + late target encoding
  probe-only  the defaults with the probe stage alone (fine-tuning: one step at warm-up's zero learning rate)

Run: .venv/bin/python bench/retrain_quality.py [--recipes default,before] [--seeds 2] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from annotation_config.schema import load_schema  # noqa: E402
from bench.suggestion_curve import BASELINES, MAJ_POOL, baseline_predictions, finetune, read_jsonl, score  # noqa: E402

RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "before": {"target_encoding": "pair", "probe_epochs": 0, "cpu_budget_tokens": 0},
    "late": {"target_encoding": "late", "probe_epochs": 0, "cpu_budget_tokens": 0},
    "probe-only": {"max_steps": 1, "learning_rate": 1e-12},  # the probe learns at head_learning_rate
}
HEADLINE = ("mean_macro_f1", "frames_micro_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=REPO / "data/dev_labels.jsonl")
    parser.add_argument("--tasks", type=Path, default=REPO / "data/sample_tasks.jsonl")
    parser.add_argument("--recipes", default="default,before")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"--recipes: unknown {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    for name in list(os.environ):
        if name.startswith(("WORKBENCH_", "LABEL_STUDIO_")):
            del os.environ[name]
    logging.getLogger("training").setLevel(logging.WARNING)

    from backend.cold_start.embedder import SentenceEmbedder
    from training.training_args import TrainingArguments

    schema = load_schema()
    tasks_by_key = {t["key"]: t for t in read_jsonl(args.tasks)}
    rows = sorted((r for r in read_jsonl(args.dev) if r["key"] in tasks_by_key), key=lambda r: r["key"])
    data = [tasks_by_key[r["key"]] for r in rows]
    articles = sorted({r["article_id"] for r in rows})
    folds = [[i for i, r in enumerate(rows) if r["article_id"] == a] for a in articles]
    gold = [{d.name: r[d.name] for d in schema.of_kind("single", "multi") if r.get(d.name) is not None} for r in rows]

    embedder = SentenceEmbedder(runtime="onnx", precision="int8", threads=args.threads)
    vectors = dict(zip([r["text"] for r in rows], np.asarray(embedder.embed([r["text"] for r in rows])), strict=True))
    results: dict[str, Any] = {}
    pooled: dict[str, list[dict]] = {b: [{}] * len(rows) for b in BASELINES if b != MAJ_POOL}
    for test in folds:
        train = [rows[i] for i in range(len(rows)) if i not in set(test)]
        for name, preds in baseline_predictions(schema, train, [rows[i] for i in test], vectors).items():
            for i, p in zip(test, preds, strict=True):
                pooled[name][i] = p
    for name, preds in pooled.items():
        results[name] = {"scores": [score(schema, gold, preds)], "seconds": []}

    with tempfile.TemporaryDirectory(prefix="retrain-quality-") as scratch:
        for recipe in recipes:
            runs, seconds, chosen = [], [], []
            for seed in range(args.seeds):
                train_args = TrainingArguments(progress=False, threads=args.threads, seed=42 + seed, **RECIPES[recipe])
                preds: list[dict] = [{}] * len(rows)
                for f, test in enumerate(folds):
                    labelled = [i for i in range(len(rows)) if i not in set(test)]
                    models = Path(scratch) / f"{recipe}-{seed}-{f}"
                    labels, took, (steps, _) = finetune(schema, rows, data, labelled, test, train_args, models)
                    for i, p in zip(test, labels, strict=True):
                        preds[i] = p
                    seconds.append(took)
                    manifest = json.loads(next(models.glob("*/manifest.json")).read_text())
                    chosen.append({**manifest.get("chosen", {}), "steps": steps, "best_epoch": manifest["best_epoch"]})
                    print(f"  {recipe} seed {seed} fold {f}: {took:.0f} s, {steps} steps, {chosen[-1]}", flush=True)
                runs.append(score(schema, gold, preds))
                print(f"{recipe} seed {seed}: " + ", ".join(f"{k} {runs[-1][k]:.3f}" for k in HEADLINE), flush=True)
            results[recipe] = {"scores": runs, "seconds": seconds, "chosen": chosen}

    print("\n| recipe | mean macro-F1 (4 single-choice) | frames micro-F1 | seconds a fold (train -> model ready) |")
    print("| --- | ---: | ---: | ---: |")
    for name, entry in results.items():
        cells = []
        for key in HEADLINE:
            values = [s[key] for s in entry["scores"]]
            sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{sd}")
        took = f"{statistics.median(entry['seconds']):.0f}" if entry["seconds"] else "–"
        print(f"| {name} | {cells[0]} | {cells[1]} | {took} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
