"""`workbench train`, `workbench evaluate` and `workbench models list|promote|rollback` (typer; heavy imports inside).

Wire into the main app with `register(app)`; `python -m training` runs these commands on their own.
The plain functions (`train_command`, `evaluate_command`, ...) do the work and return an exit code, so another
task source (e.g. a label-studio-sdk export) can call `train_command(tasks=...)` directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from annotation_config.errors import CommandError, WorkbenchError
from annotation_config.jsonl import jsonl_lines
from studio.options import ApiKeyOption, FromExportOption, ProjectOption, SchemaOption, SourceUrlOption
from training.distributed import is_main_process  # torch-free
from training.registry import JOB_TOKEN_ENV, SKIPPED_EXIT_CODE, SKIPPED_EXIT_ENV  # torch-free

if TYPE_CHECKING:
    from training.pipeline import GateRival

out = Console(highlight=False, soft_wrap=True)
DEFAULT_MODELS_DIR = Path("models")

ModelsOption = Annotated[
    Path,
    typer.Option("--models", envvar="WORKBENCH_MODELS_DIR", help="Model registry folder."),
]

RegistryProjectOption = Annotated[
    str | None,
    typer.Option("--project", help="Label Studio project id whose registry to use (default: the only one there)."),
]


# ---- plain functions ----


def train_command(
    tasks: Sequence[Mapping[str, Any]],
    *,
    schema_path: Path | None = None,
    models_dir: Path = DEFAULT_MODELS_DIR,
    if_new_data: bool = False,
    promote: bool = True,
    force: bool = False,
    args: Any = None,
    source: str = "",
    keep_versions: int | None = None,
    skipped_exit_code: int = 0,
    job_token: Path | None = None,
    rival: GateRival | None = None,
    project: str | int | None = None,
) -> int:
    """Train on Label Studio `tasks`, register the version in `project`'s registry, try to promote it; print a
    summary. `project` None: the one project the tasks name (a Label Studio export's "project"), else "default".

    `keep_versions`: prune the registry to the newest N versions afterwards (None: keep all). `skipped_exit_code`:
    what a run that `if_new_data` skipped returns. `job_token`: see training.registry.JOB_TOKEN_ENV. `rival`: see
    training.pipeline.run_training.
    """
    from annotation_config.schema import load_schema
    from training.pipeline import run_training
    from training.registry import project_registry
    from training.training_args import TrainingArguments

    schema = load_schema(schema_path)
    args = args or TrainingArguments()
    registry = project_registry(models_dir, project if project is not None else tasks_project(tasks))
    outcome = run_training(
        tasks,
        schema,
        registry.root,
        args,
        if_new_data=if_new_data,
        promote=promote,
        force=force,
        source=source,
        keep_versions=keep_versions,
        job_token=job_token,
        rival=rival,
    )
    accepted = outcome.accepted
    if outcome.status == "worker":  # a data-parallel process other than rank 0: rank 0 reports for all
        return 0
    if outcome.status == "skipped":
        if is_main_process():  # every launched process finds the same nothing-new; one says so
            out.print(outcome.message)  # the last line: the backend's job runner shows it in /health
        return skipped_exit_code
    out.print(accepted.summary())
    _print_processes(outcome.training)
    for held in accepted.held_out[:20]:
        where = held.dimension or "whole task"
        out.print(f"  held out: task {held.task_id} ({held.key}) {where}: {held.reason}")
    if len(accepted.held_out) > 20:
        out.print(f"  ... and {len(accepted.held_out) - 20} more (see held_out.json in the model folder)")
    _print_report(outcome.metrics.get("test") or {}, "test")
    out.print(outcome.message)
    out.print(f"model folder: {outcome.model_dir}")
    return 0


def evaluate_command(
    model: str,
    data: Path,
    *,
    schema_path: Path | None = None,
    models_dir: Path = DEFAULT_MODELS_DIR,
    out_dir: Path | None = None,
    as_json: bool = False,
    project: str | None = None,
) -> int:
    """Evaluate a model (version, "current" or a folder) on a Label Studio export or a JSON-lines file of rows."""
    from annotation_config.schema import load_schema
    from studio.source import load_export
    from training.data import accept
    from training.evaluation import evaluate_model, jsonable, save_report

    folder = resolve_model(model, models_dir, project)
    items = load_export(data) if _looks_like_export(data) else _read_rows(data)
    if items and all("data" in item for item in items):
        accepted = accept(items, load_schema(schema_path))
        examples: list[Any] = accepted.examples
        if not examples:
            raise CommandError(f"{data}: no accepted annotations to evaluate on ({accepted.summary()})")
    else:
        examples = items
    report = evaluate_model(folder, examples)
    if out_dir is not None:
        path = save_report(report, out_dir)
        if not as_json:
            out.print(f"wrote {path} and plots to {out_dir / 'plots'}")
    if as_json:
        typer.echo(json.dumps(jsonable(report), indent=2, ensure_ascii=False))
    else:
        _print_report(report, str(data))
    return 0


def cv_command(
    data: Path,
    *,
    folds: int,
    seeds: Sequence[int],
    schema_path: Path | None = None,
    fine_tune: bool = True,
    rivals: Any = None,
    json_path: Path | None = None,
    as_json: bool = False,
) -> int:
    """K-fold cross-validation x seeds on labelled data: the fine-tuned model (as `train` trains it), the baselines
    and `rivals` (a crossval.Method: the backend's cold start and instant learner) on the same folds."""
    from annotation_config.schema import load_schema
    from studio.source import load_export
    from training.crossval import cross_validate, standard_methods
    from training.data import accept, row_example
    from training.evaluation import jsonable
    from training.training_args import TrainingArguments

    if folds < 2:
        raise CommandError(f"--cv must be at least 2 folds (got {folds})")
    if not seeds:
        raise CommandError("--seeds needs at least one seed, e.g. --seeds 42,7,13")
    schema = load_schema(schema_path)
    items = load_export(data) if _looks_like_export(data) else _read_rows(data)
    if items and all("data" in item for item in items):
        accepted = accept(items, schema)
        examples = accepted.examples
        summary = accepted.summary()
    else:
        examples = [row_example(row, schema) for row in items]
        summary = f"{len(examples)} rows"
    if len(examples) < folds:
        raise CommandError(f"{data}: {len(examples)} labelled examples cannot fill {folds} folds ({summary})")
    methods = standard_methods(TrainingArguments(progress=not as_json), fine_tune=fine_tune)
    if rivals is not None:
        methods.insert(1, rivals)

    def progress(score: Any) -> None:
        if not as_json:
            primary = score.report.get("primary")
            shown = "n/a" if primary is None else f"{primary:.3f}"
            out.print(f"  seed {score.seed} fold {score.fold}: {score.method:<26} {shown}  ({score.seconds:.1f} s)")

    result = cross_validate(examples, schema, methods, folds=folds, seeds=seeds, progress=progress)
    summary_table = result.summary()
    figures = {
        "data": str(data),
        "folds": folds,
        "seeds": list(seeds),
        "examples": len(examples),
        "primary_metric": "mean over dimensions of macro-F1 (choices) and partial span F1 (spans)",
        "methods": summary_table,
        "per_fold": [
            {"method": s.method, "seed": s.seed, "fold": s.fold, "primary": s.report.get("primary")}
            for s in result.scores
        ],
    }
    if json_path is not None:
        from training.registry import write_json_atomic

        write_json_atomic(json_path, jsonable(figures))
    if as_json:
        typer.echo(json.dumps(jsonable(figures), indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"{folds}-fold CV x {len(seeds)} seeds on {len(examples)} examples: mean +- sd")
    dims = [d.name for d in schema.dimensions]
    for column in ["method", "primary", *dims, "s / fold"]:
        table.add_column(column, justify="left" if column == "method" else "right")

    def cell(figure: Mapping[str, Any] | None) -> str:
        if not figure or figure.get("mean") is None:
            return "-"
        return f"{figure['mean']:.3f} +- {figure['sd']:.3f}"

    for method, row in summary_table.items():
        per_dim = [cell(row["dimensions"].get(name)) for name in dims]
        table.add_row(method, cell(row), *per_dim, f"{row['seconds']:.1f}")
    out.print(table)
    return 0


def tasks_project(tasks: Sequence[Mapping[str, Any]]) -> str | None:
    """The one Label Studio project that all `tasks` name (an export's "project" field), else None."""
    named = {str(t.get("project")) for t in tasks if isinstance(t, Mapping) and t.get("project") is not None}
    return named.pop() if len(named) == 1 else None


def resolve_project(models_dir: Path, project: str | None) -> str:
    """The project a `models` command works on: the one given, else the only one in `models_dir` (a one-line
    error naming them when there are several)."""
    from training.registry import DEFAULT_PROJECT, migrate_single_registry, project_id, projects

    if project is not None:
        return project_id(project)
    migrate_single_registry(models_dir)
    known = projects(models_dir)
    if len(known) > 1:
        raise CommandError(f"{models_dir} holds the models of projects {', '.join(known)}: pass --project ID")
    return known[0] if known else DEFAULT_PROJECT


def models_list_command(
    models_dir: Path = DEFAULT_MODELS_DIR, as_json: bool = False, project: str | None = None
) -> int:
    """Print every version of one project, or of every project, with its status, test score and the gate's last
    comparison (difference and 90% interval)."""
    from training.registry import migrate_single_registry, project_registry, projects

    migrate_single_registry(models_dir)
    names = [resolve_project(models_dir, project)] if project is not None else projects(models_dir)
    entries = [{"project": name, **entry} for name in names for entry in project_registry(models_dir, name).list()]
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return 0
    if not entries:
        out.print(f"no models in {models_dir} yet; train one with `workbench train`")
        return 0
    from rich.table import Table

    table = Table()
    table.add_column("project", no_wrap=True)
    table.add_column("version", no_wrap=True)
    for name in ("status", "examples", "test score", "gate: difference [90% interval]", "data hash"):
        table.add_column(name, no_wrap=name != "gate: difference [90% interval]")
    for e in entries:
        score = "n/a" if e["primary"] is None else f"{e['primary']:.3f}"
        status = f"[bold green]{e['status']}[/]" if e["status"] == "current" else e["status"]
        gate = e["gate"] or ""
        table.add_row(e["project"], e["version"], status, str(e["examples"]), score, gate, str(e["data_hash"])[:8])
    out.print(table)
    return 0


def models_promote_command(
    version: str,
    models_dir: Path = DEFAULT_MODELS_DIR,
    force: bool = False,
    schema_path: Path | None = None,
    project: str | None = None,
) -> int:
    """Promote a version of a project through the gate; a refusal (worse, or its label maps do not fit the schema)
    is an error with its reason."""
    from annotation_config.schema import load_schema
    from training.registry import PromotionRefused, project_registry

    registry = project_registry(models_dir, resolve_project(models_dir, project))
    result = registry.promote(version, force=force, schema=load_schema(schema_path))
    if not result.promoted and result.previous != version:
        raise PromotionRefused(f"{version} not promoted: {result.reason}")
    out.print(f"{'promoted' if result.promoted else 'unchanged'}: {result.reason}")
    return 0


def models_rollback_command(models_dir: Path = DEFAULT_MODELS_DIR, project: str | None = None) -> int:
    """Switch a project back to its previously promoted version."""
    from training.registry import project_registry

    registry = project_registry(models_dir, resolve_project(models_dir, project))
    before = registry.current()
    after = registry.rollback()
    out.print(f"rolled back from {before} to {after}")
    return 0


def resolve_model(model: str, models_dir: Path, project: str | None = None) -> Path:
    """A model folder from a version or "current" of a project's registry (never outside it), or a folder path."""
    from training.registry import current_model, project_registry

    name = resolve_project(models_dir, project)
    if model == "current":
        promoted = current_model(models_dir, name)
        if promoted is None:
            raise CommandError(
                f"no promoted model for project {name} in {models_dir}; pass --model VERSION "
                "(see `workbench models list`)"
            )
        return promoted[1]
    candidate = Path(model)
    if (candidate / "config.json").exists():
        return candidate
    return project_registry(models_dir, name).path(model)


def _looks_like_export(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(1).strip() or handle.read(64).lstrip()[:1]
    except FileNotFoundError:
        raise CommandError(f"{path}: no such data file") from None
    return head == "["


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from studio.source import load_export

    rows: list[dict[str, Any]] = []
    for number, line in jsonl_lines(path.read_text(encoding="utf-8")):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise CommandError(f"{path}:{number}: invalid JSON ({error.msg})") from None
    if rows and all("data" in row for row in rows):
        return load_export(path)
    return rows


def _print_processes(training: Mapping[str, Any]) -> None:
    """One line on data parallelism: how many processes fine-tuned, and the batch an optimizer step saw."""
    if "global_batch" not in training:  # no fine-tuning (epochs 0): the frozen encoder's heads, on one process
        return
    processes, per_device = training.get("processes", 1), training.get("per_device_batch")
    out.print(
        f"trained on {processes} process{'es' if processes != 1 else ''}: global batch {training.get('global_batch')}"
        f" ({processes} x {per_device} per device)"
    )


def _print_report(report: Mapping[str, Any], name: str) -> None:
    from rich.table import Table

    dims = report.get("dimensions") or {}
    if not report.get("n"):
        out.print(f"{name}: no examples to evaluate on")
        return
    table = Table("dimension", "n", "metric", "value", "ECE", title=f"evaluation on {name} (n={report['n']})")
    from training.model_card import metric_rows

    for row in metric_rows({"dimensions": dims}):
        table.add_row(row["name"], row["n"], row["metric"], row["value"], row["ece"])
    out.print(table)
    primary = report.get("primary")
    extra = f", stance F_avg {report['stance_f_avg']:.3f}" if report.get("stance_f_avg") is not None else ""
    out.print(f"primary: {'n/a' if primary is None else f'{primary:.3f}'} ({report.get('primary_metric', '')}){extra}")


# ---- typer commands ----


def train(
    ctx: typer.Context,
    from_export: FromExportOption = None,
    ls_url: SourceUrlOption = None,
    project: ProjectOption = None,
    api_key: ApiKeyOption = "",
    schema: SchemaOption = None,
    models: ModelsOption = DEFAULT_MODELS_DIR,
    if_new_data: Annotated[
        bool, typer.Option("--if-new-data", help="Exit 0 at once when no accepted label changed since the model.")
    ] = False,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Try to promote the new version.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Promote even if worse than the current model.")] = False,
    instant_rival: Annotated[
        bool,
        typer.Option(
            "--instant-rival/--no-instant-rival",
            envvar="WORKBENCH_INSTANT_LEARNER",
            help="While no fine-tuned model is promoted, promote only if it beats the instant learner on the same "
            "held-out rows (the backend serves the instant learner until then).",
        ),
    ] = True,
    keep_versions: Annotated[
        int,
        typer.Option(
            "--keep-versions",
            envvar="WORKBENCH_KEEP_VERSIONS",
            min=1,
            help="Keep the newest N versions (and always the current and previous ones); delete older ones.",
        ),
    ] = 10,
    skipped_exit_code: Annotated[
        int,
        typer.Option(
            "--skipped-exit-code",
            envvar=SKIPPED_EXIT_ENV,
            min=0,
            max=255,
            help=f"Exit code when --if-new-data finds nothing new (the backend's jobs use {SKIPPED_EXIT_CODE}).",
        ),
    ] = 0,
    job_token: Annotated[Path | None, typer.Option("--job-token", envvar=JOB_TOKEN_ENV, hidden=True)] = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder folder or Hub name (default: all-MiniLM-L6-v2).")] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            help="Most fine-tuning epochs (early stopping may end sooner); 0, the default: the encoder stays frozen."
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Encoder learning rate.")] = None,
    head_learning_rate: Annotated[float | None, typer.Option(help="Learning rate of the heads.")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Epochs without a better validation loss before stopping (0: never).")
    ] = None,
    class_weights: Annotated[
        bool | None, typer.Option("--class-weights/--no-class-weights", help="Inverse-frequency class weights.")
    ] = None,
    target_encoding: Annotated[
        str | None,
        typer.Option(
            help="pair: one (target, text) pass per target; late: one pass per text, per-target attention; "
            "auto (default): late when rows are labelled for 2+ targets each."
        ),
    ] = None,
    probe_epochs: Annotated[
        int | None,
        typer.Option(min=0, help="Epochs fitting the heads on the frozen encoder before fine-tuning (0: off)."),
    ] = None,
    cpu_budget_tokens: Annotated[
        int | None,
        typer.Option(min=0, help="On CPU, fewer epochs (at least 1) past this many encoder tokens (0: no budget)."),
    ] = None,
    ngram_weight: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Weight of the n-gram heads in the served probabilities (0: the encoder alone)."
        ),
    ] = None,
    ngram_min_ticks: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Ticked rows a multi-choice label needs for an n-gram head of its own (fewer: the embedding heads "
            "answer it).",
        ),
    ] = None,
    embedding_weight: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Weight of the sentence-embedding heads in the served probabilities (0: none). The encoder's own "
            "heads get 1 - ngram-weight - embedding-weight.",
        ),
    ] = None,
    prior_weight: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Weight of the cold start's answers among the companion heads' features; they also answer the "
            "questions and multi-choice labels no head could learn yet (0: neither).",
        ),
    ] = None,
    tune_thresholds: Annotated[
        bool | None,
        typer.Option(
            "--tune-thresholds/--no-tune-thresholds",
            help="Per multi-choice dimension, the decision threshold that maximises validation micro-F1 (else 0.5).",
        ),
    ] = None,
    threshold_min_examples: Annotated[
        int | None,
        typer.Option(min=1, help="Labelled validation rows a dimension needs to tune its threshold (fewer: 0.5)."),
    ] = None,
    refit_heads: Annotated[
        bool | None,
        typer.Option(
            "--refit-heads/--no-refit-heads",
            help="After scoring, refit the n-gram and embedding heads on all accepted rows for serving.",
        ),
    ] = None,
    onnx: Annotated[
        bool | None,
        typer.Option(
            "--onnx/--no-onnx",
            help="Export to ONNX int8; it serves if within 0.5 points of torch on the test split.",
        ),
    ] = None,
    group_by_length: Annotated[
        bool | None,
        typer.Option(
            "--group-by-length/--no-group-by-length",
            help="Batch texts of similar length: faster steps, lower scores measured.",
        ),
    ] = None,
    freeze_layers: Annotated[
        int | None, typer.Option(help="Freeze the embeddings and this many lower encoder layers (faster steps).")
    ] = None,
    mixed_precision: Annotated[str | None, typer.Option(help="auto, no, bf16 or fp16.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per encoder pass.")] = None,
    classifier_dropout: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Dropout before the heads (0: runs on N processes match one process)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (splits, initialisation, order).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Fine-tune on accepted annotations, register a new version and promote it if it is not worse."""
    from training.training_args import TrainingArguments

    overrides = {
        "encoder": encoder,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "head_learning_rate": head_learning_rate,
        "early_stopping_patience": patience,
        "class_weights": class_weights,
        "target_encoding": target_encoding,
        "probe_epochs": probe_epochs,
        "cpu_budget_tokens": cpu_budget_tokens,
        "ngram_weight": ngram_weight,
        "ngram_min_ticks": ngram_min_ticks,
        "embedding_weight": embedding_weight,
        "prior_weight": prior_weight,
        "tune_thresholds": tune_thresholds,
        "threshold_min_examples": threshold_min_examples,
        "refit_heads": refit_heads,
        "onnx": onnx,
        "group_by_length": group_by_length,
        "freeze_layers": freeze_layers,
        "mixed_precision": mixed_precision,
        "max_length": max_length,
        "classifier_dropout": classifier_dropout,
        "seed": seed,
        "device": device,
        "threads": threads,
    }
    try:
        args = TrainingArguments(**{k: v for k, v in overrides.items() if v is not None}, progress=not quiet)
    except ValueError as error:
        raise CommandError(str(error)) from None
    from studio.source import load_tasks

    # With --from-export, --project names the registry only (the tasks come from the file).
    loaded = load_tasks(from_export, ls_url, None if from_export is not None else project, api_key)
    code = train_command(
        loaded.tasks,
        project=project,
        source=loaded.source,
        schema_path=schema,
        models_dir=models,
        if_new_data=if_new_data,
        promote=promote,
        force=force,
        args=args,
        keep_versions=keep_versions,
        skipped_exit_code=skipped_exit_code,
        job_token=job_token,
        rival=ctx.obj.rival if instant_rival and isinstance(ctx.obj, TrainingHooks) else None,
    )
    raise typer.Exit(code)


def evaluate(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="Label Studio JSON export, or JSON lines of dataset rows.")],
    model: Annotated[
        str | None, typer.Option("--model", help="A version, 'current', or a model folder (not with --cv).")
    ] = None,
    cv: Annotated[
        int | None,
        typer.Option(
            "--cv",
            metavar="K",
            help="Cross-validate instead: K folds (grouped, stratified) x --seeds, the fine-tuned model and the "
            "baselines on the same folds; mean +- sd.",
        ),
    ] = None,
    seeds: Annotated[str, typer.Option(help="With --cv: comma-separated seeds (folds and training).")] = "42,7,13",
    fine_tune: Annotated[
        bool, typer.Option("--fine-tune/--no-fine-tune", help="With --cv: include the fine-tuned model (slow).")
    ] = True,
    schema: SchemaOption = None,
    models: ModelsOption = DEFAULT_MODELS_DIR,
    project: RegistryProjectOption = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write report.json and PNG plots here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate a model on labelled data (macro-F1, stance F_avg, multi-label and span F1, calibration error), or
    cross-validate the training recipe on it with --cv K."""
    if cv is not None:
        if model is not None:
            raise CommandError("--model and --cv do not go together: --cv trains a model per fold")
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise CommandError(f"--seeds must be comma-separated integers (got {seeds!r})") from None
        hooks = ctx.obj if isinstance(ctx.obj, TrainingHooks) else TrainingHooks()
        json_path = out_dir / "cv.json" if out_dir is not None else None
        code = cv_command(
            data,
            folds=cv,
            seeds=seed_list,
            schema_path=schema,
            fine_tune=fine_tune,
            rivals=hooks.cv_rivals,
            json_path=json_path,
            as_json=as_json,
        )
        raise typer.Exit(code)
    if model is None:
        raise CommandError("give --model (a version, 'current' or a folder) to evaluate, or --cv K to cross-validate")
    raise typer.Exit(
        evaluate_command(
            model, data, schema_path=schema, models_dir=models, out_dir=out_dir, as_json=as_json, project=project
        )
    )


models_app = typer.Typer(no_args_is_help=True, help="The model registry: list versions, promote, roll back.")


@models_app.command("list")
def models_list(
    models: ModelsOption = DEFAULT_MODELS_DIR,
    project: RegistryProjectOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List model versions per project (current, previous, candidates) with test scores and the gate's interval."""
    raise typer.Exit(models_list_command(models, as_json, project))


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="The version to serve.")],
    models: ModelsOption = DEFAULT_MODELS_DIR,
    project: RegistryProjectOption = None,
    force: Annotated[bool, typer.Option("--force", help="Skip the comparison with the current model.")] = False,
    schema: SchemaOption = None,
) -> None:
    """Serve VERSION for its project if its labels fit the schema and the gate finds it not worse than what serves
    on the same held-out examples."""
    raise typer.Exit(models_promote_command(version, models, force, schema, project))


@models_app.command("rollback")
def models_rollback(models: ModelsOption = DEFAULT_MODELS_DIR, project: RegistryProjectOption = None) -> None:
    """Serve a project's previously promoted version again."""
    raise typer.Exit(models_rollback_command(models, project))


@dataclass(frozen=True)
class TrainingHooks:
    """What the app that runs these commands plugs in, as its context object (`typer.Typer(context_settings=
    {"obj": TrainingHooks(...)})`): `rival`, the gate's rival for `train --instant-rival` (see
    training.pipeline.GateRival; None: the gate compares with the promoted model only); `cv_rivals`, a
    training.crossval.Method answering for the rungs before fine-tuning in `evaluate --cv` (None: left out)."""

    rival: GateRival | None = None
    cv_rivals: Any = None


def register(app: typer.Typer) -> None:
    """Add `train`, `evaluate` and `models` to a typer app (the `workbench` command)."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.add_typer(models_app, name="models")


def build_app(hooks: TrainingHooks | None = None) -> typer.Typer:
    """A stand-alone app with the training commands (`python -m training`; the backend's jobs pass `hooks`)."""
    app = typer.Typer(
        no_args_is_help=True,
        help="Train, evaluate and manage models.",
        pretty_exceptions_enable=False,
        context_settings={"obj": hooks or TrainingHooks()},
    )
    register(app)
    return app


def main(args: Sequence[str] | None = None, hooks: TrainingHooks | None = None) -> None:
    """Run the stand-alone app on `args` (default: the command line); user-fixable errors become one line on stderr
    and exit code 1."""
    import sys

    try:
        build_app(hooks)(args=None if args is None else list(args))
    except WorkbenchError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
