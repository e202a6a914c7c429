"""One training run end to end: accept -> dataset -> train -> calibrate -> evaluate -> save a version -> promote."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation_config.errors import WorkbenchError
from annotation_config.schema import Schema
from training.data import AcceptancePolicy, AcceptedData, accept, build_dataset, data_hash, group_column
from training.distributed import is_main_process, rank
from training.pairs import fields_of, reading
from training.registry import GROUPS_FILE, MANIFEST_FILE, PromotionResult, Registry, write_json_atomic
from training.training_args import TrainingArguments

log = logging.getLogger(__name__)


# The rungs that serve before any fine-tuned model, scored on a candidate's rows: (schema, train rows, test rows) ->
# {rung name: {"split", "n", "primary", "dimensions", "model_version"}}, or None when not comparable. training knows
# no rung but its own, so the backend passes its cold start and instant learner in (backend/instant_rival.py).
GateRival = Callable[
    [Schema, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], dict[str, dict[str, Any]] | None
]


class NoAcceptedData(WorkbenchError, ValueError):
    """Nothing to train on yet."""


@dataclass
class TrainingOutcome:
    """What a run did: skipped (no new data) or trained a version, and whether it was promoted and why."""

    status: str  # "trained", "skipped", or "worker" (a data-parallel process other than rank 0: wrote nothing)
    message: str
    data_hash: str
    accepted: AcceptedData
    version: str | None = None
    model_dir: Path | None = None
    promotion: PromotionResult | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # {"test": report, "validation": report}
    timings: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # data parallelism (TrainResult.distributed)

    @property
    def promoted(self) -> bool:
        """Whether this run's version became current."""
        return bool(self.promotion and self.promotion.promoted)


def code_revision() -> str | None:
    """`git rev-parse HEAD` of this code, when it lives in a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def unchanged_since(registry: Registry, digest: str, schema: Schema) -> str | None:
    """The version already trained on exactly this data and schema (the current one, else the newest), if any."""
    candidates = [registry.current()] + list(reversed(registry.versions()[-1:]))
    for version in filter(None, candidates):
        try:
            manifest = registry.manifest(version)
        except (WorkbenchError, OSError, ValueError):
            continue
        if manifest.get("data_hash") == digest and manifest.get("schema_hash") == schema.hash:
            return version
    return None


def run_training(
    tasks: Iterable[Mapping[str, Any]],
    schema: Schema,
    models_dir: str | os.PathLike,
    args: TrainingArguments | None = None,
    *,
    policy: AcceptancePolicy | None = None,
    if_new_data: bool = False,
    promote: bool = True,
    force: bool = False,
    source: str = "",
    keep_versions: int | None = None,
    job_token: str | os.PathLike | None = None,
    rival: GateRival | None = None,
) -> TrainingOutcome:
    """Train on Label Studio task dicts and register the result; promote it through the gate when `promote`.

    `keep_versions`: afterwards, prune the registry to the newest N versions (None: keep all). `job_token`: set by
    the backend's job runner; the promotion happens only if the token is still there (see `Registry.promote`).
    `rival`: while no fine-tuned model is promoted, the candidate must also beat what serves then, as `rival` scores
    it on the candidate's own rows (the backend passes its instant learner, backend/instant_rival.py; None: no rival).
    """
    args = args or TrainingArguments()
    registry = Registry(models_dir)
    started = time.perf_counter()
    timings: dict[str, Any] = {}

    accepted = accept(tasks, schema, policy)
    digest = data_hash(accepted.examples)
    timings["accept_seconds"] = time.perf_counter() - started
    if if_new_data:
        same = unchanged_since(registry, digest, schema)
        if same:
            message = f"no new accepted labels since model {same} (data hash {digest}); nothing to do"
            return TrainingOutcome("skipped", message, digest, accepted, version=same, timings=timings)
    if not accepted.examples:
        raise NoAcceptedData(
            f"no accepted annotations to train on ({accepted.summary()}); submit annotations in Label Studio first"
        )

    mark = time.perf_counter()
    from training.calibration import THRESHOLDS_FILE, save_calibration, save_thresholds
    from training.evaluation import save_report
    from training.predict import run_model
    from training.trainer import train_model

    timings["import_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    dataset = build_dataset(accepted.examples, schema, seed=args.seed, ratios=args.split_ratios)
    splits = {name: len(part) for name, part in dataset.items()}
    timings["dataset_seconds"] = time.perf_counter() - mark
    log.info("splits: %s", splits)

    mark = time.perf_counter()
    trained = train_model(dataset, schema, args)
    timings["train_seconds"] = time.perf_counter() - mark
    if not is_main_process():
        # Data parallel (accelerate launch / torchrun): every process trained, rank 0 alone evaluates, saves and
        # promotes. The others hold no collective from here on, so they may leave now, having written nothing.
        return TrainingOutcome("worker", f"process {rank()} done training", digest, accepted, timings=timings)
    timings["train_phases"] = trained.phases
    timings["device"] = trained.device
    timings["steps"] = trained.steps

    model, tokenizer, config = trained.model, trained.tokenizer, trained.model.config
    # the text fields the embedding heads and the cold start's answers read (none when both are off)
    embed_fields = sorted(
        {
            name
            for d in config.dimensions
            if d["kind"] != "spans"
            for name in fields_of(reading(d["field"], d.get("pair_with")))
        }
        if args.embedding_weight > 0 or args.prior_weight > 0
        else set()
    )
    mark = time.perf_counter()
    outputs = {}
    for name in ("validation", "test"):
        rows = list(dataset[name])
        # only the views a row has labels for: evaluation and calibration need no other answers
        out = (
            run_model(model, tokenizer, rows, args.eval_batch_size, labelled_only=True, embed_fields=embed_fields)
            if rows
            else None
        )
        outputs[name] = (rows, out)
    temperatures = _fit_temperatures(config.dimensions, *outputs["validation"], args)
    timings["calibrate_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    embed = _EmbeddingCache(model, tokenizer)
    for rows, out in outputs.values():
        for name, vectors in (out.embeddings if out is not None else {}).items():
            embed.keep([str(r.get(name) or "") for r in rows], vectors)
    prior, prior_scores = None, None
    if args.prior_weight > 0:
        from training.evaluation import prior_scores as prior_scores_of
        from training.prior import ColdStartPrior

        prior = ColdStartPrior.build(schema, embed, args.prior_weight)
        train_rows = list(dataset["train"])
        vectors = {name: embed([str(r.get(name) or "") for r in train_rows]) for name in prior.fields}
        answers = prior.answers(train_rows, vectors)
        prior_scores = prior_scores_of(schema, list(prior.dimensions), train_rows, answers)
        prior.keep_informative(prior_scores)
        if not prior.dimensions:
            prior = None
    ngram, embedding_heads = _fit_companions(
        config.dimensions, schema, list(dataset["train"]), args, embed_fields, embed, prior
    )
    timings["companions_seconds"] = time.perf_counter() - mark
    companion_rows = len(dataset["train"])

    mark = time.perf_counter()
    served = _served(config.dimensions, outputs, temperatures, ngram, embedding_heads, prior)
    thresholds = _fit_thresholds(config.dimensions, outputs["validation"][0], served["validation"], args)
    if prior is not None and thresholds:  # the cold start's answers keep to the tuned thresholds, as when served
        served = _served(config.dimensions, outputs, temperatures, ngram, embedding_heads, prior, thresholds)
    companions = ngram is not None or embedding_heads is not None
    metrics = _evaluate(config.dimensions, outputs, temperatures, served, thresholds, companions)
    timings["evaluate_seconds"] = time.perf_counter() - mark

    # The scores above are the train-split heads' on rows they never saw. What serves is refitted on every accepted
    # row: at 20-80 labels the held-out 20% is a large share of what the annotator taught (as sklearn's refit).
    refit_rows = [*dataset["train"], *dataset["validation"], *dataset["test"]]
    if args.refit_heads and companions and len(refit_rows) > len(dataset["train"]):
        mark = time.perf_counter()
        ngram, embedding_heads = _fit_companions(
            config.dimensions, schema, refit_rows, args, embed_fields, embed, prior
        )
        timings["refit_seconds"] = time.perf_counter() - mark
        companion_rows = len(refit_rows)

    # Nothing fine-tuned serves yet, so the cold start or the instant learner does: the candidate must beat both on
    # the same rows.
    if promote and rival is not None and not force and _nothing_promoted(registry) and outputs["test"][0]:
        mark = time.perf_counter()
        train_rows = [*dataset["train"], *dataset["validation"]]
        try:
            metrics["rivals"] = rival(schema, train_rows, outputs["test"][0])
        except Exception as error:  # the rivals are a safeguard: without them the usual gate still applies
            log.warning("could not score the cold start and instant learner for the gate: %s", error)
        timings["instant_rival_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    version = registry.new_version(digest)
    with registry.staging(version) as folder:
        from training.modeling import quiet_transformers

        with quiet_transformers():
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        (folder / "label_maps.json").write_text(json.dumps(config.label_maps(), indent=2) + "\n")
        save_calibration(temperatures, folder / "calibration.json")
        if thresholds:
            save_thresholds(thresholds, folder / THRESHOLDS_FILE)
        if ngram is not None:
            from training.ngram import NGRAM_FILE

            ngram.save(folder / NGRAM_FILE)
        if embedding_heads is not None:
            from training.embedding_heads import EMBEDDING_FILE

            embedding_heads.save(folder / EMBEDDING_FILE)
        if prior is not None:
            from training.prior import PRIOR_FILE

            prior.save(folder / PRIOR_FILE)
        serving = {"runtime": "torch-fp32", "reason": "ONNX export turned off (--no-onnx)"}
        if args.onnx:
            from training.onnx_check import check_onnx_runtime

            mark_onnx = time.perf_counter()
            serving = check_onnx_runtime(folder, model, tokenizer, outputs["test"][0])
            timings["onnx_seconds"] = time.perf_counter() - mark_onnx
        save_report(metrics["test"], folder, name="report.json", plots=True)
        test_rows, test_out = outputs["test"]
        if test_out is not None:
            # The served heads are refitted on every row, these included: the gate reads the answers of the heads
            # that never saw them (what metrics.json scores), not the saved model's (training/gate.py).
            from training.gate import COUNTS_FILE, row_counts

            counts = row_counts(config.dimensions, test_rows, served["test"], test_out.spans, thresholds)
            counts.save(folder / COUNTS_FILE)
        (folder / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
        for name in ("validation", "test"):
            with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for row in outputs[name][0]:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        (folder / "held_out.json").write_text(json.dumps([h.to_dict() for h in accepted.held_out], indent=2) + "\n")
        # the split groups this version learnt from, so a later gate tells rows new to it (Registry.unseen_by)
        column = group_column(schema)
        groups = {"column": column, **{n: sorted({str(r.get(column)) for r in dataset[n]}) for n in dataset}}
        (folder / GROUPS_FILE).write_text(json.dumps(groups, ensure_ascii=False) + "\n")
        (folder / "training_log.json").write_text(json.dumps(_jsonable(trained.history), indent=2) + "\n")
        timings["save_seconds"] = time.perf_counter() - mark
        timings["total_seconds"] = time.perf_counter() - started
        manifest = {
            "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data_hash": digest,
            "schema_hash": schema.hash,
            "schema_name": schema.name,
            "group_field": group_column(schema) if schema.data.group else None,
            "seed": args.seed,
            "encoder": args.encoder,
            "hyperparameters": args.to_dict(),
            "serving": serving,  # what runs the encoder when served: ONNX int8 if it passed its check, and why
            "chosen": trained.settings,  # what target_encoding "auto" and the CPU epoch budget chose
            # per choice dimension, the cold start's macro-F1 on the training rows against their most common answer:
            # its answers are read where it scored higher (training/prior.py)
            "prior": {"dimensions": sorted(prior.dimensions) if prior else [], "scores": prior_scores},
            "code_revision": code_revision(),
            "source": source,
            "examples": len(accepted.examples),
            "held_out": len(accepted.held_out),
            "splits": splits,
            # the rows the served n-gram and embedding heads were fitted on (all of them when refitted)
            "companion_rows": companion_rows,
            "dimensions": config.dimensions,
            "scores": {name: metrics[name].get("primary") for name in ("validation", "test")},
            "best_epoch": trained.best_epoch,
            "stopped_early": trained.stopped_early,
            "training": trained.distributed,  # data parallelism: processes, per-device and global batch
            "timings": timings,
            "versions": _library_versions(),
        }
        from training.model_card import write_card

        write_card(folder, manifest, metrics["test"], language=schema.language, license=schema.license)
        write_json_atomic(folder / MANIFEST_FILE, _jsonable(manifest))  # last: marks the folder complete
    model_dir = registry.root / version

    promotion = None
    if promote:
        mark = time.perf_counter()
        promotion = registry.promote(version, force=force, schema=schema, job_token=job_token)
        timings["promote_seconds"] = time.perf_counter() - mark
    pruned: list[str] = []
    if keep_versions is not None:
        try:
            pruned = registry.prune(keep_versions)
        except (WorkbenchError, OSError) as error:  # the new version is saved: a failed clean-up must not undo that
            log.warning("could not prune old model versions: %s", error)
    timings["total_seconds"] = time.perf_counter() - started
    message = f"trained {version} on {len(accepted.examples)} tasks (splits {splits})"
    if promotion is not None:
        message += f"; {'promoted' if promotion.promoted else 'not promoted'}: {promotion.reason}"
    if pruned:
        message += f"; removed {len(pruned)} old version(s), keeping the newest {keep_versions}"
    return TrainingOutcome(
        "trained", message, digest, accepted, version, model_dir, promotion, metrics, timings, trained.distributed
    )


def _nothing_promoted(registry: Registry) -> bool:
    """True when no fine-tuned model is promoted; False when that cannot be read (saving reports the problem)."""
    try:
        return registry.current() is None
    except (WorkbenchError, OSError):
        return False


def _fit_companions(
    dimensions: list[dict[str, Any]],
    schema: Schema,
    rows: list[dict[str, Any]],
    args: TrainingArguments,
    embed_fields: list[str],
    embed: Callable[[Sequence[str]], Any],
    prior: Any = None,
) -> tuple[Any, Any]:
    """The n-gram heads and the embedding heads fitted on `rows` (either None when its weight is 0); `embed` gives
    the encoder's sentence embeddings, `prior` the cold start's answers the heads read (training/prior.py;
    None: not read)."""
    embeddings = {name: embed([str(r.get(name) or "") for r in rows]) for name in embed_fields}
    hints = prior.features(prior.answers(rows, embeddings)) if prior is not None else None
    ngram = None
    if args.ngram_weight > 0:
        from training.ngram import NgramModel

        # single choice only: on the sample dev set's frames the n-gram heads reading the cold start's ticks lost
        # 0.02-0.05 micro-F1 (0.02-0.03 reading only their own label's), while on its stance questions they gained
        # (BENCHMARKS.md, issue 15 rounds 4 and 5)
        single = {d["name"] for d in dimensions if d["kind"] == "single"}
        ngram_hints = {name: h for name, h in hints.items() if name in single} if hints is not None else None
        ngram = NgramModel.fit(dimensions, rows, args.ngram_weight, ngram_hints, args.ngram_min_ticks)
    embedding_heads = None
    if embed_fields and args.embedding_weight > 0:
        from training.embedding_heads import EmbeddingHeads, label_prototypes

        embedding_heads = EmbeddingHeads.fit(
            dimensions, rows, embeddings, args.embedding_weight, label_prototypes(schema, embed), hints
        )
    return ngram, embedding_heads


class _EmbeddingCache:
    """The encoder's sentence embedding of each distinct text, computed once per training run (the companions are
    fitted twice, on the training split and then on every row, and the held-out rows were embedded when scored)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.vectors: dict[str, Any] = {}

    def keep(self, texts: Sequence[str], vectors: Any) -> None:
        """Remember vectors computed elsewhere (run_model's, for the held-out rows)."""
        self.vectors.update(zip(texts, vectors, strict=True))

    def __call__(self, texts: Sequence[str]) -> Any:
        import numpy as np

        from training.embedding_heads import text_embeddings

        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.keep(missing, text_embeddings(self.model.encoder, self.tokenizer, missing))
        if not texts:
            return np.zeros((0, self.model.encoder.config.hidden_size), dtype=np.float32)
        return np.stack([self.vectors[t] for t in texts])


def _fit_temperatures(
    dimensions: list[dict[str, Any]], rows: list[dict[str, Any]], out: Any, args: TrainingArguments
) -> dict[str, float]:
    """Per choice dimension, the temperature fitted on the validation rows labelled for it (when there are enough)."""
    from training.calibration import fit_temperature

    temperatures = {}
    for dim in dimensions:
        if dim["kind"] == "spans" or not args.calibrate or out is None:
            continue
        have = [i for i, row in enumerate(rows) if row.get(dim["name"]) is not None]
        if len(have) < max(1, args.calibration_min_examples):
            continue
        if dim["kind"] == "single":
            labels = [dim["labels"].index(rows[i][dim["name"]]) for i in have]
        else:
            labels = [[float(v in rows[i][dim["name"]]) for v in dim["labels"]] for i in have]
        temperatures[dim["name"]] = fit_temperature(out.logits[dim["name"]][have], labels, dim["kind"])
    return temperatures


def _served(
    dimensions: list[dict[str, Any]],
    outputs: Mapping[str, tuple[list[dict[str, Any]], Any]],
    temperatures: dict,
    ngram: Any,
    embedding_heads: Any,
    prior: Any,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Per split, the served probabilities (calibrated encoder blended with the n-gram and embedding heads, and the
    cold start's answers where they learnt nothing), for the thresholds and the metrics; None for an empty split."""
    from training.predict import served_probabilities

    def served(rows: list[dict[str, Any]], out: Any) -> dict[str, Any]:
        encoder = out.probabilities(dimensions, temperatures)
        return served_probabilities(encoder, out, rows, ngram, embedding_heads, prior, thresholds)

    return {name: None if out is None else served(rows, out) for name, (rows, out) in outputs.items()}


def _fit_thresholds(
    dimensions: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    served: Mapping[str, Any] | None,
    args: TrainingArguments,
) -> dict[str, float]:
    """Per multi-choice dimension, the decision threshold of the served probabilities that maximises micro-F1 on the
    validation rows labelled for it (when there are enough: `threshold_min_examples`)."""
    from training.calibration import fit_threshold

    multi = [d for d in dimensions if d["kind"] == "multi"]
    if not args.tune_thresholds or served is None or not multi:
        return {}
    thresholds = {}
    for dim in multi:
        have = [i for i, row in enumerate(rows) if row.get(dim["name"]) is not None]
        if len(have) < max(1, args.threshold_min_examples):
            continue
        labels = [[v in rows[i][dim["name"]] for v in dim["labels"]] for i in have]
        thresholds[dim["name"]] = fit_threshold(served[dim["name"]][have], labels)
    return thresholds


def _evaluate(
    dimensions: list[dict[str, Any]],
    outputs: Mapping[str, tuple[list[dict[str, Any]], Any]],
    temperatures: dict,
    served: Mapping[str, Mapping[str, Any] | None],
    thresholds: Mapping[str, float] | None = None,
    companions: bool = False,
) -> dict[str, Any]:
    """Metrics per split, on the served scores (`_served`), and on uncalibrated encoder scores, which the report
    compares them with; "<split>_encoder": the encoder alone, calibrated, when `companions` joined it."""
    from training.evaluation import evaluate_outputs

    metrics: dict[str, Any] = {}
    for name, (rows, out) in outputs.items():
        if out is None:
            metrics[name] = {"n": 0, "dimensions": {}, "primary": None}
            continue
        encoder = out.probabilities(dimensions, temperatures)
        raw = out.probabilities(dimensions)
        metrics[name] = evaluate_outputs(dimensions, rows, served[name], out.spans, raw, thresholds)
        if companions:
            metrics[f"{name}_encoder"] = {"primary": evaluate_outputs(dimensions, rows, encoder, out.spans)["primary"]}
    return metrics


def _library_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _jsonable(value: Any) -> Any:
    from training.evaluation import jsonable

    return jsonable(value)
