"""Retraining turnaround: seconds from START_TRAINING to the newly promoted model serving, for 1,000 accepted labels.

What it runs, per schema (both by default):
  sample    the sample schema (annotation_config/schema.yaml: three stance targets, threat characterization, 14
            frames, evidence spans); 1,000 tasks made from data/sample_tasks.jsonl (108 paragraphs, each copy with its
            sentences rotated so every text differs), every dimension answered by deterministic keyword rules.
            One encoder pass per view: the plain text plus one (target, text) pair per target = 4 passes per task.
  semeval   bench/schemas/semeval2016.yaml; 1,000 tweets of ../shared/data/semeval2016 with their gold stance (one
            target answered per tweet = 1 encoder pass per task).
The real backend (`backend.app.create_app`) serves on a real uvicorn port in this process, in a fresh model
registry, with `WORKBENCH_TRAIN_ARGS`-style settings `--from-export FILE [--your --options]` and no Label Studio
URL (`workbench train` refuses --from-export together with --ls-url). The bench POSTs {"action": "START_TRAINING"}
to /webhook (what Label Studio sends), polls /health every 50 ms until model_kind is "trained" with a new
model_version, then sends one /predict and checks it carries that version. The clock runs from the POST to the
first /health answer that shows the new model. Phases come from the job status and the model's manifest.

With --launch warm,cold each schema runs twice: jobs forked from the backend's warm training worker (the default)
and jobs started as fresh `python -m workbench train` processes (the baseline), and the saving is printed.

Run: .venv/bin/python bench/retrain_turnaround.py [--schemas sample,semeval] [--labels 1000]
         [--train-args "--epochs 2"] [--rounds 2] [--launch warm,cold] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from training.registry import project_dir  # noqa: E402  (after the path above)

SEMEVAL_SCHEMA = REPO / "bench" / "schemas" / "semeval2016.yaml"
SEMEVAL_DATA = REPO.parent / "shared" / "data" / "semeval2016" / "semeval2016-task6-trainingdata.txt"

# Keyword rules standing in for annotators on the sample corpus (deterministic, so runs are comparable).
AGAINST_US = ("biden", "washington", "united states", "us ", "american")
CRITICAL = ("lies", "propaganda", "reckless", "aggressive", "provocation", "hysteria", "escalat", "threat")
MANUFACTURED = ("lies", "propaganda", "fiction", "pretext", "manufactured", "hype", "disinformation", "hysteria")
GENUINE = ("invasion", "troops", "build-up", "massing", "attack")
FRAMES = {
    "Security_and_defense": ("military", "war", "nato", "troops", "invasion", "security"),
    "Economic": ("trade", "economic", "sanction", "gas", "energy"),
    "Political": ("summit", "administration", "election", "president"),
    "External_regulation_and_reputation": ("diplomat", "relations", "foreign minister", "international"),
}
ACTORS = ("Russia", "China", "Washington", "Moscow", "Beijing", "NATO", "Biden", "Putin", "Ukraine")


def vary(text: str, copy: int) -> str:
    """The paragraph with its sentences rotated by `copy` (copy 0 unchanged; the length stays the same)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    if copy == 0 or len(sentences) < 2:
        return text if copy == 0 else f"{text} ({copy})"
    k = copy % len(sentences)
    rotated = sentences[k:] + sentences[:k]
    out = " ".join(rotated)
    return out if k else f"{out} ({copy})"


def sample_labels(text: str, schema) -> dict[str, Any]:
    lowered = text.lower()
    critical = any(w in lowered for w in CRITICAL)
    labels: dict[str, Any] = {
        "stance_us_policy": "against" if critical and any(w in lowered for w in AGAINST_US) else "none",
        "stance_russia_china": "favor" if "partnership" in lowered or "cooperation" in lowered else "none",
        "stance_nato_enlargement": "against" if "nato" in lowered and critical else "none",
    }
    if any(w in lowered for w in MANUFACTURED):
        labels["threat_characterization"] = "manufactured"
    elif any(w in lowered for w in GENUINE):
        labels["threat_characterization"] = "genuine"
    else:
        labels["threat_characterization"] = "not_applicable"
    labels["frames"] = [f for f, words in FRAMES.items() if any(w in lowered for w in words)] or ["Political"]
    spans = []
    for actor in ACTORS:
        for match in re.finditer(rf"\b{re.escape(actor)}\b", text):
            spans.append({"start": match.start(), "end": match.end(), "label": "actor"})
            break
    labels["evidence"] = spans[:4]
    names = {d.name for d in schema.dimensions}
    return {k: v for k, v in labels.items() if k in names}


def sample_export(count: int, schema) -> list[dict]:
    from annotation_config.regions import labels_to_results

    lines = (REPO / "data" / "sample_tasks.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    tasks = []
    for i in range(count):
        base, copy = rows[i % len(rows)], i // len(rows)
        data = dict(base)
        data["text"] = vary(base["text"], copy)
        data["key"] = f"{base['key']}-v{copy}"
        if schema.data.group:
            data[schema.data.group] = f"{base.get(schema.data.group)}-v{copy}"
        result = labels_to_results(schema, sample_labels(data["text"], schema), data)
        tasks.append(
            {
                "id": i + 1,
                "data": data,
                "annotations": [{"id": i + 1, "completed_by": 1, "was_cancelled": False, "result": result}],
            }
        )
    return tasks


def semeval_export(count: int, schema, data_path: Path) -> list[dict]:
    from train_semeval2016 import as_task, read_tweets

    tweets = read_tweets(data_path)
    chosen = random.Random(0).sample(tweets, min(count, len(tweets)))
    return [as_task(t, schema) for t in chosen]


def relabel(tasks: list[dict], schema, share: float, seed: int) -> int:
    """Change the first single-choice answer of `share` of the tasks (new accepted labels for a second round)."""
    rng = random.Random(seed)
    changed = 0
    for task in rng.sample(tasks, max(1, int(share * len(tasks)))):
        for item in task["annotations"][0]["result"]:
            if item.get("type") == "choices" and schema.dimension(item["from_name"]).kind == "single":
                values = [v for v in schema.dimension(item["from_name"]).values if v not in item["value"]["choices"]]
                item["value"]["choices"] = [rng.choice(values)]
                changed += 1
                break
    return changed


def wait_for_round(client: httpx.Client, url: str, before: str, jobs_before: int, timeout: float) -> dict:
    """Poll /health until a new trained model serves, or the job ended without one (refused or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = client.get(f"{url}/health").json()
        job = health["training"]
        if health["model_kind"] == "trained" and health["model_version"] != before:
            return {"health": health, "served": True, "seen_at": time.time(), "seen_perf": time.perf_counter()}
        if job["jobs_started"] > jobs_before and job["state"] in ("failed", "succeeded"):
            # the swap (loading the new model) runs right after the job ends: give it up to 15 s, then decide
            settle = time.monotonic() + 15
            while time.monotonic() < settle:
                health = client.get(f"{url}/health").json()
                if health["model_kind"] == "trained" and health["model_version"] != before:
                    return {"health": health, "served": True, "seen_at": time.time(), "seen_perf": time.perf_counter()}
                time.sleep(0.05)
            return {"health": health, "served": False, "seen_at": time.time(), "seen_perf": time.perf_counter()}
        time.sleep(0.05)
    raise SystemExit(f"no new model within {timeout:.0f} s")


def measure(
    kind: str, labels: int, train_args: str, rounds: int, timeout: float, data_path: Path, launch: str = "warm"
) -> list[dict]:
    from annotation_config.schema import load_schema
    from backend.app import create_app
    from backend.settings import Settings
    from workbench.services import ServerThread

    schema_path = SEMEVAL_SCHEMA if kind == "semeval" else None
    schema = load_schema(schema_path)
    tasks = semeval_export(labels, schema, data_path) if kind == "semeval" else sample_export(labels, schema)
    results = []
    with tempfile.TemporaryDirectory(prefix=f"turnaround-{kind}-") as scratch:
        export = Path(scratch) / "export.json"
        export.write_text(json.dumps(tasks, ensure_ascii=False))
        settings = Settings(
            schema_path=schema_path,
            models_dir=Path(scratch) / "models",
            train_args=f"--from-export {export} {train_args}".strip(),
            reload_interval=1.0,
            train_warm=launch == "warm",
            label_studio_url=None,
            label_studio_api_key=None,
        )
        started = time.perf_counter()
        app = create_app(settings)
        with ServerThread(app) as server, httpx.Client(timeout=30) as client:
            setup_seconds = time.perf_counter() - started
            # A backend that has run a while has its training worker warm: wait for it (the first seconds after
            # start are the worker importing torch and transformers once, in the background).
            worker = client.get(f"{server.url}/health").json()["training"]["worker"]
            while worker in ("warming", "not started") and time.perf_counter() - started < 300:
                time.sleep(0.1)
                worker = client.get(f"{server.url}/health").json()["training"]["worker"]
            worker_seconds = time.perf_counter() - started
            print(
                f"{kind} {launch}: backend up in {setup_seconds:.1f} s, training worker {worker} after "
                f"{worker_seconds:.1f} s",
                flush=True,
            )
            for round_number in range(1, rounds + 1):
                if round_number > 1:
                    changed = relabel(tasks, schema, 0.03, round_number)
                    export.write_text(json.dumps(tasks, ensure_ascii=False))
                else:
                    changed = 0
                health = client.get(f"{server.url}/health").json()
                before, jobs_before = health["model_version"], health["training"]["jobs_started"]
                load = os.getloadavg()[0]
                t0_wall, t0 = time.time(), time.perf_counter()
                answer = client.post(f"{server.url}/webhook", json={"action": "START_TRAINING"})
                answer.raise_for_status()
                webhook_ms = (time.perf_counter() - t0) * 1000
                done = wait_for_round(client, server.url, before, jobs_before, timeout)
                seconds = done["seen_perf"] - t0
                # The watcher may serve the promoted model before the child process has exited: wait for the job's
                # end too (not counted in `seconds`), for its timings and so the next round starts clean.
                job = done["health"]["training"]
                deadline = time.monotonic() + 300
                while job["state"] == "running" and time.monotonic() < deadline:
                    time.sleep(0.1)
                    job = client.get(f"{server.url}/health").json()["training"]
                row: dict[str, Any] = {
                    "schema": kind,
                    "launch": launch,
                    "round": round_number,
                    "labels": len(tasks),
                    "changed_labels": changed,
                    "train_args": settings.train_args.split(str(export), 1)[1].strip() or "(backend defaults)",
                    "webhook_answer_ms": webhook_ms,
                    "job_state": job["state"],
                    "served": done["served"],
                    "model_version": done["health"]["model_version"],
                    "seconds": seconds,
                    "load_before": load,
                    "load_after": os.getloadavg()[0],
                    "backend_setup_seconds": setup_seconds,
                    "worker": worker,
                    "worker_ready_seconds": worker_seconds,
                }
                if job.get("started_at") and job.get("finished_at"):
                    row["job_seconds"] = job["finished_at"] - job["started_at"]
                    row["queue_seconds"] = job["started_at"] - t0_wall
                    row["swap_seconds"] = done["seen_at"] - job["finished_at"]
                if job["state"] != "succeeded":
                    row["error"] = job.get("error")
                registry_root = project_dir(settings.models_dir, None)  # the export names no project
                version = _newest_version(registry_root)
                if version:
                    manifest = json.loads((registry_root / version / "manifest.json").read_text())
                    timings = manifest.get("timings", {})
                    row["pipeline"] = {k: v for k, v in timings.items() if k.endswith("_seconds")}
                    row["train_phases"] = timings.get("train_phases")
                    row["steps"] = timings.get("steps")
                    row["device"] = timings.get("device")
                    row["splits"] = manifest.get("splits")
                    row["epochs_run"] = manifest.get("best_epoch"), manifest.get("stopped_early")
                    row["test_primary"] = (manifest.get("scores") or {}).get("test")
                    if "job_seconds" in row:
                        # the manifest is written before promotion: its timings hold no promote_seconds, so the
                        # promotion gate falls into this remainder, with the process start and the export read
                        row["child_overhead_seconds"] = row["job_seconds"] - timings.get("total_seconds", 0.0)
                    registry = json.loads((registry_root / "registry.json").read_text())
                    row["gate"] = (registry.get("history") or [{}])[-1].get("reason")
                if done["served"]:
                    sample = tasks[0]["data"]
                    mark = time.perf_counter()
                    predicted = client.post(f"{server.url}/predict", json={"tasks": [{"data": sample}]})
                    predicted.raise_for_status()
                    row["first_predict_ms"] = (time.perf_counter() - mark) * 1000
                    row["predict_version_ok"] = (
                        predicted.json()["results"][0].get("model_version") == row["model_version"]
                    )
                results.append(row)
                print_row(row)
    return results


def _newest_version(models: Path) -> str | None:
    if not models.exists():
        return None
    versions = sorted(p.name for p in models.iterdir() if (p / "manifest.json").exists())
    return versions[-1] if versions else None


def print_row(row: dict) -> None:
    pipeline = row.get("pipeline") or {}
    phases = row.get("train_phases") or {}
    print(
        f"{row['schema']:<8} {row['launch']} round {row['round']}: {row['labels']} labels, "
        f"train args {row['train_args']!r}: "
        f"{'serving' if row['served'] else 'NOT serving'} {row['model_version']} after {row['seconds']:.1f} s "
        f"(load {row['load_before']:.2f}->{row['load_after']:.2f})",
        flush=True,
    )
    if pipeline:
        print(
            f"    child process {row.get('job_seconds', 0):.1f} s = process start, export read and promotion "
            f"{row.get('child_overhead_seconds', 0):.1f} s + pipeline {pipeline.get('total_seconds', 0):.1f} s "
            f"[accept {pipeline.get('accept_seconds', 0):.1f}, imports {pipeline.get('import_seconds', 0):.1f}, "
            f"dataset {pipeline.get('dataset_seconds', 0):.1f}, train {pipeline.get('train_seconds', 0):.1f} "
            f"(tokenize {phases.get('tokenize', 0):.1f}, load {phases.get('load', 0):.1f}, fit "
            f"{phases.get('fit', 0):.1f}: {row.get('steps')} steps on {row.get('device')}), calibrate "
            f"{pipeline.get('calibrate_seconds', 0):.1f}, evaluate {pipeline.get('evaluate_seconds', 0):.1f}, save "
            f"{pipeline.get('save_seconds', 0):.1f}]; "
            f"new model served {row.get('swap_seconds', 0):+.1f} s after the job ended; gate: {row.get('gate')}",
            flush=True,
        )
    if row.get("error"):
        print(f"    error: {row['error']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", default="sample,semeval", help="comma-separated: sample, semeval")
    parser.add_argument("--labels", type=int, default=1000, help="annotated tasks in the export")
    parser.add_argument("--train-args", default="", help="extra `workbench train` options (WORKBENCH_TRAIN_ARGS)")
    parser.add_argument("--rounds", type=int, default=1, help="START_TRAINING rounds (later rounds relabel 3%%)")
    parser.add_argument(
        "--launch", default="warm", help="comma-separated: warm (the backend's default), cold (a fresh process per job)"
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--data", type=Path, default=SEMEVAL_DATA, help="the SemEval-2016 training file")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # The training child inherits this environment: a LABEL_STUDIO_URL there would reach `workbench train` as
    # --ls-url (its envvar), which refuses --from-export. This bench trains from the export file only.
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "WORKBENCH_TRAIN_ARGS", "WORKBENCH_MODELS_DIR"):
        os.environ.pop(name, None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; CPUs: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for kind in [k.strip() for k in args.schemas.split(",") if k.strip()]:
        if kind == "semeval" and not args.data.exists():
            print(f"semeval: skipped, {args.data} not found (pass --data)")
            continue
        for launch in [m.strip() for m in args.launch.split(",") if m.strip()]:
            rows += measure(kind, args.labels, args.train_args, args.rounds, args.timeout, args.data, launch)
    print()
    print(
        f"{'schema':<8} {'launch':<6} {'round':>5} {'labels':>6} {'train args':<28} {'START->serving s':>16} "
        f"{'child s':>8} {'fit s':>6} {'steps':>6} {'load':>10}"
    )
    for row in rows:
        fit = (row.get("train_phases") or {}).get("fit", float("nan"))
        print(
            f"{row['schema']:<8} {row['launch']:<6} {row['round']:>5} {row['labels']:>6} {row['train_args'][:28]:<28} "
            f"{row['seconds'] if row['served'] else float('nan'):>16.1f} {row.get('job_seconds', float('nan')):>8.1f} "
            f"{fit:>6.1f} {row.get('steps') or 0:>6} {row['load_before']:>4.1f}->{row['load_after']:<4.1f}"
        )
    for kind in {row["schema"] for row in rows}:
        served = {r["launch"]: r["seconds"] for r in rows if r["schema"] == kind and r["round"] == 1 and r["served"]}
        if "warm" in served and "cold" in served:
            print(
                f"{kind}: warm launch {served['warm']:.1f} s vs cold launch (baseline, a fresh process per job) "
                f"{served['cold']:.1f} s: {served['cold'] - served['warm']:.1f} s saved, "
                f"ratio {served['cold'] / served['warm']:.2f}x"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
