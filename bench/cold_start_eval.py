"""How right the cold start is before any label exists: scored on a hand-labelled dev set, per question.

For every single-choice question of the schema found in the dev set:
  acc        accuracy over all labelled paragraphs; an unanswered question counts as wrong
  macro-F1   over the labels that occur in the gold or predicted answers (sklearn's default label set, zero_division
             0); an unanswered question is a miss of its gold label, not a class of its own
  abstain    share of paragraphs where the cold start abstains: leaves the question unanswered, or answers the
             schema's abstain label ("none", "not_applicable", ...) with a score below --abstain-score
  acc|ans    accuracy on the paragraphs where it does not abstain (how often a real suggestion is right)
  majority   accuracy and macro-F1 of always answering the dev set's majority label (a hindsight baseline)
For each multi-choice question (frames): micro-F1 and macro-F1 against ticking the K commonest labels of the dev
set on every paragraph (K = --top-frames, default 2), and the mean number of labels ticked.

The dev set is JSON lines with `key`, `text` and one field per question (a label, or a list for multi choice;
missing or null: not labelled); task context fields (title, publication, ...) are joined from --tasks by key.

Run: .venv/bin/python bench/cold_start_eval.py [--dev data/dev_labels.jsonl] [--tasks data/sample_tasks.jsonl]
     [--schema annotation_config/schema.yaml] [--impl OTHER_cold_start.py | --rev GIT_REV] [--json FILE] [--errors]
Before/after: `--rev HEAD` scores the committed cold start with the committed schema; no option, the working tree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sklearn.metrics import f1_score  # noqa: E402

from annotation_config.schema import Dimension, Schema, load_schema  # noqa: E402

UNANSWERED = "<unanswered>"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON lines file (blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_predictor_class(impl: Path | None) -> type:
    """ColdStartPredictor from training.cold_start, or from another file (an older revision: before/after)."""
    if impl is None:
        from training.cold_start import ColdStartPredictor

        return ColdStartPredictor
    spec = importlib.util.spec_from_file_location("cold_start_under_test", impl)
    assert spec and spec.loader, impl
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module.ColdStartPredictor


def abstain_value(dim: Dimension) -> str | None:
    """The dimension's abstain label if the cold start module names one (same rule as the predictor), else None."""
    try:
        from training.cold_start import abstain_label
    except ImportError:  # an older cold start without the notion: fall back to the conventional names
        names = {"none", "neutral", "not_applicable", "n_a", "na", "no_stance", "unrelated", "other"}
        return next((v for v in dim.values if v.lower().replace("-", "_").replace(" ", "_") in names), None)
    return abstain_label(dim)


def score_single(dim: Dimension, gold: list[str], pred: list[str], conf: list[float], abstain_below: float) -> dict:
    """Accuracy, macro-F1, abstention and accuracy-when-answering of one single-choice question."""
    none = abstain_value(dim)
    n = len(gold)
    abstained = [p == UNANSWERED or (p == none and c < abstain_below) for p, c in zip(pred, conf, strict=True)]
    answered = [(g, p) for g, p, a in zip(gold, pred, abstained, strict=True) if not a]
    majority, majority_n = Counter(gold).most_common(1)[0]
    # sklearn's default label set (gold and predicted labels), less "unanswered": an abstention is a miss, not a class
    present = [v for v in dim.values if v in gold or v in pred]
    return {
        "n": n,
        "accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / n,
        "macro_f1": f1_score(gold, pred, labels=present, average="macro", zero_division=0),
        "abstain": sum(abstained) / n,
        "accuracy_answered": (sum(g == p for g, p in answered) / len(answered)) if answered else None,
        "answered": len(answered),
        "majority_label": majority,
        "majority_accuracy": majority_n / n,
        "majority_macro_f1": f1_score(gold, [majority] * n, average="macro", zero_division=0),
        "predicted": dict(Counter(pred).most_common()),
        "gold": dict(Counter(gold).most_common()),
    }


def score_multi(dim: Dimension, gold: list[list[str]], pred: list[list[str]], top: int) -> dict:
    """Micro/macro-F1 of a multi-choice question against ticking the `top` commonest labels everywhere."""
    values = dim.values

    def matrix(rows: list[list[str]]) -> list[list[int]]:
        return [[int(v in row) for v in values] for row in rows]

    commonest = [v for v, _ in Counter(v for row in gold for v in row).most_common(top)]
    baseline = [commonest] * len(gold)
    y, p, b = matrix(gold), matrix(pred), matrix(baseline)
    return {
        "n": len(gold),
        "micro_f1": f1_score(y, p, average="micro", zero_division=0),
        "macro_f1": f1_score(y, p, average="macro", zero_division=0),
        "ticked": sum(map(len, pred)) / len(pred),
        "gold_ticked": sum(map(len, gold)) / len(gold),
        "baseline_labels": commonest,
        "baseline_micro_f1": f1_score(y, b, average="micro", zero_division=0),
        "baseline_macro_f1": f1_score(y, b, average="macro", zero_division=0),
        "per_label_f1": dict(zip(values, f1_score(y, p, average=None, zero_division=0).round(3).tolist(), strict=True)),
    }


SCORE_BANDS = (0.0, 0.5, 0.6, 0.7, 1.01)


def calibration(schema: Schema, rows: list[dict], predictions: list) -> list[dict]:
    """Single-choice answers pooled over questions, by score band: how often an answer with that score is right."""
    bands = []
    for low, high in zip(SCORE_BANDS, SCORE_BANDS[1:], strict=False):
        right = total = 0
        for row, prediction in zip(rows, predictions, strict=True):
            for dim in schema.of_kind("single"):
                gold, got = row.get(dim.name), prediction.labels.get(dim.name)
                if gold is not None and got is not None and low <= prediction.scores.get(dim.name, 0.0) < high:
                    total += 1
                    right += got == gold
        bands.append({"band": f"[{low:.1f}, {min(high, 1.0):.1f})", "answers": total, "right": right})
    return bands


def evaluate(schema: Schema, rows: list[dict], predictor: Any, top: int, abstain_below: float) -> dict:
    """Predict every dev row once (one batch) and score each question the dev set labels."""
    started = time.perf_counter()
    predictions = predictor.predict(rows)
    elapsed = time.perf_counter() - started
    report: dict[str, Any] = {"paragraphs": len(rows), "seconds": elapsed, "single": {}, "multi": {}}
    for dim in schema.of_kind("single"):
        pairs = [(r[dim.name], p) for r, p in zip(rows, predictions, strict=True) if r.get(dim.name) is not None]
        if not pairs:
            continue
        gold = [g for g, _ in pairs]
        pred = [p.labels.get(dim.name, UNANSWERED) for _, p in pairs]
        conf = [p.scores.get(dim.name, 0.0) for _, p in pairs]
        report["single"][dim.name] = score_single(dim, gold, pred, conf, abstain_below)
    for dim in schema.of_kind("multi"):
        pairs = [(r[dim.name], p) for r, p in zip(rows, predictions, strict=True) if r.get(dim.name) is not None]
        if pairs:
            gold = [list(g) for g, _ in pairs]
            report["multi"][dim.name] = score_multi(dim, gold, [p.labels.get(dim.name, []) for _, p in pairs], top)
    report["calibration"] = calibration(schema, rows, predictions)
    singles = list(report["single"].values())
    if singles:
        report["mean_macro_f1"] = sum(s["macro_f1"] for s in singles) / len(singles)
        report["mean_majority_macro_f1"] = sum(s["majority_macro_f1"] for s in singles) / len(singles)
    report["predictions"] = predictions
    return report


def print_table(report: dict) -> None:
    """The per-question table, plain text (Markdown-compatible)."""
    print(f"{report['paragraphs']} paragraphs, {1000 * report['seconds'] / max(1, report['paragraphs']):.1f} ms each")
    print()
    print("| question | n | acc | majority acc | macro-F1 | majority macro-F1 | abstain | acc when answering |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in report["single"].items():
        answered = "n/a" if s["accuracy_answered"] is None else f"{s['accuracy_answered']:.2f} ({s['answered']})"
        print(
            f"| {name} | {s['n']} | {s['accuracy']:.2f} | {s['majority_accuracy']:.2f} ({s['majority_label']}) | "
            f"{s['macro_f1']:.2f} | {s['majority_macro_f1']:.2f} | {s['abstain']:.2f} | {answered} |"
        )
    if "mean_macro_f1" in report:
        print(
            f"| **mean of {len(report['single'])}** | | | | **{report['mean_macro_f1']:.2f}** | "
            f"{report['mean_majority_macro_f1']:.2f} | | |"
        )
    for name, m in report["multi"].items():
        print()
        print(f"| {name} | micro-F1 | macro-F1 | labels ticked per paragraph |")
        print("|---|---|---|---|")
        print(f"| cold start | {m['micro_f1']:.2f} | {m['macro_f1']:.2f} | {m['ticked']:.2f} |")
        print(
            f"| always {' + '.join(m['baseline_labels'])} | {m['baseline_micro_f1']:.2f} | "
            f"{m['baseline_macro_f1']:.2f} | {len(m['baseline_labels'])} |"
        )
        print(f"| (gold) | | | {m['gold_ticked']:.2f} |")
    print()
    print("| score of a single-choice answer | answers | right |")
    print("|---|---|---|")
    for band in report["calibration"]:
        share = f"{band['right'] / band['answers']:.2f}" if band["answers"] else "-"
        print(f"| {band['band']} | {band['answers']} | {share} |")
    print()
    for name, s in report["single"].items():
        print(f"{name}: gold {s['gold']}  predicted {s['predicted']}")


def print_errors(schema: Schema, rows: list[dict], report: dict) -> None:
    """Each wrong single-choice answer with its score and the paragraph's opening, for error analysis."""
    for row, prediction in zip(rows, report["predictions"], strict=True):
        wrong = []
        for dim in schema.of_kind("single"):
            gold = row.get(dim.name)
            got = prediction.labels.get(dim.name, UNANSWERED)
            if gold is not None and got != gold:
                wrong.append(f"{dim.name}: {got} ({prediction.scores.get(dim.name, 0):.2f}) gold {gold}")
        if wrong:
            print(f"{row.get('key')}: {row['text'][:110]!r}")
            for line in wrong:
                print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    """Score the cold start on the dev set and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", type=Path, default=REPO / "data" / "dev_labels.jsonl")
    parser.add_argument("--tasks", type=Path, default=REPO / "data" / "sample_tasks.jsonl")
    parser.add_argument("--schema", type=Path, default=None)
    parser.add_argument("--impl", type=Path, default=None, help="another cold_start.py to score (before/after)")
    parser.add_argument(
        "--rev", default=None, help="score a git revision's cold start predictor with that revision's schema.yaml"
    )
    parser.add_argument("--top-frames", type=int, default=2)
    parser.add_argument("--abstain-score", type=float, default=0.5, help="abstain label below this score = abstain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--errors", action="store_true", help="list every wrong single-choice answer")
    args = parser.parse_args(argv)

    if not args.dev.exists():
        print(f"no dev set at {args.dev}", file=sys.stderr)
        return 1
    if args.rev:  # e.g. --rev HEAD: the figures before the working tree's changes
        folder = Path(tempfile.mkdtemp(prefix="cold-start-rev-"))
        for paths, name in (
            (("training/cold_start.py", "backend/cold_start.py"), "cold_start.py"),  # new layout, then old
            (("annotation_config/schema.yaml",), "schema.yaml"),
        ):
            for path in paths:
                shown = subprocess.run(["git", "show", f"{args.rev}:{path}"], cwd=REPO, capture_output=True, text=True)
                if shown.returncode == 0:
                    break
            if shown.returncode != 0:
                print(f"git show {args.rev}:{path}: {shown.stderr.strip()}", file=sys.stderr)
                return 1
            (folder / name).write_text(shown.stdout, encoding="utf-8")
        args.impl = args.impl or folder / "cold_start.py"
        args.schema = args.schema or folder / "schema.yaml"
    schema = load_schema(args.schema) if args.schema else load_schema()
    tasks = {t["key"]: t for t in read_jsonl(args.tasks)} if args.tasks.exists() else {}
    rows = [{**tasks.get(r.get("key"), {}), **r} for r in read_jsonl(args.dev)]

    from backend.cold_start.embedder import SentenceEmbedder

    predictor = load_predictor_class(args.impl)(schema, SentenceEmbedder(threads=args.threads))
    report = evaluate(schema, rows, predictor, args.top_frames, args.abstain_score)
    print_table(report)
    if args.errors:
        print()
        print_errors(schema, rows, report)
    if args.json:
        saved = {k: v for k, v in report.items() if k != "predictions"}
        args.json.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
