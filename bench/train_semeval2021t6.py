"""Persuasion techniques in memes (SemEval-2021 Task 6, subtask 1: 20 techniques, multi-label) with the workbench.

The meme texts become Label Studio-like tasks of bench/schemas/semeval2021t6.yaml (one multi-choice question), and
the standard methods (training/crossval.py: majority, n-gram SVM, frozen-encoder logistic regression, and the
fine-tuned model as `workbench train` trains it, with and without its n-gram heads) are scored by 5-fold CV x 3
seeds on the training and dev files together, all on the same folds. micro-F1 is the task's official metric;
macro-F1 is over the techniques that occur in the gold labels or the predictions of a fold.

Data: ../shared/data/semeval2021t6/{training,dev}_set_task1.txt (JSON lists of {id, labels, text}), read in place.
Run:  .venv/bin/python bench/train_semeval2021t6.py [--cv 5] [--seeds 42,7,13] [--test FILE] [--json FILE]
      --test FILE: train on the training and dev files, score FILE (the official test set, same format).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.cv_report and the project's packages

DATA = REPO.parent / "shared" / "data" / "semeval2021t6"
SCHEMA_PATH = REPO / "bench" / "schemas" / "semeval2021t6.yaml"
DIMENSION = "techniques"


def read_memes(path: Path) -> list[dict]:
    """The file's memes: {id, labels, text}."""
    if not path.exists():
        raise SystemExit(f"{path}: no such file; pass --data DIR (the folder of training_set_task1.txt)")
    try:
        memes = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SystemExit(f"{path}: not a JSON list of memes ({error})") from None
    return [m for m in memes if str(m.get("text") or "").strip()]


def as_task(meme: dict, schema, prefix: str) -> dict:
    """A Label Studio export task with one submitted annotation (an empty choice list: no technique)."""
    from annotation_config.regions import labels_to_results

    data = {"key": f"{prefix}-{meme['id']}", "text": meme["text"], "meme_id": str(meme["id"])}
    known = set(schema.dimension(DIMENSION).values)
    unknown = sorted(set(meme["labels"]) - known)
    if unknown:
        raise SystemExit(f"meme {meme['id']}: techniques not in {SCHEMA_PATH.name}: {', '.join(unknown)}")
    result = labels_to_results(schema, {DIMENSION: list(meme["labels"])}, data)
    return {"data": data, "annotations": [{"id": 1, "completed_by": 1, "result": result}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of training_set_task1.txt, dev_set_task1.txt")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH)
    parser.add_argument("--cv", type=int, default=5, metavar="K", help="folds (ignored with --test)")
    parser.add_argument("--seeds", default="42,7,13")
    parser.add_argument("--test", type=Path, default=None, help="train on training+dev, score this file instead")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainingArguments override")
    parser.add_argument("--baselines-only", action="store_true", help="skip the fine-tuned model")
    parser.add_argument(
        "--rungs", action="store_true", help="also the backend's cold start and instant learner, on the same folds"
    )
    parser.add_argument("--encoder", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here as JSON")
    args = parser.parse_args()

    from annotation_config.schema import load_schema
    from bench.cv_report import run, rung_methods, training_arguments
    from training.data import accept

    schema = load_schema(args.schema)

    def examples(memes: list[dict], prefix: str) -> list:
        tasks = [{"id": n, **as_task(m, schema, prefix)} for n, m in enumerate(memes, start=1)]
        return accept(tasks, schema).examples

    train = examples(
        read_memes(args.data / "training_set_task1.txt") + read_memes(args.data / "dev_set_task1.txt"), "t6"
    )
    test = examples(read_memes(args.test), "t6-test") if args.test else None
    targs = training_arguments(args.set, encoder=args.encoder, device=args.device)

    def techniques(report: dict, key: str) -> float | None:
        return (report.get("dimensions", {}).get(DIMENSION) or {}).get(key)

    run(
        train,
        schema,
        targs,
        {"micro-F1": lambda r: techniques(r, "micro_f1"), "macro-F1": lambda r: techniques(r, "macro_f1")},
        folds=args.cv,
        seeds=[int(s) for s in args.seeds.split(",")],
        test=test,
        fine_tune=not args.baselines_only,
        extra_methods=rung_methods(args.rungs),
        title="SemEval-2021 Task 6, subtask 1 (20 persuasion techniques, multi-label): micro- and macro-F1, x100",
        json_path=args.json,
    )


if __name__ == "__main__":
    main()
