"""Prediction speed and accuracy of the ML backend's encoder paths over HTTP against the baseline a user would run.

Measured in one run, on the same machine, same encoder (all-MiniLM-L6-v2), same thread count:
  backend   `workbench serve` in its own process, one per encoder path (WORKBENCH_RUNTIME torch|onnx,
            WORKBENCH_PRECISION fp32|bf16|int8); 256 sample paragraphs POSTed to /predict in requests of 32 tasks
            (throughput), then 200 single-task requests (latency). The embedding cache is OFF
            (WORKBENCH_CACHE_SIZE=0) so repeated paragraphs are really recomputed.
  baseline  transformers pipeline("text-classification") on the same encoder, called one paragraph at a time
            in process (no HTTP cost at all, which favours the baseline).
All backends are started first, then measured in --rounds interleaved rounds together with the baseline; each
figure is the best round (the machine may be shared: the best round is the least disturbed one, for all rows alike).

Accuracy of each path against torch fp32 (the reference), in process:
  cosine    mean / min cosine of the paragraph embeddings (the 108 distinct sample paragraphs)
  agree     share of the backend's choice answers (every dimension, every task) identical to torch fp32's; the
            cold start's single choices are low-margin (near-uniform softmax), so this is a harsh proxy
  probe F1  macro-F1 (AGAINST/FAVOR/NONE) of a logistic-regression probe on the frozen embeddings (+ target one-hot)
            of the SemEval-2016 task 6 training tweets (read in place): on a fixed-seed stratified 80/20 split, and
            over 10 x stratified 5-fold CV with the same folds for every path, as the mean paired difference to
            torch fp32 +- its standard error. The bar is |mean paired difference| <= 0.5 points: one 80/20 split
            cannot resolve 0.5 points (fold-to-fold sd of the paired difference is ~1 point for int8, and even
            fp32 with other padding moves the split's F1 by ~0.4). Skipped when the data file is missing.

Run: .venv/bin/python bench/predict.py [--threads 2] [--paragraphs 256] [--rounds 2] [--paths onnx:int8,...]
     [--semeval FILE | --no-probe] [--probe-repeats 10]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PATHS = ("torch:fp32", "torch:bf16", "torch:int8", "onnx:fp32", "onnx:int8")
REFERENCE = "torch:fp32"
SEMEVAL = REPO.parent / "shared" / "data" / "semeval2016" / "semeval2016-task6-trainingdata.txt"
F1_TOLERANCE = 0.5  # points of macro-F1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def sample_paragraphs(count: int) -> list[dict]:
    lines = (REPO / "data" / "sample_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    tasks = [json.loads(line) for line in lines if line.strip()]
    return [tasks[i % len(tasks)] for i in range(count)]


def start_backend(port: int, threads: int, path: str, models: Path, log: Path) -> subprocess.Popen:
    runtime, precision = path.split(":")
    env = {
        **os.environ,
        "WORKBENCH_THREADS": str(threads),
        "WORKBENCH_CACHE_SIZE": "0",
        "WORKBENCH_RUNTIME": runtime,
        "WORKBENCH_PRECISION": precision,
        "WORKBENCH_MODELS_DIR": str(models),
    }
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "workbench", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def wait_healthy(port: int, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"backend exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"backend did not start; see {log}")


def measure_backend(port: int, tasks: list[dict], batch: int, singles: int) -> dict:
    url = f"http://127.0.0.1:{port}/predict"
    with httpx.Client(timeout=120) as client:
        client.post(url, json={"tasks": [{"data": tasks[0]}]})  # warm-up
        started = time.perf_counter()
        answers = []
        for start in range(0, len(tasks), batch):
            response = client.post(url, json={"tasks": [{"data": t} for t in tasks[start : start + batch]]})
            response.raise_for_status()
            answers.extend(response.json()["results"])
        elapsed = time.perf_counter() - started
        latencies = []
        for i in range(singles):
            one = time.perf_counter()
            client.post(url, json={"tasks": [{"data": tasks[i % len(tasks)]}]}).raise_for_status()
            latencies.append((time.perf_counter() - one) * 1000)
    return {
        "throughput": len(tasks) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "answers": answers,
    }


def baseline_pipeline(threads: int):
    import torch
    from transformers import logging as hf_logging
    from transformers import pipeline

    from training.encoder import resolve_encoder_path

    hf_logging.set_verbosity_error()  # the encoder has no classification head: the pipeline adds a random one
    torch.set_num_threads(threads)
    return pipeline("text-classification", model=resolve_encoder_path(), device="cpu")


def measure_baseline(classify, tasks: list[dict], singles: int) -> dict:
    classify(tasks[0]["text"])
    started = time.perf_counter()
    for task in tasks:
        classify(task["text"], truncation=True)
    elapsed = time.perf_counter() - started
    latencies = []
    for i in range(singles):
        one = time.perf_counter()
        classify(tasks[i % len(tasks)]["text"], truncation=True)
        latencies.append((time.perf_counter() - one) * 1000)
    return {
        "throughput": len(tasks) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
    }


def best(runs: list[dict]) -> dict:
    """Best throughput and best latency over rounds (the least disturbed round of each)."""
    fastest = max(runs, key=lambda r: r["throughput"])
    calmest = min(runs, key=lambda r: r["p50_ms"])
    return {**fastest, "p50_ms": calmest["p50_ms"], "p99_ms": calmest["p99_ms"]}


def agreement(first: list[dict], second: list[dict]) -> float:
    """Share of choice answers (every dimension, every task) that are identical."""
    same = total = 0
    for a, b in zip(first, second, strict=True):
        left = {r["from_name"]: r["value"].get("choices") for r in a["result"] if r["type"] == "choices"}
        right = {r["from_name"]: r["value"].get("choices") for r in b["result"] if r["type"] == "choices"}
        for name in left.keys() | right.keys():
            total += 1
            same += left.get(name) == right.get(name)
    return 100 * same / max(total, 1)


def read_semeval(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(tweets, targets, stances) of the SemEval-2016 task 6 training file (latin-1, tab-separated), read in place."""
    raw = path.read_bytes().decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
    rows = [r for r in csv.DictReader(io.StringIO(raw), delimiter="\t", quoting=csv.QUOTE_NONE) if r.get("Tweet")]
    return [r["Tweet"].strip() for r in rows], [r["Target"].strip() for r in rows], [r["Stance"].strip() for r in rows]


def probe_scores(embeddings: dict[str, object], targets: list[str], stances: list[str], repeats: int) -> dict:
    """Macro-F1 (points) of a logistic-regression probe per path, on the same folds for every path.

    `split`: one fixed-seed stratified 80/20 split. `cv`: every fold of `repeats` x stratified 5-fold CV (seeds
    0..repeats-1), so each path's difference to the reference is paired fold by fold.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from threadpoolctl import threadpool_limits

    names = sorted(set(targets))
    onehot = np.array([[t == n for n in names] for t in targets], dtype=np.float32)
    y = np.array(stances)
    strata = np.array([f"{t}|{s}" for t, s in zip(targets, stances, strict=True)])
    features = {path: np.hstack([np.asarray(e), onehot]) for path, e in embeddings.items()}
    split = train_test_split(np.arange(len(y)), test_size=0.2, stratify=strata, random_state=0)
    folds = [f for seed in range(repeats) for f in StratifiedKFold(5, shuffle=True, random_state=seed).split(y, strata)]
    out: dict[str, dict] = {}
    with threadpool_limits(1):  # tiny problems: BLAS threads only contend
        for path, x in features.items():

            def score(train, test, x=x) -> float:
                model = LogisticRegression(C=4.0, max_iter=3000).fit(x[train], y[train])
                return 100 * f1_score(y[test], model.predict(x[test]), average="macro")

            out[path] = {"split": score(*split), "cv": [score(a, b) for a, b in folds]}
    return out


def accuracy(paths: list[str], threads: int, probe: Path | None, repeats: int) -> dict[str, dict]:
    """Per path: embedding cosine to torch fp32 on the sample paragraphs, and the probe's macro-F1."""
    import numpy as np

    from backend.cold_start.embedder import SentenceEmbedder

    paragraphs = list(dict.fromkeys(t["text"] for t in sample_paragraphs(10_000)))
    tweets = read_semeval(probe) if probe else None
    out: dict[str, dict] = {}
    reference = None
    probed = {}
    for path in [REFERENCE, *(p for p in paths if p != REFERENCE)]:
        runtime, precision = path.split(":")
        embedder = SentenceEmbedder(runtime=runtime, precision=precision, threads=threads, cache_size=0)
        vectors = embedder.embed(paragraphs)
        reference = vectors if reference is None else reference
        cosine = (vectors * reference).sum(axis=1)
        out[path] = {"cos_mean": float(cosine.mean()), "cos_min": float(cosine.min()), "ran": embedder.describe()}
        if tweets:
            probed[path] = embedder.embed(tweets[0])
        del embedder
    if tweets:
        scores = probe_scores(probed, tweets[1], tweets[2], repeats)
        ref = np.array(scores[REFERENCE]["cv"])
        for path, found in scores.items():
            diff = np.array(found["cv"]) - ref
            out[path] |= {
                "f1_split": found["split"],
                "f1_split_diff": found["split"] - scores[REFERENCE]["split"],
                "f1_cv": float(np.mean(found["cv"])),
                "f1_cv_diff": float(diff.mean()),
                "f1_cv_se": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--paragraphs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds; the best is shown")
    parser.add_argument("--paths", default=",".join(PATHS), help="runtime:precision, comma-separated")
    parser.add_argument("--semeval", type=Path, default=SEMEVAL, help="SemEval-2016 task 6 training file (probe)")
    parser.add_argument("--no-probe", action="store_true", help="skip the SemEval logistic-regression probe")
    parser.add_argument("--probe-repeats", type=int, default=10, help="repeats of the probe's 5-fold CV")
    args = parser.parse_args()
    from workbench.services import free_port

    paths = list(dict.fromkeys([REFERENCE, *args.paths.split(",")]))
    tasks = sample_paragraphs(args.paragraphs)
    print(f"{args.paragraphs} paragraphs, requests of {args.batch}, {args.singles} single-task requests, "
          f"{args.threads} threads, cache off, best of {args.rounds} rounds")  # fmt: skip
    runs: dict[str, list[dict]] = {}
    servers: dict[str, tuple[int, subprocess.Popen]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for path in paths:
                port, log = free_port(), Path(scratch) / f"{path.replace(':', '-')}.log"
                started = time.monotonic()
                process = start_backend(port, args.threads, path, Path(scratch) / "models", log)
                servers[path] = (port, process)
                wait_healthy(port, process, log)
                print(f"  backend {path:11} up in {time.monotonic() - started:5.1f} s", flush=True)
            classify = baseline_pipeline(args.threads)
            for _ in range(args.rounds):
                for path, (port, _) in servers.items():
                    runs.setdefault(f"backend {path}", []).append(
                        measure_backend(port, tasks, args.batch, args.singles)
                    )
                runs.setdefault("baseline pipeline", []).append(measure_baseline(classify, tasks, args.singles))
        finally:
            for _, process in servers.values():
                process.terminate()
            for _, process in servers.values():
                process.wait(20)
    rows = {name: best(found) for name, found in runs.items()}
    probe = None if args.no_probe or not args.semeval.is_file() else args.semeval
    started = time.monotonic()
    quality = accuracy(paths, args.threads, probe, args.probe_repeats)
    print(f"  accuracy measured in {time.monotonic() - started:5.1f} s", flush=True)

    reference = rows[f"backend {REFERENCE}"]["answers"]
    base = rows["baseline pipeline"]["throughput"]
    print(f"\n{'':20} {'paragraphs/s':>13} {'x baseline':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in rows.items():
        print(f"{name:20} {row['throughput']:13.1f} {row['throughput'] / base:11.2f} {row['p50_ms']:8.1f} "
              f"{row['p99_ms']:8.1f}")  # fmt: skip
    print(f"\naccuracy against torch fp32{'' if probe else ' (probe skipped: --no-probe or no --semeval file)'}")
    head = f"{'':20} {'cos mean':>9} {'cos min':>8} {'agree %':>8}"
    if probe:
        head += f" {'F1 80/20':>9} {'diff':>6} {f'F1 {args.probe_repeats}x5-fold':>14} {'diff +- se':>13}"
    print(head)
    for path, q in quality.items():
        line = f"backend {path:12} {q['cos_mean']:9.4f} {q['cos_min']:8.4f}"
        line += f" {agreement(reference, rows[f'backend {path}']['answers']):8.1f}"
        if probe:
            line += f" {q['f1_split']:9.2f} {q['f1_split_diff']:+6.2f} {q['f1_cv']:14.2f}"
            line += f" {q['f1_cv_diff']:+7.2f} +- {q['f1_cv_se']:.2f}"
        print(line)
    for path, q in quality.items():
        if q["ran"] != path.replace(":", " "):
            print(f"note: {path} ran as {q['ran']}")
    if probe:
        within = [p for p, q in quality.items() if abs(q["f1_cv_diff"]) <= F1_TOLERANCE]
        print(f"macro-F1 within {F1_TOLERANCE} points of torch fp32 (mean paired difference over "
              f"{args.probe_repeats}x5 folds): {', '.join(within)}")  # fmt: skip


if __name__ == "__main__":
    main()
