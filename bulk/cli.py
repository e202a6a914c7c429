"""`workbench predict` (typer). Wire into the main app with `register(app)`; the job imports Ray only when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from studio.options import ApiKeyOption, ProjectOption, SchemaOption

out = Console(highlight=False, soft_wrap=True)

# The Label Studio of --project: read from (no SOURCE) or written into (--to-label-studio). No envvar on the
# option itself: studio/source.py's rule, an explicit SOURCE wins over $LABEL_STUDIO_URL (the job reads it).
LsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--ls-url",
        help="Label Studio of --project: its tasks are the input when no SOURCE is given, and --to-label-studio "
        "writes there (default: $LABEL_STUDIO_URL).",
        show_default=False,
    ),
]


def predict(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Output folder of Parquet parts; run again with the same --out to resume.")
    ],
    source: Annotated[
        Path | None,
        typer.Argument(
            help="JSON lines, Parquet, a Hugging Face dataset folder (save_to_disk) or a Label Studio JSON export; "
            "omit it to predict the tasks of --project.",
            show_default=False,
        ),
    ] = None,
    ls_url: LsUrlOption = None,
    project: ProjectOption = None,
    api_key: ApiKeyOption = "",
    to_label_studio: Annotated[
        bool,
        typer.Option(
            "--to-label-studio",
            help="Also write the predictions into --project (tasks matched by key; tasks that already hold this "
            "model version are skipped).",
        ),
    ] = False,
    schema: SchemaOption = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models",
            "--models-dir",
            envvar="WORKBENCH_MODELS_DIR",
            help="Model registry folder: the promoted model of --project (else of data naming no project) runs, as "
            "the backend serves it (default: models).",
            show_default=False,
        ),
    ] = None,
    cold_start: Annotated[
        bool, typer.Option("--cold-start", help="Run the cold start even when a trained model is promoted.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            envvar="RAY_ADDRESS",
            help="Ray cluster to run on (e.g. ray://head:10001, or auto); default: a local Ray on this machine.",
            show_default=False,
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            "--actors", help="Model actors (default: one per core, i.e. CPUs / --cpus-per-actor).", show_default=False
        ),
    ] = None,
    cpus_per_actor: Annotated[
        int, typer.Option("--cpus-per-actor", help="CPUs, and so inference threads, of each actor.")
    ] = 1,
    gpus_per_actor: Annotated[
        float,
        typer.Option(
            "--gpus-per-actor",
            help="GPUs of each actor (e.g. 1, or 0.5 to share one between two); 0: CPUs only. A trained model then "
            "runs torch on the actor's GPU; the cold start stays on CPU.",
        ),
    ] = 0.0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Tasks per actor call and per Parquet part (the most a crash loses).")
    ] = 64,
    ls_batch_size: Annotated[int, typer.Option("--ls-batch-size", help="Predictions per Label Studio request.")] = 100,
) -> None:
    """Pre-annotate an archive in bulk on Ray Data: Parquet out (and Label Studio predictions); resumable."""
    from bulk.job import PredictOptions, run_predict

    run_predict(
        PredictOptions(
            out=out_dir,
            source=source,
            ls_url=ls_url,
            project=project,
            api_key=api_key,
            to_label_studio=to_label_studio,
            schema_path=schema,
            models_dir=models_dir,
            cold_start=cold_start,
            ray_address=ray_address,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            batch_size=batch_size,
            ls_batch_size=ls_batch_size,
        ),
        echo=lambda line: out.print(line, markup=False),
    )


def register(app: typer.Typer) -> None:
    """Add `predict` to a typer app (the `workbench` command)."""
    app.command("predict")(predict)
