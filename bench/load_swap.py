"""Load while the model changes (issue 7): concurrent /predict clients while a training job runs, its model is
promoted and then rolled back; no request may fail and no response may mix model versions.

What it does, on this machine, in a temporary folder:
  1. trains a tiny model (version A: 27 sample paragraphs from all five articles, random labels) with
     `workbench train --from-export` and promotes it;
  2. starts `workbench serve` (real uvicorn, its own process: cold-start fallback + model A), with
     WORKBENCH_TRAIN_ARGS pointing its training jobs at a second export (other labels, so another version);
  3. runs --clients threads calling POST /predict (--tasks paragraphs per request) for --seconds; meanwhile it
     POSTs START_TRAINING to /webhook (the backend trains version B in a child process and promotes it, --force),
     waits until the backend serves B, then runs `workbench models rollback` and waits until it serves A again;
  4. prints total and failed requests, responses whose predictions carry more than one model_version, the
     versions seen in order (by request start), latency percentiles and the timeline of the swaps.
If the swaps are not done when --seconds run out, the load goes on until they are (at most --max-extra seconds)
and the report says so. Exit code 1 when a request failed, a response mixed versions, or a swap was not seen.

Run: .venv/bin/python bench/load_swap.py [--seconds 60] [--clients 8] [--tasks 3] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAIN_ARGS = ["--max-steps", "4", "--max-length", "32", "--batch-size", "8", "--threads", "1", "--quiet"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def sample_tasks() -> list[dict]:
    lines = (REPO / "data" / "sample_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def labelled_export(tasks: list[dict], seed: int) -> list[dict]:
    """A Label Studio JSON export of `tasks` with random (but schema-valid) choices for every choice dimension."""
    from annotation_config.schema import load_schema

    schema = load_schema()
    rng = random.Random(seed)
    out = []
    for number, data in enumerate(tasks):
        result = []
        for dim in schema.dimensions:
            if dim.kind == "spans":
                continue
            values = [rng.choice(dim.values)]
            result.append(
                {"from_name": dim.name, "to_name": schema.data.text, "type": "choices", "value": {"choices": values}}
            )
        annotation = {"id": 1000 + number, "completed_by": 1, "result": result, "was_cancelled": False}
        out.append({"id": number + 1, "data": data, "annotations": [annotation]})
    return out


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "WORKBENCH_"))}
    env.update({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"})
    env.update(extra)
    return env


def workbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "workbench", *args], cwd=REPO, env=env or child_env(), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"`workbench {' '.join(args)}` failed:\n{done.stdout}\n{done.stderr}")
    return done


def health(url: str) -> dict | None:
    try:
        response = httpx.get(f"{url}/health", timeout=5)
        return response.json() if response.status_code == 200 else None
    except httpx.HTTPError:
        return None


@dataclass
class Record:
    started: float
    latency: float
    ok: bool
    versions: tuple[str, ...]
    error: str | None = None


@dataclass
class Load:
    url: str
    paragraphs: list[dict]
    tasks_per_request: int
    stop: threading.Event = field(default_factory=threading.Event)
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                chosen = rng.sample(self.paragraphs, self.tasks_per_request)
                body = {"tasks": [{"id": rng.randrange(1, 10**6), "data": task} for task in chosen]}
                started = time.perf_counter()
                error, versions = None, ()
                try:
                    response = client.post(f"{self.url}/predict", json=body)
                    latency = time.perf_counter() - started
                    if response.status_code != 200:
                        error = f"HTTP {response.status_code}: {response.text[:200]}"
                    else:
                        answer = response.json()
                        results = answer.get("results") or []
                        if len(results) != len(chosen):
                            error = f"{len(results)} results for {len(chosen)} tasks"
                        found = {r.get("model_version") for r in results} | {answer.get("model_version")}
                        versions = tuple(sorted(str(v) for v in found))
                except httpx.HTTPError as exc:
                    latency = time.perf_counter() - started
                    error = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.records.append(Record(started, latency, error is None, versions, error))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="load duration (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--tasks", type=int, default=3, help="tasks per /predict request (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the backend (default 1)")
    parser.add_argument("--max-extra", type=float, default=180, help="most extra seconds to wait for the swaps")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (models, logs)")
    options = parser.parse_args()

    from workbench.services import free_port

    work = Path(tempfile.mkdtemp(prefix="load-swap-"))
    models = work / "models"
    paragraphs = sample_tasks()
    export_a, export_b = work / "export-a.json", work / "export-b.json"
    export_a.write_text(json.dumps(labelled_export(paragraphs[::4], seed=1)))
    export_b.write_text(json.dumps(labelled_export(paragraphs[::4], seed=2)))
    server = None
    try:
        print("training the first tiny model ...", flush=True)
        workbench("train", "--from-export", str(export_a), "--models", str(models), *TRAIN_ARGS)
        from training.registry import current_model

        version_a = current_model(models)[0]  # the registry of an export that names no project
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = child_env(
            WORKBENCH_MODELS_DIR=str(models),
            WORKBENCH_RELOAD_INTERVAL="1",
            WORKBENCH_THREADS=str(options.threads),
            WORKBENCH_TRAIN_ARGS=" ".join(["--from-export", str(export_b), *TRAIN_ARGS, "--force"]),
        )
        with open(work / "serve.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "workbench", "serve", "--port", str(port), "--models", str(models)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while (h := health(url)) is None or h["model_version"] != version_a:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the backend did not start serving {version_a}; see {work / 'serve.log'}")
            time.sleep(0.3)
        print(f"backend up on {url}, serving {version_a}; load: {options.clients} clients x {options.tasks} tasks")

        load = Load(url, paragraphs, options.tasks)
        threads = [
            threading.Thread(target=load.client, args=(seed,), daemon=True, name=f"client-{seed}")
            for seed in range(options.clients)
        ]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        timeline: list[tuple[float, str]] = []

        def note(what: str) -> None:
            timeline.append((time.perf_counter() - t0, what))
            print(f"  t={timeline[-1][0]:6.1f} s  {what}", flush=True)

        time.sleep(1)
        answer = httpx.post(f"{url}/webhook", json={"action": "START_TRAINING"}, timeout=10).json()
        note(f"POST /webhook START_TRAINING -> {answer['status']}")
        phase, serving, job_state, version_b = "training", version_a, "running", None
        hard_stop = options.seconds + options.max_extra
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed >= options.seconds and phase == "done":
                break
            if elapsed >= hard_stop:
                note(f"gave up waiting in phase {phase!r}")
                break
            h = health(url) or {}
            state = (h.get("training") or {}).get("state")
            if state and state != job_state:
                job_state = state
                note(f"training job {state}" + (f": {h['training'].get('error')}" if state == "failed" else ""))
                if state == "failed":
                    break
            if h.get("model_version") and h["model_version"] != serving:
                serving = h["model_version"]
                note(f"backend serves {serving}")
            if phase == "training" and job_state == "succeeded" and serving != version_a:
                version_b, phase, swapped_at = serving, "serving-new", time.perf_counter()
            elif phase == "serving-new" and time.perf_counter() - swapped_at > 5:
                done = workbench("models", "rollback", "--models", str(models))
                note(done.stdout.strip())
                phase = "rolled-back"
            elif phase == "rolled-back" and serving == version_a:
                phase = "done"
            time.sleep(0.25)
        load.stop.set()
        for thread in threads:
            thread.join(timeout=180)
        duration = time.perf_counter() - t0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    records = sorted(load.records, key=lambda r: r.started)
    failed = [r for r in records if not r.ok]
    mixed = [r for r in records if len(r.versions) > 1]
    order: list[str] = []
    for record in records:
        for version in record.versions:
            if not order or order[-1] != version:
                order.append(version)
    latencies = [r.latency * 1000 for r in records if r.ok]
    swaps_seen = order == [version_a, version_b, version_a] if version_b else False
    report = {
        "seconds": round(duration, 1),
        "clients": options.clients,
        "tasks_per_request": options.tasks,
        "backend_threads": options.threads,
        "requests": len(records),
        "failed": len(failed),
        "mixed_version_responses": len(mixed),
        "versions_in_order": order,
        "requests_per_version": {v: sum(1 for r in records if v in r.versions) for v in dict.fromkeys(order)},
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1) if latencies else None,
            "p95": round(percentile(latencies, 95), 1) if latencies else None,
            "p99": round(percentile(latencies, 99), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
            "mean": round(statistics.fmean(latencies), 1) if latencies else None,
        },
        "throughput_rps": round(len(records) / duration, 2),
        "timeline": [{"t": round(t, 1), "event": what} for t, what in timeline],
        "swaps_seen": swaps_seen,
        "first_errors": [r.error for r in failed[:5]],
    }
    print(json.dumps(report, indent=2))
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")
    if options.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if (not failed and not mixed and swaps_seen) else 1


if __name__ == "__main__":
    sys.exit(main())
