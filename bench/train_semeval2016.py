"""Stance detection on SemEval-2016 Task 6 (subtask A) with the workbench's own training pipeline.

What it measures, in one run:
  headline   `training.pipeline.run_training` (the code `workbench train` runs) on a fixed stratified 80% of the
             SemEval-2016 training file, built as a Label Studio-like export with bench/schemas/semeval2016.yaml
             (five targets, one stance question per target; each tweet answers only its own target's question,
             the other four are missing and masked). The pipeline carves its own validation split (early stopping,
             temperature scaling) from that 80%; nothing of the other 20% is seen in training. Scored on the 20%:
             F_avg (mean of the F1 of FAVOR and AGAINST over all targets pooled, SemEval's official metric), per
             target F_avg, macro-F1 over the three classes; wall time, fit steps/s, peak memory.
  curve      a learning curve at 250/500/1000/all labels: random selection (nested random prefixes) against
             uncertainty selection (the same random 250 first; then train, score the unlabelled rest of the 80% with
             the current model, add the least-confident tweets (lowest calibrated top probability) up to the next
             size, repeat). At "all" both selections are the same data, so the headline run is that point.
  references per-target majority class and an n-gram linear SVM, both on the same 80/20 split (in-split references),
             and the published figures on the official test set (not comparable: different test data).

Data: ../shared/data/semeval2016/semeval2016-task6-trainingdata.txt (latin-1, tab-separated), read in place.
Run:  .venv/bin/python bench/train_semeval2016.py [--quick] [--no-curve] [--json FILE] [--data FILE]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.cv_report and the project's packages
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA = REPO.parent / "shared" / "data" / "semeval2016" / "semeval2016-task6-trainingdata.txt"
SCHEMA_PATH = REPO / "bench" / "schemas" / "semeval2016.yaml"
STANCES = {"FAVOR": "favor", "AGAINST": "against", "NONE": "none"}
POLES = ("favor", "against")
# Published F_avg on the official SemEval-2016 Task 6 test set (1,249 tweets): not the split measured here.
PUBLISHED = [
    ("majority class per target (official test set)", 65.2),
    ("best 2016 system, MITRE (official test set)", 67.8),
    ("RoBERTa-base (official test set)", 68.0),
]


# ---- data ----


def read_tweets(path: Path) -> list[dict[str, str]]:
    """The training file as dicts: id, target, text, stance (favor/against/none)."""
    raw = path.read_bytes().decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
    reader = csv.DictReader(io.StringIO(raw), delimiter="\t", quoting=csv.QUOTE_NONE)
    tweets = []
    for row in reader:
        if not row.get("Tweet"):
            continue
        tweets.append(
            {
                "id": row["ID"].strip(),
                "target": row["Target"].strip(),
                "text": row["Tweet"].strip(),
                "stance": STANCES[row["Stance"].strip().upper()],
            }
        )
    return tweets


def split_80_20(tweets: Sequence[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """A fixed 80/20 split, stratified by (target, stance)."""
    from sklearn.model_selection import train_test_split

    strata = [f"{t['target']}|{t['stance']}" for t in tweets]
    train, test = train_test_split(list(tweets), test_size=0.2, stratify=strata, random_state=seed)
    return list(train), list(test)


def dimension_of(schema, target: str) -> str:
    """The stance dimension of a SemEval target name (e.g. "Atheism" -> "stance_atheism")."""
    for dim in schema.dimensions:
        if dim.target is not None and dim.target.name == target:
            return dim.name
    raise SystemExit(f"target {target!r} is not in {SCHEMA_PATH}")


def as_task(tweet: dict, schema) -> dict:
    """A Label Studio export task with one submitted annotation answering the tweet's own target only."""
    from annotation_config.regions import labels_to_results

    data = {
        "key": f"semeval2016-{tweet['id']}",
        "text": tweet["text"],
        "target": tweet["target"],
        "tweet_id": tweet["id"],
    }
    result = labels_to_results(schema, {dimension_of(schema, tweet["target"]): tweet["stance"]}, data)
    number = int(tweet["id"])
    return {
        "id": number,
        "data": data,
        "annotations": [{"id": number, "completed_by": 1, "was_cancelled": False, "result": result}],
    }


# ---- metrics ----


def f1(gold: Sequence[str], pred: Sequence[str], label: str) -> float:
    tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
    n_pred, n_gold = sum(p == label for p in pred), sum(g == label for g in gold)
    if not tp:
        return 0.0
    precision, recall = tp / n_pred, tp / n_gold
    return 2 * precision * recall / (precision + recall)


def scores(gold: Sequence[str], pred: Sequence[str], targets: Sequence[str]) -> dict[str, Any]:
    """Pooled F_avg (official), macro-F1 over favor/against/none, accuracy, and F_avg per target (in %)."""
    out = {
        "f_avg": 100 * sum(f1(gold, pred, pole) for pole in POLES) / 2,
        "macro_f1": 100 * sum(f1(gold, pred, label) for label in STANCES.values()) / 3,
        "accuracy": 100 * sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold),
        "per_target": {},
    }
    for target in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == target]
        g, p = [gold[i] for i in idx], [pred[i] for i in idx]
        out["per_target"][target] = 100 * sum(f1(g, p, pole) for pole in POLES) / 2
    return out


def majority_reference(train: Sequence[dict], test: Sequence[dict]) -> dict[str, Any]:
    """Per-target majority class of the 80%, scored on the 20%."""
    majority = {
        target: Counter(t["stance"] for t in train if t["target"] == target).most_common(1)[0][0]
        for target in {t["target"] for t in train}
    }
    pred = [majority[t["target"]] for t in test]
    return scores([t["stance"] for t in test], pred, [t["target"] for t in test])


def svm_reference(train: Sequence[dict], test: Sequence[dict]) -> dict[str, Any]:
    """A linear SVM per target on word 1-3-grams and character 2-5-grams (the SemEval-2016 organisers' baseline)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    pred: dict[str, str] = {}
    for target in {t["target"] for t in train}:
        rows = [t for t in train if t["target"] == target]
        features = make_union(
            TfidfVectorizer(ngram_range=(1, 3), sublinear_tf=True, lowercase=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True),
        )
        model = make_pipeline(features, LinearSVC(C=0.5, class_weight="balanced"))
        model.fit([t["text"] for t in rows], [t["stance"] for t in rows])
        chunk = [t for t in test if t["target"] == target]
        for tweet, label in zip(chunk, model.predict([t["text"] for t in chunk]), strict=True):
            pred[tweet["id"]] = label
    return scores([t["stance"] for t in test], [pred[t["id"]] for t in test], [t["target"] for t in test])


# ---- the model ----


def target_probabilities(predictor, schema, tweets: Sequence[dict], batch_size: int = 128):
    """Calibrated probabilities [N, 3] of each tweet's own target question.

    `run_model(..., labelled_only=True)` encodes each tweet only in the view its own target's question reads (with
    pair target encoding, one (target, text) pass of five; with late encoding, the one plain pass). The forward
    pass, tokenization and calibration are the model's own.
    """
    import numpy as np

    from training.calibration import Temperature, softmax
    from training.predict import run_model

    names = [dimension_of(schema, tweet["target"]) for tweet in tweets]
    records = [{schema.data.text: tweet["text"], name: "asked"} for tweet, name in zip(tweets, names, strict=True)]
    outputs = run_model(predictor.model, predictor.tokenizer, records, batch_size=batch_size, labelled_only=True)
    out = np.zeros((len(tweets), 3), dtype=np.float64)
    for i, name in enumerate(names):
        temperature = predictor.temperatures.get(name, Temperature()).temperature
        out[i] = softmax(outputs.logits[name][i : i + 1], temperature)[0]
    return out


def check_against_predictor(predictor, schema, tweets: Sequence[dict]) -> float:
    """Largest difference between `target_probabilities` and the served predictor's own scores (a few tweets)."""
    import numpy as np

    sample = list(tweets[:8])
    mine = target_probabilities(predictor, schema, sample)
    raw = predictor.outputs([{"text": t["text"], "target": t["target"]} for t in sample])
    probs = raw.probabilities(predictor.dimensions, predictor.temperatures)
    theirs = np.stack([probs[dimension_of(schema, t["target"])][i] for i, t in enumerate(sample)])
    return float(np.abs(mine - theirs).max())


def train_and_score(
    train_tweets: Sequence[dict], test: Sequence[dict], schema, targs, scratch: Path, label: str, keep: bool = False
) -> dict[str, Any]:
    """One pipeline run on `train_tweets`; scores on `test`; returns figures (and the predictor when `keep`)."""
    import torch

    from training.pipeline import run_training
    from training.predict import TrainedPredictor

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tasks = [as_task(t, schema) for t in train_tweets]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    outcome = run_training(tasks, schema, scratch / label, targs, promote=False, source=f"semeval2016 {label}")
    wall = time.perf_counter() - started
    predictor = TrainedPredictor(outcome.model_dir, runtime="torch-fp32")  # run_model below needs the torch encoder
    mark = time.perf_counter()
    probs = target_probabilities(predictor, schema, test)
    infer = time.perf_counter() - mark
    names = list(STANCES.values())  # the schema's label order: favor, against, none
    pred = [names[k] for k in probs.argmax(axis=1)]
    result = scores([t["stance"] for t in test], pred, [t["target"] for t in test])
    timings = outcome.timings
    fit = float(timings["train_phases"].get("fit", 0.0))
    result.update(
        {
            "label": label,
            "n_labels": len(train_tweets),
            "splits": outcome.metrics and {k: v.get("n") for k, v in outcome.metrics.items()},
            "wall_seconds": wall,
            "train_seconds": float(timings["train_seconds"]),
            "fit_seconds": fit,
            "steps": int(timings["steps"]),
            "steps_per_second": timings["steps"] / fit if fit else None,
            "best_epoch": _manifest(outcome.model_dir).get("best_epoch"),
            "stopped_early": _manifest(outcome.model_dir).get("stopped_early"),
            # the pipeline's own validation split (10% of the training tweets): for choosing hyper-parameters
            "validation_f_avg": _percent((outcome.metrics.get("validation") or {}).get("stance_f_avg")),
            "validation_primary": _percent((outcome.metrics.get("validation") or {}).get("primary")),
            "device": timings["device"],
            "infer_seconds": infer,
            "infer_tweets_per_second": len(test) / infer if infer else None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "phases": {k: v for k, v in timings.items() if k.endswith("_seconds")},
        }
    )
    if keep:
        result["_predictor"] = predictor
    else:
        del predictor
    shutil.rmtree(scratch / label, ignore_errors=True)
    print(
        f"  {label:<22} n={len(train_tweets):>4}  F_avg {result['f_avg']:5.1f}  macro-F1 {result['macro_f1']:5.1f}  "
        f"wall {wall:6.1f}s (fit {fit:5.1f}s, {result['steps']} steps, {result['steps_per_second'] or 0:.1f}/s)  "
        f"best epoch {result['best_epoch']}  val F_avg {result['validation_f_avg'] or 0:.1f}  "
        f"load {load_before:.2f}->{result['load_after']:.2f}",
        flush=True,
    )
    return result


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * float(value)


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def least_confident(predictor, schema, pool: Sequence[dict], count: int) -> list[dict]:
    """The `count` pool tweets whose calibrated top probability is lowest."""
    probs = target_probabilities(predictor, schema, pool)
    order = sorted(range(len(pool)), key=lambda i: (probs[i].max(), pool[i]["id"]))
    return [pool[i] for i in order[:count]]


def learning_curve(
    train: list[dict],
    test: list[dict],
    schema,
    targs,
    scratch: Path,
    sizes: list[int],
    seed: int,
    full: dict | None,
    on_row=None,
) -> list[dict]:
    """Random vs uncertainty-ordered selection at each size; returns rows {size, random, uncertainty}."""
    order = list(train)
    random.Random(seed).shuffle(order)
    rows: list[dict] = []
    labelled = order[: sizes[0]]
    previous = None
    for position, size in enumerate(sizes):
        row: dict[str, Any] = {"size": size}
        if size >= len(train) and full is not None:
            row["random"] = row["uncertainty"] = full
            row["note"] = "all labels: both selections are the same data (the headline run)"
            rows.append(row)
            break
        row["random"] = train_and_score(
            order[:size], test, schema, targs, scratch, f"random-{size}", keep=position == 0
        )
        if position == 0:
            row["uncertainty"] = row["random"]
            previous = row["random"].pop("_predictor")
        else:
            pool_ids = {t["id"] for t in labelled}
            pool = [t for t in train if t["id"] not in pool_ids]
            mark = time.perf_counter()
            labelled = labelled + least_confident(previous, schema, pool, size - len(labelled))
            select_seconds = time.perf_counter() - mark
            del previous
            row["uncertainty"] = train_and_score(
                labelled, test, schema, targs, scratch, f"uncertainty-{size}", keep=True
            )
            row["uncertainty"]["select_seconds"] = select_seconds
            previous = row["uncertainty"].pop("_predictor")
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


# ---- main ----


def training_arguments(args: argparse.Namespace):
    from training.training_args import TrainingArguments

    return TrainingArguments(
        encoder=args.encoder,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        head_learning_rate=args.head_lr,
        warmup_ratio=args.warmup,
        weight_decay=args.weight_decay,
        max_length=args.max_length,
        classifier_dropout=args.dropout,
        early_stopping_patience=args.patience,
        class_weights=not args.no_class_weights,
        group_by_length=args.group_by_length,
        target_encoding=args.target_encoding,
        seed=args.train_seed,
        # validation (10%) for early stopping and calibration; our 20% is the real test. The pipeline's own test
        # split is 1%: build_dataset fails on an empty split (datasets.Dataset.from_list([]) with features).
        split_ratios=(0.89, 0.1, 0.01),
        device=args.device,
        threads=args.threads,
        progress=False,
    )


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def print_report(report: dict) -> None:
    full, refs = report["headline"], report["references"]
    print()
    print(
        f"SemEval-2016 Task 6A, {report['n_train']} training / {report['n_test']} held-out tweets "
        f"(stratified 80/20 of the training file, seed {report['split_seed']})"
    )
    print(f"machine: {report['machine']}")
    print(f"hyper-parameters: {json.dumps(report['hyperparameters'])}")
    print()
    print(f"{'system':<52} {'F_avg':>6} {'macro-F1':>9}  per-target F_avg")
    targets = sorted(full["per_target"])
    short = {t: t.split()[0][:8] for t in targets}
    print(f"{'':<52} {'':>6} {'':>9}  " + " ".join(f"{short[t]:>8}" for t in targets))

    def line(name: str, s: dict) -> None:
        per = " ".join(f"{s['per_target'][t]:8.1f}" for t in targets)
        print(f"{name:<52} {s['f_avg']:6.1f} {s['macro_f1']:9.1f}  {per}")

    line("workbench, MiniLM-L6 fine-tuned (held-out 20%)", full)
    line("in-split reference: majority class per target", refs["majority"])
    line("in-split reference: n-gram linear SVM per target", refs["svm"])
    for name, value in PUBLISHED:
        print(f"{name:<52} {value:6.1f}")
    print("NOTE: our figures are on a held-out 20% of the SemEval-2016 training file, not on the official test set;")
    print("      the published figures above are on the official test set, so they are not directly comparable.")
    print("      Compare with the in-split references, which use exactly our split.")
    print()
    print(
        f"headline run: wall {full['wall_seconds']:.1f} s (train {full['train_seconds']:.1f} s, fit "
        f"{full['fit_seconds']:.1f} s), {full['steps']} steps at {full['steps_per_second']:.1f} steps/s, best "
        f"epoch {full['best_epoch']}, device {full['device']}, peak RSS {full['peak_rss_mib']:.0f} MiB"
        + (f", peak GPU {full['peak_gpu_mib']:.0f} MiB" if full.get("peak_gpu_mib") else "")
        + f"; scoring {report['n_test']} tweets {full['infer_seconds']:.2f} s; load average "
        f"{full['load_before']:.2f} -> {full['load_after']:.2f}"
    )
    if report.get("curve"):
        print()
        print(
            f"{'labels':>7} | {'random F_avg':>12} {'macro-F1':>9} {'wall s':>7} | "
            f"{'uncertainty F_avg':>17} {'macro-F1':>9} {'wall s':>7}"
        )
        for row in report["curve"]:
            r, u = row["random"], row["uncertainty"]
            print(
                f"{row['size']:>7} | {r['f_avg']:12.1f} {r['macro_f1']:9.1f} {r['wall_seconds']:7.1f} | "
                f"{u['f_avg']:17.1f} {u['macro_f1']:9.1f} {u['wall_seconds']:7.1f}"
            )
        print("(250: uncertainty starts from the same random 250; all: both are the same data)")
    print(f"\ntotal bench time {report['total_seconds']:.0f} s, process peak RSS {report['peak_rss_mib']:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the SemEval-2016 training file")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH)
    parser.add_argument("--split-seed", type=int, default=2016, help="seed of the fixed 80/20 split")
    parser.add_argument("--train-seed", type=int, default=42)
    parser.add_argument("--encoder", default=None, help="encoder folder or name (default: all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.06)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=64, help="tokens of target + tweet")
    parser.add_argument("--patience", type=int, default=2, help="early stopping patience in epochs")
    parser.add_argument("--no-class-weights", action="store_true")
    parser.add_argument("--group-by-length", action="store_true", help="batches of similar length (less padding)")
    parser.add_argument("--target-encoding", default="pair", choices=["pair", "late"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sizes", default="250,500,1000,all", help="learning-curve sizes ('all' = the whole 80%%)")
    parser.add_argument("--no-curve", action="store_true", help="only the headline run")
    parser.add_argument("--quick", action="store_true", help="reduced run: at most 2 epochs, curve at 250 and 500")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here as JSON")
    parser.add_argument(
        "--cv",
        type=int,
        default=0,
        metavar="K",
        help="K-fold CV x --seeds with the product's defaults (the figure to quote)",
    )
    parser.add_argument("--seeds", default="42,7,13", help="seeds of --cv / --test (folds and training)")
    parser.add_argument(
        "--test", type=Path, default=None, help="with --cv 0: train on all of --data, score this file (same format)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="--cv/--test: a TrainingArguments override"
    )
    parser.add_argument("--baselines-only", action="store_true", help="--cv/--test: skip the fine-tuned model")
    parser.add_argument(
        "--rungs", action="store_true", help="also the backend's cold start and instant learner, on the same folds"
    )
    args = parser.parse_args()
    if args.cv or args.test:
        return cv_main(args)
    if args.quick:
        args.epochs = min(args.epochs, 2.0)
        args.sizes = "250,500"
    if not args.data.exists():
        raise SystemExit(f"{args.data}: no such file; pass --data PATH to the SemEval-2016 training file")

    from annotation_config.schema import load_schema

    bench_started = time.perf_counter()
    schema = load_schema(args.schema)
    tweets = read_tweets(args.data)
    train, test = split_80_20(tweets, args.split_seed)
    targs = training_arguments(args)
    print(f"{len(tweets)} tweets, {len(train)} train / {len(test)} held out; {machine()}", flush=True)
    print(f"hyper-parameters: {json.dumps(targs.to_dict())}", flush=True)
    references = {"majority": majority_reference(train, test), "svm": svm_reference(train, test)}
    report: dict[str, Any] = {
        "data": str(args.data),
        "n_train": len(train),
        "n_test": len(test),
        "split_seed": args.split_seed,
        "machine": machine(),
        "hyperparameters": {k: v for k, v in targs.to_dict().items() if k not in ("extra", "progress")},
        "references": references,
        "published_official_test": dict(PUBLISHED),
    }
    with tempfile.TemporaryDirectory(prefix="semeval-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        full = train_and_score(train, test, schema, targs, scratch, "all", keep=True)
        predictor = full.pop("_predictor")
        full["check_max_abs_diff"] = check_against_predictor(predictor, schema, test)
        del predictor
        report["headline"] = full
        save_json(args.json, report)
        if not args.no_curve:
            sizes = sorted(
                {len(train) if s.strip() == "all" else min(int(s), len(train)) for s in args.sizes.split(",")}
            )
            report["curve"] = learning_curve(
                train,
                test,
                schema,
                targs,
                scratch,
                sizes,
                args.train_seed,
                full,
                on_row=lambda rows: save_json(args.json, {**report, "curve": rows}),
            )
    report["total_seconds"] = time.perf_counter() - bench_started
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_report(report)
    save_json(args.json, report)


def cv_main(args: argparse.Namespace) -> None:
    """The protocol that cannot flatter: K-fold CV x seeds on the training file (or train on it all and score a
    separate test file), the fine-tuned model with the product's defaults next to the baselines on the same folds."""
    from annotation_config.schema import load_schema
    from bench.cv_report import run, rung_methods, training_arguments
    from training.data import accept

    schema = load_schema(args.schema)

    def examples(path: Path) -> list:
        if not path.exists():
            raise SystemExit(f"{path}: no such file")
        return accept([as_task(t, schema) for t in read_tweets(path)], schema).examples

    targs = training_arguments(args.set, encoder=args.encoder, device=args.device, threads=args.threads)
    test = examples(args.test) if args.test else None
    run(
        examples(args.data),
        schema,
        targs,
        {
            "F_avg": lambda r: r.get("stance_f_avg"),
            "macro-F1": lambda r: r.get("stance_macro_f1"),
        },
        folds=args.cv,
        seeds=[int(s) for s in args.seeds.split(",")],
        test=test,
        fine_tune=not args.baselines_only,
        extra_methods=rung_methods(args.rungs),
        title="SemEval-2016 Task 6A: F_avg (FAVOR/AGAINST F1, pooled over targets) and 3-class macro-F1, x100",
        json_path=args.json,
    )


def save_json(path: Path | None, report: dict) -> None:
    """Write the figures so far (after every run, so a run cut short still leaves its results)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
