"""Suggestion quality and update latency through the real backend (issue 13): a simulated annotator.

Leave-one-article-out on the hand labels of data/dev_labels.jsonl (108 sample paragraphs, 5 articles). For each
article (the fold), a simulated annotator labels the other four articles' paragraphs (the pool) one by one, each as
an ANNOTATION_CREATED webhook to the real backend: `backend.app.create_app` on a real uvicorn port
(`workbench.services.ServerThread`), default cold start (all-MiniLM-L6-v2, ONNX int8), default instant learner.
Orders:
  random        a seeded shuffle of the pool (--seeds shuffles per fold)
  uncertainty   at each step /predict the unlabelled pool and label the task with the lowest task `score` (the
                backend's documented uncertainty: least confidence averaged over the questions); ties: pool order
Each fold x order x seed is its own Label Studio project id, so learners never mix. After each of --counts labels
the suggestions the backend serves (/predict) on the held-out article's paragraphs (never labelled in that fold)
are scored, per dimension:
  single choice   accuracy and macro-F1 (labels present in gold or predictions; an unanswered question is a miss,
                  not a class); headline: the mean macro-F1 over the 4 single-choice questions
  frames          micro-F1 (and macro-F1) over the 14 frame labels
Two aggregates: "pooled" scores the 5 held-out articles' predictions together (all 108 paragraphs, one score per
seed; mean +- sd over seeds), "per fold" scores each held-out article alone (mean +- sd over folds x seeds;
macro-F1 on ~20 paragraphs with absent classes is very noisy).

Methods at the same label counts, on the same labelled tasks:
  cold start          what serves before any label (count 0 of the curve)
  instant learner     what the backend serves after the webhooks (backend/instant_learner.py)
  fine-tune           training.pipeline.run_training on the labelled tasks (promote=False, a
                      temporary models folder), its model scored through training.predict.TrainedPredictor;
                      --finetune-mode pipeline: the pipeline's own grouped 0.8/0.1/0.1 split (what would serve);
                      all: every labelled task trains (split 1/0/0: no early stopping, no calibration). Slow on
                      this CPU: only --finetune-counts x --finetune-orders x --finetune-seeds run (default: 80
                      labels, random order, the first seed), within --finetune-budget minutes
Baselines trained on the same labelled tasks at each count:
  majority (labelled)   the labelled tasks' majority label; frames: their 2 commonest frames on every paragraph
  majority (full pool)  the same from the whole pool (every paragraph of the other 4 articles)
  SVM tf-idf            TF-IDF word 1-2grams + LinearSVC(class_weight="balanced"); frames one-vs-rest
  LR MiniLM             LogisticRegression() on frozen MiniLM embeddings (the encoder the backend serves)
  LR MiniLM balanced    the same with class_weight="balanced"
Each method's ratio to the best baseline of the same run (order, count) is printed.

Latency: for every webhook of the curve, the time from the POST to the moment /setup reports the new
model_version (polled every --poll-ms), as p50/p95/max, and per label-count bucket. --latency-labels N then posts
N synthetic annotations (the dev paragraphs with a numbered suffix, distinct texts, labels cycled) to one more
project: most are posted back to back (fits coalesce), and --latency-repeats webhooks ending at each of 100,
250, 500, 1000, ... N labels are timed one by one on a settled learner.

Run: .venv/bin/python bench/suggestion_curve.py [--counts 0,10,20,40,80] [--seeds 3] [--orders random,uncertainty]
     [--folds all|0,2] [--finetune-counts 80] [--finetune-orders random] [--finetune-seeds 1]
     [--finetune-mode pipeline|all] [--finetune-budget 20] [--train-threads 1] [--train-arg epochs=3 ...]
     [--latency-labels 1000] [--latency-repeats 10] [--poll-ms 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from annotation_config.regions import labels_to_results, results_to_labels  # noqa: E402
from annotation_config.schema import Schema, load_schema  # noqa: E402
from bench.instant_learner import majority_predict  # noqa: E402  (the same baseline in both benches)

STAMP = "2026-12-01T10:00:00.000000Z"
COLD, INSTANT, FINETUNE = "cold start", "instant learner", "fine-tune"
MAJ_LABELLED, MAJ_POOL = "majority (labelled)", "majority (full pool)"
SVM, LR, LR_BAL = "SVM tf-idf 1-2g", "LR MiniLM", "LR MiniLM balanced"
BASELINES = (MAJ_LABELLED, MAJ_POOL, SVM, LR, LR_BAL)
METHODS = (COLD, INSTANT, FINETUNE, *BASELINES)
FRAMES_TOP_K = 2
BUCKETS = ((1, 10), (11, 20), (21, 40), (41, 80), (81, 10**9))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def gold_labels(schema: Schema, row: Mapping[str, Any]) -> dict[str, Any]:
    """The dev row's answers for the schema's choice dimensions (spans are not labelled in the dev set)."""
    return {d.name: row[d.name] for d in schema.of_kind("single", "multi") if row.get(d.name) is not None}


# ---------------------------------------------------------------------------------------------------------------
# scoring


def score(schema: Schema, gold: Sequence[Mapping[str, Any]], pred: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Flat scores: <dim>_acc, <dim>_f1, <dim>_answered per single choice, mean_macro_f1, frames micro/macro-F1."""
    out: dict[str, float] = {"n": float(len(gold))}
    f1s = []
    for dim in schema.of_kind("single"):
        pairs = [(g[dim.name], p.get(dim.name)) for g, p in zip(gold, pred, strict=True) if dim.name in g]
        y = [a for a, _ in pairs]
        yhat = [b if b in dim.values else "<unanswered>" for _, b in pairs]
        present = [v for v in dim.values if v in y or v in yhat]
        out[f"{dim.name}_acc"] = float(np.mean([a == b for a, b in zip(y, yhat, strict=True)]))
        out[f"{dim.name}_f1"] = float(f1_score(y, yhat, labels=present, average="macro", zero_division=0))
        out[f"{dim.name}_answered"] = float(np.mean([b in dim.values for b in yhat]))
        f1s.append(out[f"{dim.name}_f1"])
    out["mean_macro_f1"] = float(np.mean(f1s))
    for dim in schema.of_kind("multi"):
        rows = [(set(g[dim.name]), set(p.get(dim.name) or [])) for g, p in zip(gold, pred, strict=True)]
        y = np.array([[v in g for v in dim.values] for g, _ in rows], dtype=int)
        yhat = np.array([[v in p for v in dim.values] for _, p in rows], dtype=int)
        out[f"{dim.name}_micro_f1"] = float(f1_score(y, yhat, average="micro", zero_division=0))
        out[f"{dim.name}_macro_f1"] = float(f1_score(y, yhat, average="macro", zero_division=0))
        out[f"{dim.name}_per_paragraph"] = float(yhat.sum(axis=1).mean())
    return out


# ---------------------------------------------------------------------------------------------------------------
# baselines


def classifier_predict(schema: Schema, make, xtr, xte, train: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One classifier per single choice (a constant where only one class is seen), one binary per frame label."""
    preds: list[dict[str, Any]] = [{} for _ in range(xte.shape[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dim in schema.of_kind("single"):
            y = [r[dim.name] for r in train]
            answer = [y[0]] * xte.shape[0] if len(set(y)) < 2 else make().fit(xtr, y).predict(xte)
            for p, a in zip(preds, answer, strict=True):
                p[dim.name] = str(a)
        for dim in schema.of_kind("multi"):
            on = np.zeros((xte.shape[0], len(dim.values)), dtype=bool)
            for j, value in enumerate(dim.values):
                y = np.array([value in r[dim.name] for r in train], dtype=int)
                if 0 < y.sum() < len(y):
                    on[:, j] = make().fit(xtr, y).predict(xte) == 1
                elif y.sum() == len(y):
                    on[:, j] = True
            for p, row in zip(preds, on, strict=True):
                p[dim.name] = [v for v, o in zip(dim.values, row, strict=True) if o]
    return preds


def baseline_predictions(
    schema: Schema, train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]], vectors
) -> dict[str, list[dict[str, Any]]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    out = {MAJ_LABELLED: majority_predict(schema, train, len(test), FRAMES_TOP_K)}
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    xtr = tfidf.fit_transform([r["text"] for r in train])
    xte = tfidf.transform([r["text"] for r in test])
    out[SVM] = classifier_predict(schema, lambda: LinearSVC(class_weight="balanced"), xtr, xte, train)
    etr = np.stack([vectors[r["text"]] for r in train])
    ete = np.stack([vectors[r["text"]] for r in test])
    out[LR] = classifier_predict(schema, lambda: LogisticRegression(max_iter=1000), etr, ete, train)
    balanced = lambda: LogisticRegression(max_iter=1000, class_weight="balanced")  # noqa: E731
    out[LR_BAL] = classifier_predict(schema, balanced, etr, ete, train)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the backend, over HTTP


class Backend:
    """The routes the simulated annotator uses, on a real port."""

    def __init__(self, url: str, schema: Schema, poll: float) -> None:
        self.client = httpx.Client(base_url=url, timeout=120)
        self.schema = schema
        self.poll = poll
        self.annotation_ids = 0

    @staticmethod
    def project_ref(project: int) -> str:
        return f"{project}.1764583200"  # Label Studio names a project "<id>.<created timestamp>"

    def version(self, project: int) -> str:
        answer = self.client.post("/setup", json={"project": self.project_ref(project)})
        answer.raise_for_status()
        return answer.json()["model_version"]

    def predict(self, project: int, datas: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[float], str]:
        """Label records, task scores and the model version of one /predict of these task datas."""
        labels, scores, version = [], [], ""
        for start in range(0, len(datas), 256):
            chunk = list(datas[start : start + 256])
            body = {"project": self.project_ref(project), "tasks": [{"id": i, "data": d} for i, d in enumerate(chunk)]}
            answer = self.client.post("/predict", json=body)
            answer.raise_for_status()
            payload = answer.json()
            version = payload["model_version"]
            for item, data in zip(payload["results"], chunk, strict=True):
                labels.append(results_to_labels(self.schema, item["result"], data))
                scores.append(float(item["score"]))
        return labels, scores, version

    def annotate(self, project: int, task_id: int, data: Mapping[str, Any], labels: Mapping[str, Any]) -> float:
        """POST one ANNOTATION_CREATED webhook; returns the POST's own seconds."""
        self.annotation_ids += 1
        annotation = {
            "id": self.annotation_ids,
            "result": labels_to_results(self.schema, labels, data),
            "completed_by": 1,
            "was_cancelled": False,
            "ground_truth": False,
            "created_at": STAMP,
            "updated_at": STAMP,
            "task": task_id,
            "project": project,
        }
        payload = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": project},
            "task": {"id": task_id, "data": dict(data), "project": project},
            "annotation": annotation,
        }
        started = time.perf_counter()
        answer = self.client.post("/webhook", json=payload)
        answer.raise_for_status()
        return time.perf_counter() - started

    def wait_new_version(self, project: int, old: str, started: float, timeout: float = 60.0) -> tuple[str, float]:
        """Poll /setup until it reports a version other than `old`; (version, seconds since `started`)."""
        while True:
            version = self.version(project)
            now = time.perf_counter()
            if version != old:
                return version, now - started
            if now - started > timeout:
                return version, float("inf")
            time.sleep(self.poll)

    def instant_state(self, project: int) -> dict[str, Any]:
        answer = self.client.get("/health")
        answer.raise_for_status()
        return (answer.json().get("instant") or {}).get(str(project)) or {}


# ---------------------------------------------------------------------------------------------------------------
# the simulated annotator


@dataclass
class Run:
    fold: int
    article: str
    order: str
    seed: int
    project: int
    labelled: list[int] = field(default_factory=list)  # row indices in labelling order
    preds: dict[int, dict[str, list[dict]]] = field(default_factory=dict)  # count -> method -> test predictions
    versions: dict[int, str] = field(default_factory=dict)  # count -> version /predict answered with
    latencies: list[tuple[int, float, float]] = field(default_factory=list)  # (labels after, seconds, POST seconds)
    finetune_seconds: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


def simulate(backend: Backend, schema: Schema, run: Run, rows, data, pool, test, counts, vectors, pool_majority):
    """Label the pool in the run's order; score the held-out suggestions and the baselines at each count."""
    started = time.perf_counter()
    test_rows = [rows[i] for i in test]
    test_data = [data[i] for i in test]
    rng = np.random.default_rng([run.seed, run.fold])
    queue = [pool[i] for i in rng.permutation(len(pool))] if run.order == "random" else list(pool)
    version = backend.version(run.project)
    wanted = sorted(c for c in counts if c <= len(pool))
    for count in range(0, wanted[-1] + 1):
        if count in wanted:
            labels, _, served = backend.predict(run.project, test_data)
            run.versions[count] = served
            entry = {INSTANT if count else COLD: labels, MAJ_POOL: pool_majority}
            if count:
                entry.update(baseline_predictions(schema, [rows[i] for i in run.labelled], test_rows, vectors))
            run.preds[count] = entry
            line = score(schema, [gold_labels(schema, r) for r in test_rows], labels)
            lat = [s for n, s, _ in run.latencies if n > 0]
            print(
                f"    {count:3d} labels: mean macro-F1 {line['mean_macro_f1']:.3f}, frames micro-F1 "
                f"{line['frames_micro_f1']:.3f} (this fold; {served})"
                + (f"; update p50 {1000 * percentile(lat, 50):.0f} ms" if lat else ""),
                flush=True,
            )
        if count == wanted[-1]:
            break
        if run.order == "uncertainty":
            unlabelled = [i for i in pool if i not in set(run.labelled)]
            _, scores, _ = backend.predict(run.project, [data[i] for i in unlabelled])
            pick = unlabelled[int(np.argmin(scores))]
        else:
            pick = queue[count]
        post_started = time.perf_counter()
        post = backend.annotate(run.project, pick + 1, data[pick], gold_labels(schema, rows[pick]))
        version, seconds = backend.wait_new_version(run.project, version, post_started)
        run.labelled.append(pick)
        run.latencies.append((len(run.labelled), seconds, post))
    run.seconds = time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------------------
# fine-tune


def training_arguments(args) -> Any:
    from training.training_args import TrainingArguments

    kinds = {f.name: f for f in fields(TrainingArguments)}
    overrides: dict[str, Any] = {"progress": False, "threads": args.train_threads}
    if args.finetune_mode == "all":
        overrides["split_ratios"] = (1.0, 0.0, 0.0)
    for item in args.train_arg:
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in kinds:
            raise SystemExit(f"--train-arg {item!r}: TrainingArguments has no field {key!r}")
        default = getattr(TrainingArguments(), key)
        if isinstance(default, bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            overrides[key] = tuple(float(x) for x in value.split(","))
        elif default is None:
            overrides[key] = int(value)
        else:
            overrides[key] = type(default)(value)
    return TrainingArguments(**overrides)


def finetune(schema: Schema, rows, data, labelled: Sequence[int], test: Sequence[int], train_args, models_dir):
    """run_training on the labelled tasks; the held-out predictions of its model, and the seconds it took."""
    import logging

    from training.pipeline import run_training
    from training.predict import TrainedPredictor

    logging.getLogger("training").setLevel(logging.WARNING)
    tasks = []
    for i in labelled:
        result = labels_to_results(schema, gold_labels(schema, rows[i]), data[i])
        annotation = {"id": i + 1, "result": result, "completed_by": 1, "was_cancelled": False, "ground_truth": False}
        tasks.append({"id": i + 1, "data": data[i], "annotations": [annotation]})
    started = time.perf_counter()
    outcome = run_training(tasks, schema, models_dir, train_args, promote=False, source="bench")
    trained = time.perf_counter() - started
    predictor = TrainedPredictor(outcome.model_dir, threads=train_args.threads)
    labels = [p.labels for p in predictor.predict([data[i] for i in test])]
    splits = outcome.timings.get("steps"), outcome.message
    return labels, trained, splits


# ---------------------------------------------------------------------------------------------------------------
# aggregation


def summarise(schema: Schema, runs: Sequence[Run], rows, tests: Mapping[int, list[int]]) -> dict[str, Any]:
    """{method: {order: {count: {"pooled": {metric: [mean, sd, n]}, "per_fold": {...}}}}}."""
    gold = [gold_labels(schema, r) for r in rows]
    out: dict[str, Any] = {}
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.order, run.seed), []).append(run)
    n_folds = len(tests)
    for method in METHODS:
        for order in sorted({r.order for r in runs}):
            counts = sorted({c for r in runs if r.order == order for c, e in r.preds.items() if method in e})
            for count in counts:
                per_fold, pooled = [], []
                for (group_order, _), members in groups.items():
                    if group_order != order:
                        continue
                    have = [r for r in members if method in r.preds.get(count, {})]
                    for r in have:
                        per_fold.append(score(schema, [gold[i] for i in tests[r.fold]], r.preds[count][method]))
                    if len(have) == n_folds:  # every article held out once: all 108 paragraphs
                        g = [gold[i] for r in have for i in tests[r.fold]]
                        p = [x for r in have for x in r.preds[count][method]]
                        pooled.append(score(schema, g, p))
                if not per_fold:
                    continue
                cell = {"per_fold": _mean_sd(per_fold)}
                if pooled:
                    cell["pooled"] = _mean_sd(pooled)
                out.setdefault(method, {}).setdefault(order, {})[str(count)] = cell
    return out


def _mean_sd(scores: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    keys = scores[0].keys()
    return {
        k: [
            float(np.mean([s[k] for s in scores])),
            float(np.std([s[k] for s in scores], ddof=1)) if len(scores) > 1 else 0.0,
            len(scores),
        ]
        for k in keys
    }


def _get(table, method, order, count, metric, kind="pooled"):
    cell = table.get(method, {}).get(order, {}).get(str(count), {})
    value = cell.get(kind, {}).get(metric)
    return value


def _fmt(value, digits=3, sd=True) -> str:
    if value is None:
        return "–"
    mean, spread, n = value
    return f"{mean:.{digits}f} ± {spread:.{digits - 1}f}" if sd and n > 1 else f"{mean:.{digits}f}"


def best_baseline(table, order, count, metric) -> tuple[str | None, float | None]:
    best, name = None, None
    for method in BASELINES:
        value = _get(table, method, order, count, metric)
        if value is not None and (best is None or value[0] > best):
            best, name = value[0], method
    return name, best


def print_report(schema: Schema, table, orders, counts, latency, big_latency, notes) -> dict[str, Any]:
    singles = [d.name for d in schema.of_kind("single")]
    short = {d: d.replace("stance_", "").replace("threat_characterization", "threat") for d in singles}
    print("\n### Headline: leave-one-article-out, mean ± sd\n")
    print("pooled: the 5 held-out articles scored together (108 paragraphs), sd over seeds; per fold: each held-out")
    print("article alone (17-25 paragraphs), sd over folds x seeds. x best: ratio to the best baseline, same run.\n")
    head = [
        "method", "order", "labels", "mean macro-F1 pooled", "per fold", "x best",
        "frames micro-F1 pooled", "per fold", "x best",
    ]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("| --- | --- |" + " ---: |" * (len(head) - 2))
    for order in orders:
        for count in counts:
            for method in METHODS:
                fold = _get(table, method, order, count, "mean_macro_f1", "per_fold")
                if fold is None or (method == COLD and count) or (method == INSTANT and not count):
                    continue
                cells = [method, order, str(count)]
                for metric in ("mean_macro_f1", "frames_micro_f1"):
                    p = _get(table, method, order, count, metric)
                    f = _get(table, method, order, count, metric, "per_fold")
                    _, best = best_baseline(table, order, count, metric)
                    ratio = f"{p[0] / best:.2f}" if p is not None and best and method not in BASELINES else ""
                    cells += [_fmt(p), _fmt(f), ratio]
                print("| " + " | ".join(cells) + " |")
    print("\n### Per dimension (pooled over the 5 folds, mean over seeds): accuracy / macro-F1\n")
    head = ["method", "order", "labels", *(short[d] for d in singles), "frames micro / macro-F1"]
    print("| " + " | ".join(head) + " |")
    print("| --- | --- |" + " ---: |" * (len(head) - 2))
    for order in orders:
        for count in counts:
            for method in METHODS:
                if _get(table, method, order, count, "mean_macro_f1") is None:
                    continue
                if (method == COLD and count) or (method == INSTANT and not count):
                    continue
                cells = [method, order, str(count)]
                for d in singles:
                    acc = _get(table, method, order, count, f"{d}_acc")
                    f1 = _get(table, method, order, count, f"{d}_f1")
                    cells.append(f"{acc[0]:.2f} / {f1[0]:.2f}")
                micro = _get(table, method, order, count, "frames_micro_f1")
                macro = _get(table, method, order, count, "frames_macro_f1")
                cells.append(f"{micro[0]:.3f} / {macro[0]:.3f}")
                print("| " + " | ".join(cells) + " |")

    verdict: dict[str, Any] = {}
    print("\n### Targets (pooled means)\n")
    top = max(counts)
    for order in orders:
        for method in (INSTANT, FINETUNE):
            f1 = _get(table, method, order, top, "mean_macro_f1")
            frames = _get(table, method, order, top, "frames_micro_f1")
            if f1 is None or frames is None:
                continue
            ok1, ok2 = f1[0] >= 0.65, frames[0] >= 0.70
            verdict[f"{method}/{order}/{top}"] = {"mean_macro_f1": f1[0], "frames_micro_f1": frames[0]}
            print(
                f"- {method}, {order} order, {top} labels: mean macro-F1 {f1[0]:.3f} (>= 0.65: "
                f"{'met' if ok1 else 'NOT met'}), frames micro-F1 {frames[0]:.3f} (>= 0.70: "
                f"{'met' if ok2 else 'NOT met'})"
            )
    if "random" in orders and "uncertainty" in orders:
        for metric in ("mean_macro_f1", "frames_micro_f1"):
            goal = _get(table, INSTANT, "random", top, metric)
            if goal is None:
                continue
            reached = [
                c for c in counts if c and (v := _get(table, INSTANT, "uncertainty", c, metric)) and v[0] >= goal[0]
            ]
            first = reached[0] if reached else None
            at40 = _get(table, INSTANT, "uncertainty", 40, metric)
            verdict[f"uncertainty_reaches_random_{top}_{metric}"] = first
            print(
                f"- instant learner, {metric}: random order at {top} labels {goal[0]:.3f}; uncertainty order "
                "reaches it "
                + (f"at {first} labels" if first else "at none of the counts measured")
                + (f" (at 40: {at40[0]:.3f})" if at40 else "")
                + (" -> target (<= 40 labels) met" if first and first <= 40 else " -> target (<= 40 labels) NOT met")
            )
    if latency:
        print("\n### Update latency: webhook -> new version serving (/setup), instant learner\n")
        print("| labels after the webhook | webhooks | p50 ms | p95 ms | max ms | POST p50 ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for row in latency:
            print(
                f"| {row['labels']} | {row['n']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['max_ms']:.0f} | "
                f"{row['post_p50_ms']:.1f} |"
            )
    if big_latency:
        print("\n### Update latency at scale (synthetic distinct tasks, timed one by one on a settled learner)\n")
        print("| labels | timed webhooks | p50 ms | p95 ms | max ms | fit s (last, /health) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in big_latency["marks"]:
            print(
                f"| {row['labels']} | {row['n']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['max_ms']:.0f} | "
                f"{row['last_fit_seconds']:.2f} |"
            )
        print(
            f"\n{big_latency['labels']} annotations posted in {big_latency['seconds']:.0f} s "
            f"({big_latency['fits']} fits); within 2 s at every mark: "
            f"{'yes' if all(r['max_ms'] <= 2000 for r in big_latency['marks']) else 'no'} (max), "
            f"{'yes' if all(r['p95_ms'] <= 2000 for r in big_latency['marks']) else 'no'} (p95)"
        )
    for note in notes:
        print(f"\nnote: {note}")
    return verdict


def latency_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    samples = [(n, s, p) for r in runs for n, s, p in r.latencies]
    rows = []
    groups = [("all", samples)]
    groups += [
        (f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}", [x for x in samples if lo <= x[0] <= hi]) for lo, hi in BUCKETS
    ]
    for name, group in groups:
        if not group:
            continue
        seconds = [s for _, s, _ in group]
        rows.append(
            {
                "labels": name,
                "n": len(group),
                "p50_ms": 1000 * percentile(seconds, 50),
                "p95_ms": 1000 * percentile(seconds, 95),
                "max_ms": 1000 * max(seconds),
                "post_p50_ms": 1000 * percentile([p for _, _, p in group], 50),
                "timeouts": sum(1 for s in seconds if not np.isfinite(s)),
            }
        )
    return rows


def measure_scale(backend: Backend, schema: Schema, rows, data, n_labels: int, repeats: int, project: int):
    """Post n_labels synthetic annotations; time `repeats` webhooks ending at each mark, one by one."""
    marks = sorted({m for m in (10, 100, 250, 500, 1000, 2000, 5000) if m <= n_labels} | {n_labels})
    timed = {n for m in marks for n in range(max(1, m - repeats + 1), m + 1)}
    samples: dict[int, list[float]] = {m: [] for m in marks}
    fit_seconds: dict[int, float] = {}
    started = time.perf_counter()
    version = backend.version(project)
    for i in range(n_labels):
        n = i + 1
        base = data[i % len(data)]
        task = {**base, "text": f"{base['text']} (Report {i}.)", "key": f"synthetic-{i:05d}"}
        labels = gold_labels(schema, rows[i % len(rows)])
        if n in timed:
            deadline = time.perf_counter() + 120
            while backend.instant_state(project).get("accepted_tasks", 0) < n - 1 and time.perf_counter() < deadline:
                time.sleep(0.02)  # settle: the served fit covers every annotation posted so far
            version = backend.version(project)
            t0 = time.perf_counter()
            backend.annotate(project, 100000 + i, task, labels)
            version, seconds = backend.wait_new_version(project, version, t0)
            mark = next(m for m in marks if n <= m)
            samples[mark].append(seconds)
            fit_seconds[mark] = backend.instant_state(project).get("last_fit_seconds") or float("nan")
        else:
            backend.annotate(project, 100000 + i, task, labels)
        if n % 100 == 0:
            print(f"  latency: {n}/{n_labels} annotations posted ({time.perf_counter() - started:.0f} s)", flush=True)
    state = backend.instant_state(project)
    return {
        "labels": n_labels,
        "seconds": time.perf_counter() - started,
        "fits": state.get("fits"),
        "marks": [
            {
                "labels": m,
                "n": len(v),
                "p50_ms": 1000 * percentile(v, 50),
                "p95_ms": 1000 * percentile(v, 95),
                "max_ms": 1000 * max(v),
                "samples_ms": [round(1000 * s, 1) for s in v],
                "last_fit_seconds": fit_seconds.get(m, float("nan")),
            }
            for m, v in samples.items()
            if v
        ],
    }


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=REPO / "data/dev_labels.jsonl")
    parser.add_argument("--tasks", type=Path, default=REPO / "data/sample_tasks.jsonl")
    parser.add_argument("--counts", type=int_list, default=[0, 10, 20, 40, 80])
    parser.add_argument("--seeds", type=int, default=3, help="random-order shuffles per fold (default 3)")
    parser.add_argument("--orders", default="random,uncertainty")
    parser.add_argument("--folds", default="all", help="fold indices to run (sorted article ids), default all")
    parser.add_argument("--finetune-counts", type=int_list, default=[80], help="'' to skip fine-tuning")
    parser.add_argument("--finetune-orders", default="random")
    parser.add_argument("--finetune-seeds", type=int, default=1)
    parser.add_argument("--finetune-mode", choices=("pipeline", "all"), default="pipeline")
    parser.add_argument("--finetune-budget", type=float, default=20.0, help="minutes of fine-tuning at most")
    parser.add_argument("--train-threads", type=int, default=1, help="torch threads for fine-tuning (default 1)")
    parser.add_argument("--train-arg", action="append", default=[], help="TrainingArguments override KEY=VALUE")
    parser.add_argument("--latency-labels", type=int, default=1000, help="synthetic annotations (0: skip)")
    parser.add_argument("--latency-repeats", type=int, default=10)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    if any(o not in ("random", "uncertainty") for o in orders):
        raise SystemExit("--orders: random and/or uncertainty")
    counts = sorted(set(args.counts) | {0})

    for name in list(os.environ):  # the backend must not read a real Label Studio or other WORKBENCH_* settings
        if name.startswith(("WORKBENCH_", "LABEL_STUDIO_")):
            del os.environ[name]

    from backend.app import create_app
    from backend.settings import Settings
    from workbench.services import ServerThread

    schema = load_schema()
    tasks_by_key = {t["key"]: t for t in read_jsonl(args.tasks)}
    rows = sorted((r for r in read_jsonl(args.dev) if r["key"] in tasks_by_key), key=lambda r: r["key"])
    data = [tasks_by_key[r["key"]] for r in rows]
    articles = sorted({r["article_id"] for r in rows})
    folds = list(range(len(articles))) if args.folds == "all" else int_list(args.folds)
    tests = {f: [i for i, r in enumerate(rows) if r["article_id"] == articles[f]] for f in folds}
    pools = {f: [i for i, r in enumerate(rows) if r["article_id"] != articles[f]] for f in folds}
    notes: list[str] = []
    for f in folds:
        if len(pools[f]) < max(counts):
            notes.append(f"fold {f}: pool of {len(pools[f])} < {max(counts)} labels; it stops at {len(pools[f])}")

    overall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="suggestion-curve-") as scratch:
        settings = Settings(models_dir=Path(scratch) / "models", train_warm=False, train_every=0)
        app = create_app(settings)
        with ServerThread(app) as server:
            backend = Backend(server.url, schema, args.poll_ms / 1000)
            print(f"backend on {server.url}; cold start {backend.version(1)}", flush=True)
            embedder = app.state.service.ladder.cold_start.embedder
            print(f"encoder: {embedder.describe()}", flush=True)
            texts = [r["text"] for r in rows]
            vectors = dict(zip(texts, np.asarray(embedder.embed(texts)), strict=True))
            runs: list[Run] = []
            project = 100
            plan = [(f, o, s) for f in folds for o in orders for s in (range(args.seeds) if o == "random" else [0])]
            print(
                f"{len(rows)} paragraphs, {len(articles)} articles; {len(plan)} runs (folds x orders x seeds), "
                f"counts {counts}",
                flush=True,
            )
            for k, (f, order, seed) in enumerate(plan, start=1):
                project += 1
                run = Run(f, articles[f], order, seed, project)
                pool_majority = majority_predict(schema, [rows[i] for i in pools[f]], len(tests[f]), FRAMES_TOP_K)
                print(
                    f"[{k}/{len(plan)}] fold {f} (article {articles[f][:8]}, {len(tests[f])} held out, pool "
                    f"{len(pools[f])}), {order} order, seed {seed}, project {project}",
                    flush=True,
                )
                simulate(backend, schema, run, rows, data, pools[f], tests[f], counts, vectors, pool_majority)
                runs.append(run)
                print(f"    run took {run.seconds:.0f} s (total {time.perf_counter() - overall:.0f} s)", flush=True)

            big = None
            if args.latency_labels:
                print(f"latency at scale: {args.latency_labels} synthetic annotations", flush=True)
                big = measure_scale(
                    backend, schema, rows, data, args.latency_labels, args.latency_repeats, project=project + 1
                )

        # fine-tunes, after the server is gone (the curve's results exist whatever the budget allows)
        jobs = [
            (r, c)
            for r in runs
            for c in args.finetune_counts
            if r.order in args.finetune_orders.split(",") and r.seed < args.finetune_seeds and c in r.preds
        ]
        skipped = [
            f"{o} order x {c} labels"
            for o in orders
            for c in counts
            if c and not (o in args.finetune_orders.split(",") and c in args.finetune_counts)
        ]
        if skipped:
            notes.append(
                "fine-tune not run for: " + ", ".join(skipped) + f"; and only for seeds < {args.finetune_seeds} "
                "(--finetune-counts / --finetune-orders / --finetune-seeds)"
            )
        if jobs:
            train_args = training_arguments(args)
            budget = time.perf_counter() + 60 * args.finetune_budget
            print(f"fine-tuning {len(jobs)} models ({args.finetune_mode} split, {train_args.threads} thread(s))")
            for k, (run, count) in enumerate(jobs, start=1):
                if time.perf_counter() > budget:
                    notes.append(f"fine-tune budget ({args.finetune_budget} min) spent: {len(jobs) - k + 1} skipped")
                    break
                models = Path(scratch) / f"ft-{run.project}-{count}"
                labels, seconds, (steps, message) = finetune(
                    schema, rows, data, run.labelled[:count], tests[run.fold], train_args, models
                )
                run.preds[count][FINETUNE] = labels
                run.finetune_seconds[count] = seconds
                line = score(schema, [gold_labels(schema, rows[i]) for i in tests[run.fold]], labels)
                print(
                    f"  [{k}/{len(jobs)}] fold {run.fold} {run.order} seed {run.seed}, {count} labels: trained in "
                    f"{seconds:.0f} s ({steps} steps; {message.split('(')[-1].rstrip(')')}); mean macro-F1 "
                    f"{line['mean_macro_f1']:.3f}, frames micro-F1 {line['frames_micro_f1']:.3f} (this fold)",
                    flush=True,
                )

    table = summarise(schema, runs, rows, tests)
    latency = latency_rows(runs)
    ft_seconds = [s for r in runs for s in r.finetune_seconds.values()]
    if ft_seconds:
        notes.append(
            f"fine-tune time from the labels to a model ready to serve (run_training, {args.finetune_mode} split): "
            f"median {statistics.median(ft_seconds):.0f} s, max {max(ft_seconds):.0f} s over {len(ft_seconds)} runs"
        )
    notes.append(f"total {time.perf_counter() - overall:.0f} s")
    verdict = print_report(schema, table, orders, counts, latency, big, notes)
    if args.json:
        out = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "articles": articles,
            "scores": table,
            "targets": verdict,
            "latency": latency,
            "latency_at_scale": big,
            "runs": [
                {
                    "fold": r.fold,
                    "article": r.article,
                    "order": r.order,
                    "seed": r.seed,
                    "project": r.project,
                    "labelled_keys": [rows[i]["key"] for i in r.labelled],
                    "versions": r.versions,
                    "latencies_ms": [round(1000 * s, 1) for _, s, _ in r.latencies],
                    "finetune_seconds": r.finetune_seconds,
                }
                for r in runs
            ],
            "notes": notes,
        }
        args.json.write_text(json.dumps(out, indent=1, default=float) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
