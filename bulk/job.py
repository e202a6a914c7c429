"""The `workbench predict` batch job: rows in, the served model on a pool of Ray actors, Parquet (and Label Studio)
out, resumable.

The driver reads which task keys the output folder already holds for the model version, starts (or joins) Ray,
and streams the rows through `map_batches` with an actor pool (bulk/actor.py: one model per actor). Results come
back one batch at a time; the driver writes each as an atomic Parquet part (and, with --to-label-studio, writes
its predictions into the project first). So a crash or Ctrl-C loses only the batches in flight, and a rerun
predicts only keys that no part holds yet. Ray is imported here, inside the job, never by the backend or `--help`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation_config.errors import CommandError
from annotation_config.schema import Schema, load_schema
from bulk.model import ModelChoice, choose_model, settings_for
from bulk.output import OutputFolder
from bulk.table import PROBLEM, output_columns, to_table

DEFAULT_BATCH_SIZE = 64
# Test hook: seconds the driver waits after each part (so a test can kill a run mid-way); never set it otherwise.
PART_DELAY_ENV = "WORKBENCH_PREDICT_PART_DELAY"


@dataclass
class PredictOptions:
    """What to predict, with which model, where to write (the CLI's options; see bulk/cli.py)."""

    out: Path
    source: Path | None = None
    ls_url: str | None = None
    project: int | None = None
    api_key: str = ""
    to_label_studio: bool = False
    schema_path: Path | None = None
    models_dir: Path | None = None
    cold_start: bool = False
    ray_address: str | None = None
    actors: int | None = None
    cpus_per_actor: int = 1
    gpus_per_actor: float = 0.0  # Ray gives each actor its share of a GPU (CUDA_VISIBLE_DEVICES): torch runs there
    batch_size: int = DEFAULT_BATCH_SIZE
    ls_batch_size: int = 100


@dataclass
class PredictResult:
    """What a run did; `rate` is paragraphs/s over the prediction phase (actors up to the last part)."""

    model_version: str
    model: str
    rows: int | None
    predicted: int = 0
    already_done: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    parts: int = 0
    actors: int = 0
    seconds: float = 0.0
    ls_written: int = 0
    ls_already: int = 0
    ls_missing: list[str] = field(default_factory=list)

    first_batch: float | None = None  # seconds until the first batch came back (actors loading their model)
    first_rows: int = 0

    @property
    def rate(self) -> float:
        """Paragraphs predicted per second, over the whole run (the actors' start included)."""
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        """Paragraphs per second once the models were loaded: after the first batch came back."""
        if self.first_batch is None or self.seconds <= self.first_batch or self.predicted <= self.first_rows:
            return self.rate  # one batch in all: nothing came back after the models were loaded
        return (self.predicted - self.first_rows) / (self.seconds - self.first_batch)


def local_cpus() -> int:
    """CPUs this process may use (its affinity mask), the local Ray's size."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check(options: PredictOptions) -> None:
    for name, value in (
        ("--batch-size", options.batch_size),
        ("--cpus-per-actor", options.cpus_per_actor),
        ("--ls-batch-size", options.ls_batch_size),
    ):
        if value < 1:
            raise CommandError(f"{name} must be at least 1, got {value}")
    if options.gpus_per_actor < 0:
        raise CommandError(f"--gpus-per-actor must be 0 or more, got {options.gpus_per_actor}")
    if options.actors is not None and options.actors < 1:
        raise CommandError(f"--actors must be at least 1, got {options.actors}")


def run_predict(
    options: PredictOptions, echo: Callable[[str], None] = print, *, progress: bool = True
) -> PredictResult:
    """Run the job (see the module docstring); returns what it did. Raises WorkbenchError for anything the user
    can fix. Joins an already initialised Ray (e.g. a benchmark's), else starts one and shuts it down after."""
    from bulk.sources import probe_path, resolve_source

    _check(options)
    ls_url = resolve_source(options.source, options.ls_url, options.project, options.to_label_studio)
    schema = load_schema(options.schema_path)
    output_columns(schema)
    found = probe_path(options.source, schema) if options.source is not None else None
    settings = settings_for(options.models_dir, options.cpus_per_actor)
    choice = choose_model(settings, schema, cold_start=options.cold_start, project=options.project)
    echo(f"model: {choice.describe()}")
    folder = OutputFolder.open(options.out, schema, choice.version)
    try:
        return _run(options, found, ls_url, schema, settings, choice, folder, echo, progress)
    finally:
        folder.close()


def _run(
    options: PredictOptions,
    found: Any,
    ls_url: str | None,
    schema: Schema,
    settings: Any,
    choice: ModelChoice,
    folder: OutputFolder,
    echo: Callable[[str], None],
    progress: bool,
) -> PredictResult:
    from bulk.project import ProjectWriter, project_tasks
    from bulk.sources import Source, from_rows, project_rows, read_probe

    if folder.done:
        echo(f"resuming: {options.out} holds {len(folder.done)} tasks of {choice.version} already")
    if folder.other_versions:
        versions = ", ".join(f"{v} ({n})" for v, n in folder.other_versions.most_common(3))
        echo(f"note: {options.out} also holds rows of other model versions: {versions}; filter on model_version")
    writer = None
    tasks: dict[str, Any] = {}
    if ls_url is not None:
        from studio.provision import connect

        client = connect(ls_url, options.api_key)
        assert options.project is not None
        tasks = project_tasks(client, options.project, schema)
        echo(f"project {options.project}: {len(tasks)} tasks")
        if options.to_label_studio:
            writer = ProjectWriter(
                client, options.project, schema, choice.version, tasks, batch_size=options.ls_batch_size
            )
            # rows a previous run stored before Label Studio got them (or a run without --to-label-studio)
            backlog = {key for key in folder.done if writer.needs(key)}
            if backlog:
                writer.write(folder.read_rows(backlog))
                echo(f"wrote {writer.written} predictions already in {options.out} into project {options.project}")
    import ray

    started = False
    if not ray.is_initialized():
        # Ray notes on stderr that it turned token authentication on for the cluster it starts: secure, the default,
        # and nothing to act on (setting RAY_AUTH_MODE=token ourselves instead broke the local cluster's start)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(
            address=options.ray_address,
            # one logical CPU more than the cores: the actors take the cores, the light read tasks get the rest
            # (without it Ray Data waits forever for a CPU to read the input with)
            num_cpus=None if options.ray_address else local_cpus() + 1,
            include_dashboard=False,
            configure_logging=True,
            logging_level="warning",
            log_to_driver=True,
        )
        started = True
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)  # not "execution finished" after every stage
    # ours shows progress instead: not a warning that Ray Data's bars are off
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours below shows paragraphs/s and the ETA over the whole input
        context.print_on_execution_start = False
        if found is not None:
            source = read_probe(found, schema, options.batch_size)
        else:
            rows = project_rows(tasks, folder.done)
            source = Source(from_rows(rows, options.batch_size), len(tasks), f"Label Studio project {options.project}")
        actors = options.actors or _default_actors(options)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if actors * options.gpus_per_actor > gpus:  # Ray would wait forever for GPUs it does not have
            raise CommandError(
                f"{actors} actors x {options.gpus_per_actor:g} GPU need {actors * options.gpus_per_actor:g} GPUs and "
                f"this Ray has {gpus:g}: pass fewer --actors or --gpus-per-actor 0"
            )
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if not options.ray_address and actors * options.cpus_per_actor >= cpus:
            raise CommandError(
                f"{actors} actors x {options.cpus_per_actor} CPU take all {cpus} CPUs of this Ray and leave none to "
                f"read the input with: pass --actors {max(1, (cpus - 1) // options.cpus_per_actor)} or fewer"
            )
        echo(
            f"input: {source.label} ({source.rows if source.rows is not None else 'unknown'} rows); "
            f"{actors} actor{'s' if actors > 1 else ''} x {options.cpus_per_actor} CPU"
            f"{f' + {options.gpus_per_actor:g} GPU' if options.gpus_per_actor else ''}, batches of {options.batch_size}"
        )
        result = PredictResult(choice.version, choice.describe(), source.rows, actors=actors)
        result.already_done = len(folder.done)
        from bulk.actor import BatchPredictor

        mapped = source.dataset.repartition(target_num_rows_per_block=options.batch_size).map_batches(
            BatchPredictor,
            fn_constructor_kwargs={"choice": choice, "settings": settings, "schema": schema, "done": set(folder.done)},
            batch_size=options.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
            zero_copy_batch=True,
        )
        _consume(mapped, options, schema, folder, writer, result, echo, progress)
    finally:
        if started:
            ray.shutdown()
    if writer is not None:
        result.ls_written, result.ls_already, result.ls_missing = writer.written, writer.already, writer.missing
    _summary(result, options, echo)
    return result


def _default_actors(options: PredictOptions) -> int:
    """One actor per core: the local cores over the CPUs each actor takes (the local Ray has one logical CPU more,
    for reading); on a cluster, its CPUs less one, since reading the input needs a CPU that the actors leave free."""
    import ray

    if options.gpus_per_actor > 0:  # one actor per GPU share: the GPUs, not the cores, set the pace
        return max(1, int(float(ray.cluster_resources().get("GPU", 0)) // options.gpus_per_actor))
    if not options.ray_address:
        return max(1, local_cpus() // options.cpus_per_actor)
    return max(1, (int(ray.cluster_resources().get("CPU", 1)) - 1) // options.cpus_per_actor)


def _consume(
    mapped: Any,
    options: PredictOptions,
    schema: Schema,
    folder: OutputFolder,
    writer: Any,
    result: PredictResult,
    echo: Callable[[str], None],
    progress: bool,
) -> None:
    """Stream the actors' batches back: problems counted, duplicates dropped, Label Studio first, then the part."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    delay = float(os.environ.get(PART_DELAY_ENV) or 0)
    key = schema.data.key
    total = None if result.rows is None else max(0, result.rows - result.already_done)
    bar = Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} paragraphs/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
        transient=False,
    )
    started = time.monotonic()
    with bar:
        task = bar.add_task("predict", total=total, rate=0.0)
        try:
            for batch in mapped.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                rows = batch.to_pylist()
                good, seen = [], set()
                for row in rows:
                    if row.get(PROBLEM):
                        result.problems.append(f"{row[key]}: {row[PROBLEM]}")
                    elif row[key] in folder.done or row[key] in seen:
                        result.duplicates += 1
                    else:
                        row.pop(PROBLEM, None)
                        good.append(row)
                        seen.add(row[key])
                if good:
                    if writer is not None:
                        writer.place(good)
                        writer.write(good)
                    folder.write(to_table(schema, good))
                    result.predicted += len(good)
                    result.parts = folder.parts_written
                result.seconds = time.monotonic() - started
                if result.first_batch is None and result.predicted:
                    result.first_batch, result.first_rows = result.seconds, result.predicted
                bar.update(task, advance=len(rows), rate=result.rate)
                if delay:
                    time.sleep(delay)
        except KeyboardInterrupt:
            echo(f"interrupted: {result.predicted} tasks written to {options.out}; run the same command to resume")
            raise
    result.seconds = time.monotonic() - started


def _summary(result: PredictResult, options: PredictOptions, echo: Callable[[str], None]) -> None:
    echo(
        f"predicted {result.predicted} tasks in {result.seconds:.1f} s: {result.rate:.1f} paragraphs/s "
        f"({result.steady_rate:.1f} once loaded, {result.actors} actor{'s' if result.actors > 1 else ''}) "
        f"with {result.model_version}; "
        f"{result.already_done} were already in {options.out}; wrote {result.parts} parts"
    )
    if result.duplicates:
        echo(f"skipped {result.duplicates} rows whose task key came earlier (one row per key)")
    if result.problems:
        shown = "; ".join(result.problems[:5]) + (" ..." if len(result.problems) > 5 else "")
        echo(f"{len(result.problems)} rows not predicted: {shown}")
    if options.to_label_studio:
        echo(
            f"Label Studio project {options.project}: wrote {result.ls_written} predictions, "
            f"{result.ls_already} tasks already had {result.model_version}"
        )
        if result.ls_missing:
            shown = ", ".join(result.ls_missing[:5]) + (" ..." if len(result.ls_missing) > 5 else "")
            echo(
                f"{len(result.ls_missing)} predicted rows have no task in project {options.project} (keys {shown}): "
                f"they are in {options.out} only; import them first (`workbench import SOURCE --project "
                f"{options.project}`) and run again, or check the {options.schema_path or 'schema'}'s key field"
            )
