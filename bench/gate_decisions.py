"""Does the promotion gate promote the better model? Checked on text the gate never saw.

For each benchmark, `workbench train`'s pipeline trains a first model (default arguments, the backend's cold start
and instant learner as the gate's rivals, exactly as a backend job runs it) on the training part, and the gate
decides on the candidate's own held-out split, as it does for a project. Then the candidate and the instant
learner (fitted on the same training rows) are scored on a larger held-out part of the benchmark that neither
learnt from and the gate never read, and so is the cold start. The gate asks whether the candidate is worse than
either rival; it was right when its answer agrees with those held-out scores (promoted: the candidate scores at
least as well as both there; refused: a rival scores higher there). The point-score rule the gate had before
(promote only when the candidate's score on its split is at least the best rival's) is shown beside it, on the same
runs.

  semeval2016  the training file, 80/20 by (target, stance) (bench/train_semeval2016.py's split); the 20% held out
  fnc1         5,000 pairs from 80% of the bodies; 2,000 pairs of the other 20% held out (bench/train_fnc1.py)
  t6           SemEval-2021 T6's training file; its dev file held out

Run:  .venv/bin/python bench/gate_decisions.py [--benchmarks semeval2016,fnc1,t6] [--seeds 42,7,13] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.* and the project's packages


def semeval2016(seed: int) -> tuple[Any, list[dict], list[dict]]:
    """(schema, training tasks, held-out tasks) of SemEval-2016."""
    from annotation_config.schema import load_schema
    from bench.train_semeval2016 import DEFAULT_DATA, SCHEMA_PATH, as_task, read_tweets, split_80_20

    schema = load_schema(SCHEMA_PATH)
    train, test = split_80_20(read_tweets(DEFAULT_DATA), 2016)
    return schema, [as_task(t, schema) for t in train], [as_task(t, schema) for t in test]


def fnc1(seed: int) -> tuple[Any, list[dict], list[dict]]:
    """(schema, 5,000 training pairs, 2,000 held-out pairs of other bodies) of FNC-1, drawn with `seed`."""
    from annotation_config.regions import labels_to_results
    from annotation_config.schema import load_schema
    from bench.train_fnc1 import DATA, DIMENSION, SCHEMA_PATH, read_pairs, split_by_body

    schema = load_schema(SCHEMA_PATH)
    train, test = split_by_body(read_pairs(DATA), 0)
    rng = random.Random(seed)
    chosen = {"train": rng.sample(train, 5000), "test": rng.sample(test, 2000)}
    out: dict[str, list[dict]] = {}
    for part, pairs in chosen.items():
        out[part] = []
        for n, pair in enumerate(pairs, start=1):
            data = {k: pair[k] for k in ("key", "headline", "body", "body_id")}
            result = labels_to_results(schema, {DIMENSION: pair["stance"]}, data)
            out[part].append({"id": n, "data": data, "annotations": [{"id": n, "completed_by": 1, "result": result}]})
    return schema, out["train"], out["test"]


def t6(seed: int) -> tuple[Any, list[dict], list[dict]]:
    """(schema, training memes, dev memes) of SemEval-2021 T6."""
    from annotation_config.schema import load_schema
    from bench.train_semeval2021t6 import DATA, SCHEMA_PATH, as_task, read_memes

    schema = load_schema(SCHEMA_PATH)
    train = [as_task(m, schema, "train") for m in read_memes(DATA / "training_set_task1.txt")]
    test = [as_task(m, schema, "dev") for m in read_memes(DATA / "dev_set_task1.txt")]
    return schema, train, test


BENCHMARKS = {"semeval2016": semeval2016, "fnc1": fnc1, "t6": t6}


def run_one(name: str, seed: int) -> dict[str, Any]:
    """Train one first model through the gate, then score it and the instant learner on the held-out part."""
    from backend.instant_rival import instant_rival_report
    from training.data import accept, example_row
    from training.evaluation import evaluate_model
    from training.pipeline import run_training
    from training.registry import read_rows
    from training.training_args import TrainingArguments

    schema, train_tasks, test_tasks = BENCHMARKS[name](seed)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        args = TrainingArguments(seed=seed, progress=False)
        outcome = run_training(train_tasks, schema, Path(scratch), args, rival=instant_rival_report)
        seconds = time.perf_counter() - started
        promotion = outcome.promotion
        metrics = json.loads((outcome.model_dir / "metrics.json").read_text())
        rivals = metrics.get("rivals") or {}
        gate_rows = read_rows(outcome.model_dir / "test.jsonl")
        candidate_split = (metrics.get("test") or {}).get("primary")
        best_rival = max((r["primary"] for r in rivals.values()), default=None)
        old_rule = best_rival is None or (candidate_split is not None and candidate_split >= best_rival)

        held_out = [example_row(e, schema) for e in accept(test_tasks, schema).examples]
        candidate_ext = evaluate_model(outcome.model_dir, held_out)["primary"]
        # the instant learner learns from what the candidate learnt from: every training row but its test split
        held = {str(r["key"]) for r in gate_rows}
        train_rows = [example_row(e, schema) for e in accept(train_tasks, schema).examples if e.key not in held]
        rivals_ext = {k: r["primary"] for k, r in instant_rival_report(schema, train_rows, held_out).items()}
    better = "candidate" if candidate_ext >= max(rivals_ext.values()) else max(rivals_ext, key=rivals_ext.get)
    chose = "candidate" if promotion.promoted else "a rival"
    old_chose = "candidate" if old_rule else "a rival"
    comparison = promotion.comparison or {}
    return {
        "benchmark": name,
        "seed": seed,
        "gate_rows": len(gate_rows),
        "candidate_on_split": candidate_split,
        "rivals_on_split": {k: r["primary"] for k, r in rivals.items()},
        "difference": comparison.get("difference"),
        "interval": [comparison.get("low"), comparison.get("high")],
        "worse_confidence": comparison.get("worse_confidence"),
        "promoted": promotion.promoted,
        "reason": promotion.reason,
        "held_out_rows": len(held_out),
        "candidate_held_out": candidate_ext,
        "instant_held_out": rivals_ext.get("instant_learner"),
        "cold_start_held_out": rivals_ext.get("cold_start"),
        "better_on_held_out": better,
        "gate_right": (chose == "candidate") == (better == "candidate"),
        "old_rule_right": (old_chose == "candidate") == (better == "candidate"),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", default="semeval2016,fnc1,t6")
    parser.add_argument("--seeds", default="42,7,13")
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args()
    rows = []
    for name in options.benchmarks.split(","):
        for seed in [int(s) for s in options.seeds.split(",")]:
            row = run_one(name, seed)
            rows.append(row)
            low, high = row["interval"]
            shown = "n/a" if row["difference"] is None else f"{row['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
            print(
                f"{name:12s} seed {seed:3d}  gate rows {row['gate_rows']:4d}  candidate - best rival {shown}  "
                f"{'promoted' if row['promoted'] else 'refused ':8s}  held out n={row['held_out_rows']}: "
                f"candidate {row['candidate_held_out']:.3f}, instant {row['instant_held_out']:.3f}, cold start "
                f"{row['cold_start_held_out']:.3f}  "
                f"gate {'right' if row['gate_right'] else 'WRONG'}, old rule "
                f"{'right' if row['old_rule_right'] else 'WRONG'}  ({row['seconds']:.0f} s)",
                flush=True,
            )
    for name in options.benchmarks.split(","):
        mine = [r for r in rows if r["benchmark"] == name]
        gains = [r["candidate_held_out"] - r["instant_held_out"] for r in mine]  # against what served: the learner
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(
            f"{name}: gate right {sum(r['gate_right'] for r in mine)}/{len(mine)}, old rule "
            f"{sum(r['old_rule_right'] for r in mine)}/{len(mine)}; candidate - instant on held out "
            f"{statistics.mean(gains):+.3f} +- {sd:.3f}"
        )
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
