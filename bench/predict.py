"""Prediction speed of the ML backend over HTTP against the baseline a user would otherwise run.

Measured in one run, on the same machine, same encoder (all-MiniLM-L6-v2), same torch thread count:
  backend   `workbench serve` in its own process; 256 sample paragraphs POSTed to /predict in requests of 32
            tasks (throughput), then 200 single-task requests (latency). The embedding cache is OFF
            (WORKBENCH_CACHE_SIZE=0) so repeated paragraphs are really recomputed.
  baseline  transformers pipeline("text-classification") on the same encoder, called one paragraph at a time
            in process (no HTTP cost at all, which favours the baseline).
The quantized backend (WORKBENCH_QUANTIZE=1) is measured too, with its label agreement against fp32.

Run: .venv/bin/python bench/predict.py [--threads 2] [--paragraphs 256]
"""

from __future__ import annotations

import argparse
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def sample_paragraphs(count: int) -> list[dict]:
    lines = (REPO / "data" / "sample_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    tasks = [json.loads(line) for line in lines if line.strip()]
    return [tasks[i % len(tasks)] for i in range(count)]


def start_backend(port: int, threads: int, quantize: bool, models: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "WORKBENCH_THREADS": str(threads),
        "WORKBENCH_CACHE_SIZE": "0",
        "WORKBENCH_QUANTIZE": "1" if quantize else "0",
        "WORKBENCH_MODELS_DIR": str(models),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("backend did not start")


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


def measure_baseline(tasks: list[dict], threads: int, singles: int) -> dict:
    import torch
    from transformers import logging as hf_logging
    from transformers import pipeline

    from training.encoder import resolve_encoder_path

    hf_logging.set_verbosity_error()  # the encoder has no classification head: the pipeline adds a random one
    torch.set_num_threads(threads)
    classify = pipeline("text-classification", model=resolve_encoder_path(), device="cpu")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--paragraphs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--singles", type=int, default=200)
    args = parser.parse_args()
    from workbench.services import free_port

    tasks = sample_paragraphs(args.paragraphs)
    print(f"{args.paragraphs} paragraphs, requests of {args.batch}, {args.singles} single-task requests, "
          f"torch threads {args.threads}, cache off")  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory() as models:
        for name, quantize in (("backend fp32", False), ("backend int8", True)):
            port = free_port()
            process = start_backend(port, args.threads, quantize, Path(models))
            try:
                rows[name] = measure_backend(port, tasks, args.batch, args.singles)
            finally:
                process.terminate()
                process.wait(20)
    rows["baseline pipeline"] = measure_baseline(tasks, args.threads, args.singles)
    base = rows["baseline pipeline"]["throughput"]
    print(f"{'':20} {'paragraphs/s':>13} {'x baseline':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in rows.items():
        ratio = row["throughput"] / base
        print(f"{name:20} {row['throughput']:13.1f} {ratio:11.2f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f}")
    same = agreement(rows["backend fp32"]["answers"], rows["backend int8"]["answers"])
    print(f"int8 vs fp32: {same:.1f}% of choice answers identical")


if __name__ == "__main__":
    main()
