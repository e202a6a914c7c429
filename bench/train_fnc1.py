"""Stance of a body toward its headline (FNC-1) with the workbench: a per-task claim read as a pair.

The FNC-1 training pairs become tasks of bench/schemas/fnc1.yaml (body as the text, headline as a context field
the stance dimension is paired with, body id as the group). Bodies are split 80/20 by id (seeded), so no body is on
both sides; the training pairs are sampled from the first part at each size, the test pairs from the second. The
standard methods (training/crossval.py: majority, n-gram SVM and frozen-encoder LR, both reading the pair, and the
model as `workbench train` trains it), and with --rungs the backend's cold start and instant learner, are trained
and scored on exactly the same pairs. Reported: macro-F1 over agree/disagree/discuss/unrelated, per-class F1, the
FNC score as a share of its maximum (0.25 for telling related from unrelated, 0.75 more for the right related
class), seconds and peak memory.

References (official test set, which the project does not hold): top systems about 0.58-0.61 macro-F1 and 82% of
the maximum score; always "unrelated" 0.21 macro-F1 and 39%.

Data: ../shared/data/fnc1/{train_bodies,train_stances}.csv, read in place.
Run:  .venv/bin/python bench/train_fnc1.py [--sizes 1000,5000] [--test-pairs 2000] [--seeds 42] [--rungs]
      [--json FILE] [--set KEY=VALUE]
      .venv/bin/python bench/train_fnc1.py --cold-start-floors 0.1,0.2,0.3,0.4   # the cold start's distance rule
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.cv_report and the project's packages

DATA = REPO.parent / "shared" / "data" / "fnc1"
SCHEMA_PATH = REPO / "bench" / "schemas" / "fnc1.yaml"
DIMENSION = "stance"
LABELS = ("agree", "disagree", "discuss", "unrelated")
RELATED = frozenset(LABELS[:3])


def read_pairs(folder: Path) -> list[dict[str, str]]:
    """FNC-1's two files joined by body id: {key, headline, body, body_id, stance} per pair."""
    bodies_path, stances_path = folder / "train_bodies.csv", folder / "train_stances.csv"
    for path in (bodies_path, stances_path):
        if not path.exists():
            raise SystemExit(f"{path}: no such file; pass --data DIR (the folder of the FNC-1 training CSVs)")
    csv.field_size_limit(10**7)
    with open(bodies_path, encoding="utf-8", newline="") as handle:
        bodies = {row["Body ID"]: row["articleBody"] for row in csv.DictReader(handle)}
    pairs = []
    with open(stances_path, encoding="utf-8", newline="") as handle:
        for n, row in enumerate(csv.DictReader(handle)):
            body_id = row["Body ID"]
            if body_id not in bodies:
                raise SystemExit(f"{stances_path}: row {n + 2} names body {body_id}, which is not in {bodies_path}")
            pairs.append(
                {"key": f"fnc-{n}", "headline": row["Headline"], "body": bodies[body_id], "body_id": body_id}
                | {"stance": row["Stance"]}
            )
    return pairs


def split_by_body(pairs: list[dict], seed: int, test_share: float = 0.2) -> tuple[list[dict], list[dict]]:
    """Pairs of 80% of the bodies, then of the other 20% (by body id, seeded)."""
    ids = sorted({p["body_id"] for p in pairs}, key=int)
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[: round(len(ids) * test_share)])
    return [p for p in pairs if p["body_id"] not in test_ids], [p for p in pairs if p["body_id"] in test_ids]


def fnc_score(confusion: dict) -> float | None:
    """The FNC-1 score of a confusion matrix as a share of its maximum."""
    labels, matrix = confusion["labels"], confusion["matrix"]
    got = best = 0.0
    for i, gold in enumerate(labels):
        for j, pred in enumerate(labels):
            count = matrix[i][j]
            best += count * (1.0 if gold in RELATED else 0.25)
            if (gold in RELATED) == (pred in RELATED):
                got += 0.25 * count
            if gold in RELATED and gold == pred:
                got += 0.75 * count
    return got / best if best else None


def cold_start_floors(pairs: list[dict], floors: list[float]) -> None:
    """Related/unrelated accuracy and unrelated F1 of the cold start's distance rule at each floor."""
    import numpy as np

    from backend.cold_start.embedder import SentenceEmbedder

    embedder = SentenceEmbedder()
    texts = list(dict.fromkeys([p["headline"] for p in pairs] + [p["body"] for p in pairs]))
    vectors = dict(zip(texts, np.asarray(embedder.embed(texts)), strict=True))
    cosine = np.array([float(vectors[p["headline"]] @ vectors[p["body"]]) for p in pairs])
    unrelated = np.array([p["stance"] == "unrelated" for p in pairs])
    print(
        f"{len(pairs)} pairs; cosine unrelated {cosine[unrelated].mean():.2f}, related {cosine[~unrelated].mean():.2f}"
    )
    for floor in floors:
        said = cosine < floor
        tp = int((said & unrelated).sum())
        f1 = 2 * tp / max(1, said.sum() + unrelated.sum())
        print(
            f"  floor {floor:.2f}: related/unrelated accuracy {(said == unrelated).mean():.3f}, unrelated F1 {f1:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of train_bodies.csv and train_stances.csv")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH)
    parser.add_argument("--sizes", default="1000,5000", help="training pairs, comma-separated")
    parser.add_argument("--test-pairs", type=int, default=2000, help="held-out pairs scored (0: all of them)")
    parser.add_argument("--split-seed", type=int, default=0, help="deals the bodies into train and test")
    parser.add_argument("--seeds", default="42", help="training seeds (each also draws the training sample)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainingArguments override")
    parser.add_argument("--baselines-only", action="store_true", help="skip the trained model")
    parser.add_argument("--rungs", action="store_true", help="also the backend's cold start and instant learner")
    parser.add_argument("--cold-start-floors", default=None, help="only measure the cold start's distance rule")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (one file per size)")
    args = parser.parse_args()

    pairs = read_pairs(args.data)
    train_pool, test_pool = split_by_body(pairs, args.split_seed)
    if args.cold_start_floors:
        cold_start_floors(
            random.Random(1).sample(train_pool, 3000), [float(f) for f in args.cold_start_floors.split(",")]
        )
        return

    from annotation_config.regions import labels_to_results
    from annotation_config.schema import load_schema
    from bench.cv_report import run, rung_methods, training_arguments
    from training.data import accept

    schema = load_schema(args.schema)

    def examples(chosen: list[dict]) -> list:
        tasks = []
        for n, pair in enumerate(chosen, start=1):
            data = {k: pair[k] for k in ("key", "headline", "body", "body_id")}
            result = labels_to_results(schema, {DIMENSION: pair["stance"]}, data)
            tasks.append({"id": n, "data": data, "annotations": [{"id": n, "completed_by": 1, "result": result}]})
        return accept(tasks, schema).examples

    test_pairs = test_pool
    if args.test_pairs and args.test_pairs < len(test_pool):
        test_pairs = random.Random(args.split_seed + 1).sample(test_pool, args.test_pairs)
    test = examples(test_pairs)
    print(f"{len(pairs)} pairs; {len(train_pool)} from training bodies, {len(test)} test pairs from the other bodies")

    def stance(report: dict) -> dict:
        return report.get("dimensions", {}).get(DIMENSION) or {}

    metrics = {
        "macro-F1": lambda r: stance(r).get("macro_f1"),
        "FNC score": lambda r: fnc_score(stance(r)["confusion"]),
    }
    for label in LABELS:
        metrics[f"F1 {label}"] = lambda r, label=label: (stance(r).get("per_label") or {}).get(label, {}).get("f1")
    targs = training_arguments(args.set)
    for size in (int(s) for s in args.sizes.split(",")):
        seeds = [int(s) for s in args.seeds.split(",")]
        train = examples(random.Random(seeds[0]).sample(train_pool, min(size, len(train_pool))))
        run(
            train,
            schema,
            targs,
            metrics,
            folds=1,
            seeds=seeds,
            test=test,
            fine_tune=not args.baselines_only,
            extra_methods=rung_methods(args.rungs),
            title=f"FNC-1, {len(train)} training pairs, body-grouped held-out split: macro-F1, FNC score %, F1 x100",
            json_path=args.json.with_name(f"{args.json.stem}-{size}{args.json.suffix}") if args.json else None,
        )


if __name__ == "__main__":
    main()
