"""The instant learner on the hand-labelled dev set: leave-one-article-out quality, a learning curve, fit latency.

Quality. For each of the 5 articles, every other article's paragraphs become Label Studio tasks with one
annotation each (built with annotation_config.regions, loaded through InstantLearner.load_tasks exactly like a
start-up rebuild from an export), the learner is fitted and predicts the held-out article's paragraphs. The
predictions of all folds are pooled and scored: macro-F1 per single-choice question (sklearn, labels present in
gold or predictions, zero_division=0) and their mean; frames micro- and macro-F1. Baselines on the same folds:
  majority        the training folds' majority label; frames: their K commonest frames on every paragraph (K=2)
  cold start      the fallback alone (backend.cold_start.ColdStartPredictor), no labels
  LR plain        sklearn LogisticRegression() with its defaults on the frozen MiniLM embeddings; frames: one per label
  LR balanced     the same with class_weight="balanced", C=10 (frames C=30)
and variants of the learner's configuration (LearnerConfig fields). `--curve` adds the same table after N labels
drawn at random from the training folds (mean of --seeds draws), to see how the learner does early on.

Latency. N labelled tasks with distinct texts are loaded and fitted (their embeddings cached), then one more
annotation arrives as an ANNOTATION_CREATED webhook payload: apply_event, fit (embedding the new text included)
and a one-task predict are timed, --repeats times, median shown.

Run: .venv/bin/python bench/instant_learner.py [--dev data/dev_labels.jsonl] [--tasks data/sample_tasks.jsonl]
     [--threads 2] [--curve 10,20,40,80] [--seeds 5] [--latency 10,100,1000] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from annotation_config.regions import labels_to_results  # noqa: E402
from annotation_config.schema import Schema, load_schema  # noqa: E402
from backend.instant_learner import InstantLearner, LearnerConfig  # noqa: E402

STAMP = "2026-12-01T10:00:00.000000Z"
VARIANTS: dict[str, dict[str, Any]] = {
    "instant (default)": {},
    "instant, embeddings only (no fallback features)": {"fallback_weight": 0.0},
    "instant, fallback weight 1": {"fallback_weight": 1.0},
    "instant, no check against the fallback": {"check_below": 0},
    "instant, prior 20 labels": {"prior_labels": 20.0},
    "instant, logistic single heads": {"single_head": "logistic"},
    "instant, shared target head": {"target_mode": "shared"},
    "instant, single class -> constant": {"single_class": "constant"},
    "instant, LDA shrinkage 0.5": {"lda_shrinkage": 0.5},
    "instant, frames C=3": {"multi_c": 3.0},
}

# the learning curve runs fewer variants (each is 5 folds x --seeds fits per budget)
CURVE_VARIANTS = (
    "instant (default)",
    "instant, embeddings only (no fallback features)",
    "instant, single class -> constant",
    "instant, no check against the fallback",
    "instant, prior 20 labels",
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON lines file (blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def export_task(schema: Schema, task_id: int, data: dict, labels: dict, annotator: int = 1) -> dict:
    """A task as Label Studio's JSON export holds it: data plus one submitted annotation with these labels."""
    result = labels_to_results(schema, labels, data)
    annotation = {
        "id": task_id,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "completed_by": annotator,
        "created_at": STAMP,
        "updated_at": STAMP,
        "task": task_id,
    }
    return {"id": task_id, "data": data, "annotations": [annotation]}


def gold_labels(schema: Schema, row: dict) -> dict:
    """The dev row's label record for the schema's choice dimensions it answers."""
    labels = {}
    for dim in schema.of_kind("single", "multi"):
        value = row.get(dim.name)
        if value is not None:
            labels[dim.name] = value
    return labels


# ---------------------------------------------------------------------------------------------------------------
# scoring


def score(schema: Schema, gold: list[dict], pred: list[dict]) -> dict[str, float]:
    """Macro-F1 per single-choice question, their mean, frames micro/macro-F1 (pooled over folds)."""
    out: dict[str, float] = {}
    singles = []
    for dim in schema.of_kind("single"):
        pairs = [(g[dim.name], p.get(dim.name) or "<none>") for g, p in zip(gold, pred, strict=True) if dim.name in g]
        if not pairs:
            continue
        y, yhat = zip(*pairs, strict=True)
        out[dim.name] = f1_score(y, yhat, average="macro", zero_division=0)
        singles.append(out[dim.name])
    out["mean_macro_f1"] = float(np.mean(singles)) if singles else float("nan")
    for dim in schema.of_kind("multi"):
        rows = [
            (set(g[dim.name]), set(p.get(dim.name) or [])) for g, p in zip(gold, pred, strict=True) if dim.name in g
        ]
        y = np.array([[v in g for v in dim.values] for g, _ in rows], dtype=int)
        yhat = np.array([[v in p for v in dim.values] for _, p in rows], dtype=int)
        out[f"{dim.name}_micro_f1"] = f1_score(y, yhat, average="micro", zero_division=0)
        out[f"{dim.name}_macro_f1"] = f1_score(y, yhat, average="macro", zero_division=0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# baselines


def majority_predict(schema: Schema, train: list[dict], n: int, top_k: int = 2) -> list[dict]:
    """The training majority label per question; the K commonest labels on every paragraph for multi choice."""
    labels: dict[str, Any] = {}
    for dim in schema.of_kind("single"):
        seen = [r[dim.name] for r in train if r.get(dim.name) is not None]
        if seen:
            labels[dim.name] = Counter(seen).most_common(1)[0][0]
    for dim in schema.of_kind("multi"):
        counts = Counter(v for r in train for v in r.get(dim.name) or [])
        labels[dim.name] = [v for v, _ in counts.most_common(top_k)]
    return [dict(labels) for _ in range(n)]


def logistic_predict(schema: Schema, train: list[dict], test: list[dict], vectors, balanced: bool) -> list[dict]:
    """Logistic regression per question on frozen embeddings (the issue's baseline); one per label for frames."""
    xtr = np.stack([vectors[r["text"]] for r in train])
    xte = np.stack([vectors[r["text"]] for r in test])
    preds: list[dict] = [{} for _ in test]
    kwargs = {"class_weight": "balanced", "C": 10.0} if balanced else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dim in schema.of_kind("single"):
            y = [r[dim.name] for r in train]
            if len(set(y)) < 2:
                answer = [y[0]] * len(test)
            else:
                answer = LogisticRegression(max_iter=1000, **kwargs).fit(xtr, y).predict(xte)
            for p, a in zip(preds, answer, strict=True):
                p[dim.name] = str(a)
        for dim in schema.of_kind("multi"):
            on = np.zeros((len(test), len(dim.values)), dtype=bool)
            for j, value in enumerate(dim.values):
                y = np.array([value in r[dim.name] for r in train], dtype=int)
                if 0 < y.sum() < len(y):
                    multi_kwargs = {"class_weight": "balanced", "C": 30.0} if balanced else {}
                    on[:, j] = LogisticRegression(max_iter=1000, **multi_kwargs).fit(xtr, y).predict(xte) == 1
                elif y.sum() == len(y):
                    on[:, j] = True
            for p, row in zip(preds, on, strict=True):
                p[dim.name] = [v for v, o in zip(dim.values, row, strict=True) if o]
    return preds


# ---------------------------------------------------------------------------------------------------------------


def evaluate(args, schema, embedder, cold, rows, tasks_by_key) -> dict[str, dict[str, dict[str, float]]]:
    """{n_labels or "all": {method: scores}} on leave-one-article-out folds."""
    articles = sorted({r["article_id"] for r in rows})
    data = [tasks_by_key[r["key"]] for r in rows]
    vectors = dict(zip([r["text"] for r in rows], embedder.embed([r["text"] for r in rows]), strict=True))
    cold_preds = [p.labels for p in cold.predict(data)]
    budgets: list[int | None] = [None, *args.curve]
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for budget in budgets:
        seeds = range(args.seeds) if budget else range(1)
        per_method: dict[str, list[dict[str, float]]] = {}
        for seed in seeds:
            preds: dict[str, list[dict | None]] = {}
            for fold, article in enumerate(articles):
                test = [i for i, r in enumerate(rows) if r["article_id"] == article]
                train = [i for i, r in enumerate(rows) if r["article_id"] != article]
                if budget:
                    rng = np.random.default_rng(1000 * seed + fold)
                    train = sorted(rng.permutation(train)[:budget].tolist())
                train_rows = [rows[i] for i in train]
                test_rows = [rows[i] for i in test]
                fold_preds = {
                    "majority": majority_predict(schema, train_rows, len(test)),
                    "cold start (fallback alone)": [cold_preds[i] for i in test],
                    "LR plain": logistic_predict(schema, train_rows, test_rows, vectors, balanced=False),
                    "LR balanced": logistic_predict(schema, train_rows, test_rows, vectors, balanced=True),
                }
                export = [export_task(schema, i + 1, data[i], gold_labels(schema, rows[i])) for i in train]
                variants = VARIANTS if budget is None else {k: VARIANTS[k] for k in CURVE_VARIANTS}
                for name, change in variants.items():
                    learner = InstantLearner(schema, embedder, cold, replace(LearnerConfig(), **change))
                    learner.load_tasks(export)
                    predictor = learner.fit()
                    assert predictor is not None
                    fold_preds[name] = [p.labels for p in predictor.predict([data[i] for i in test])]
                for name, answers in fold_preds.items():
                    column = preds.setdefault(name, [None] * len(rows))
                    for i, answer in zip(test, answers, strict=True):
                        column[i] = answer
            gold = [gold_labels(schema, r) for r in rows]
            for name, column in preds.items():
                per_method.setdefault(name, []).append(score(schema, gold, column))  # type: ignore[arg-type]
        tables[str(budget or "all")] = {
            name: {k: float(np.mean([s[k] for s in runs])) for k in runs[0]} for name, runs in per_method.items()
        }
    return tables


def print_tables(schema: Schema, tables, n_train: str) -> None:
    """One Markdown table per label budget."""
    singles = [d.name for d in schema.of_kind("single")]
    short = {d: d.replace("stance_", "").replace("threat_characterization", "threat") for d in singles}
    for budget, table in tables.items():
        title = f"all training labels ({n_train} a fold)" if budget == "all" else f"{budget} random training labels"
        print(f"\n### Leave-one-article-out, {title}\n")
        head = ["method", "mean macro-F1", *(short[d] for d in singles), "frames micro-F1", "frames macro-F1"]
        print("| " + " | ".join(head) + " |")
        print("| --- |" + " ---: |" * (len(head) - 1))
        for name, s in table.items():
            cells = [f"{s['mean_macro_f1']:.3f}", *(f"{s[d]:.2f}" for d in singles)]
            cells += [f"{s['frames_micro_f1']:.3f}", f"{s['frames_macro_f1']:.3f}"]
            print(f"| {name} | " + " | ".join(cells) + " |")


def latency(args, schema, embedder, cold, rows, tasks_by_key) -> dict[int, dict[str, float]]:
    """Median ms of apply_event, fit (the new text's embedding included) and a one-task predict at N labels."""
    out = {}
    sizes = sorted(args.latency)
    texts_needed = max(sizes) + args.repeats + 1
    # distinct texts: the dev paragraphs with a numbered sentence appended (each needs its own embedding)
    base = [(tasks_by_key[r["key"]], gold_labels(schema, r)) for r in rows]

    def make(i: int) -> tuple[dict, dict]:
        data, labels = base[i % len(base)]
        return {**data, "text": f"{data['text']} (Report {i}.)", "key": f"synthetic-{i}"}, labels

    synthetic = [make(i) for i in range(texts_needed)]
    for n in sizes:
        learner = InstantLearner(schema, embedder, cold)
        learner.load_tasks([export_task(schema, i + 1, *synthetic[i]) for i in range(n - 1)])
        learner.fit()  # warm: earlier texts embedded and cached
        marks: dict[str, list[float]] = {"apply_event": [], "fit": [], "predict": []}
        for r in range(args.repeats):
            i = n - 1 + r
            task = export_task(schema, i + 1, *synthetic[i])
            payload = {"action": "ANNOTATION_CREATED", "annotation": task["annotations"][0], "task": task}
            t0 = time.perf_counter()
            changed = learner.apply_event(payload)
            t1 = time.perf_counter()
            predictor = learner.fit()
            t2 = time.perf_counter()
            assert changed and predictor is not None
            query = synthetic[i + 1][0]
            predictor.predict([{**query, "text": query["text"].replace("(Report", "(Query")}])  # a text never seen
            t3 = time.perf_counter()
            marks["apply_event"].append((t1 - t0) * 1000)
            marks["fit"].append((t2 - t1) * 1000)
            marks["predict"].append((t3 - t2) * 1000)
        out[n] = {k: statistics.median(v) for k, v in marks.items()}
    return out


def main() -> None:
    """Run the evaluation and the latency measurement; print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=REPO / "data/dev_labels.jsonl")
    parser.add_argument("--tasks", type=Path, default=REPO / "data/sample_tasks.jsonl")
    parser.add_argument("--schema", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--curve", type=lambda s: [int(x) for x in s.split(",") if x], default=[10, 20, 40, 80])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--latency", type=lambda s: [int(x) for x in s.split(",") if x], default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from backend.cold_start.embedder import SentenceEmbedder
    from training.cold_start import ColdStartPredictor

    schema = load_schema(args.schema)
    embedder = SentenceEmbedder(runtime="onnx", precision="int8", threads=args.threads)  # the served default
    cold = ColdStartPredictor(schema, embedder)
    rows = read_jsonl(args.dev)
    tasks_by_key = {t["key"]: t for t in read_jsonl(args.tasks)}
    rows = [r for r in rows if r["key"] in tasks_by_key]
    n_train = "/".join(str(sum(r["article_id"] != a for r in rows)) for a in sorted({r["article_id"] for r in rows}))
    print(f"dev set: {len(rows)} paragraphs, encoder {embedder.describe()}, cold start {cold.model_version}")
    started = time.perf_counter()
    tables = evaluate(args, schema, embedder, cold, rows, tasks_by_key)
    print_tables(schema, tables, n_train)
    print(f"\n(evaluation took {time.perf_counter() - started:.0f} s)")
    timings = latency(args, schema, embedder, cold, rows, tasks_by_key) if args.latency else {}
    if timings:
        print("\n### Update latency (median ms over", args.repeats, "new annotations)\n")
        print("| labels | apply_event | fit (new text embedded) | predict one task |")
        print("| ---: | ---: | ---: | ---: |")
        for n, t in timings.items():
            print(f"| {n} | {t['apply_event']:.2f} | {t['fit']:.0f} | {t['predict']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"quality": tables, "latency": timings}, indent=2))


if __name__ == "__main__":
    main()
