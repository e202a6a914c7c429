"""`workbench` subcommands. Heavy imports happen inside commands so `workbench --help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from annotation_config.errors import WorkbenchError
from bulk import cli as bulk_cli
from exchange import cli as exchange_cli
from studio.options import ApiKeyOption, SchemaOption, TargetUrlOption
from training import cli as training_cli
from workbench.services import ServiceError


def _instant_rival(*args):
    """The backend's instant learner as the gate's rival of `workbench train` (imported only when a run needs it)."""
    from backend.instant_rival import instant_rival_report

    return instant_rival_report(*args)


def _rung_answers(*args):
    """The cold start and instant learner as rivals in `workbench evaluate --cv` (imported only when run)."""
    from backend.instant_rival import rung_answers

    return rung_answers(*args)


app = typer.Typer(
    no_args_is_help=True,
    help="Annotate stance and framing in news text in Label Studio, with a model in the loop.",
    pretty_exceptions_enable=False,
    context_settings={"obj": training_cli.TrainingHooks(rival=_instant_rival, cv_rivals=_rung_answers)},
)
config_app = typer.Typer(no_args_is_help=True, help="The Label Studio labeling config generated from the schema.")
data_app = typer.Typer(no_args_is_help=True, help="The sample corpus of paragraph tasks.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
training_cli.register(app)  # train, evaluate, models list|promote|rollback
exchange_cli.register(app)  # export, import, agreement
bulk_cli.register(app)  # predict (bulk pre-annotation on Ray Data)

err = Console(stderr=True)


def _schema(path: Path | None):
    from annotation_config.schema import load_schema

    return load_schema(path)


@config_app.command("render")
def config_render(schema: SchemaOption = None) -> None:
    """Print the Label Studio XML generated from the schema."""
    from annotation_config.label_config import render_label_config

    sys.stdout.write(render_label_config(_schema(schema)))


@config_app.command("validate")
def config_validate(schema: SchemaOption = None) -> None:
    """Check the schema and parse the generated XML with label-studio-sdk's own parser."""
    from annotation_config.label_config import render_label_config, validate_label_config

    loaded = _schema(schema)
    validate_label_config(render_label_config(loaded), loaded)
    kinds = ", ".join(f"{d.name} ({d.kind}, {len(d.labels)} labels)" for d in loaded.dimensions)
    typer.echo(f"ok: {schema or 'sample schema'} (hash {loaded.hash}): {kinds}")


@data_app.command("build")
def data_build(
    articles: Annotated[Path | None, typer.Option(help="Folder of article .txt files.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output JSON-lines file.")] = None,
) -> None:
    """Split the seed articles into paragraph tasks (JSON lines)."""
    from annotation_config import corpus

    tasks = corpus.build_tasks(articles or corpus.DEFAULT_ARTICLES_DIR)
    target = out or corpus.DEFAULT_TASKS_FILE
    corpus.write_tasks(tasks, target)
    typer.echo(f"wrote {len(tasks)} tasks to {target}")


@app.command()
def provision(
    ls_url: TargetUrlOption = "http://localhost:8080",
    api_key: ApiKeyOption = "",
    title: Annotated[str | None, typer.Option(help="Project title (default: from the schema).")] = None,
    schema: SchemaOption = None,
    tasks: Annotated[Path | None, typer.Option(help="JSON-lines task file (default: the sample corpus).")] = None,
) -> None:
    """Create or update the Label Studio project and import tasks not there yet (idempotent)."""
    from studio.provision import DEFAULT_TASKS_PATH, connect, read_tasks
    from studio.provision import provision as run_provision

    loaded = _schema(schema)
    records = read_tasks(tasks or DEFAULT_TASKS_PATH, loaded)
    client = connect(ls_url, api_key)
    result = run_provision(client, loaded, records, title or loaded.name, ls_url)
    state = "created" if result.created else ("config updated" if result.config_updated else "reused")
    typer.echo(
        f"project {result.project_id} ({state}): imported {result.imported} tasks, "
        f"skipped {result.skipped} already there"
    )
    typer.echo(result.url)


InsecureNoAuthOption = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Listen off loopback without basic auth (a warning at start); otherwise that refuses to start.",
    ),
]


def _refuse_open_door(settings) -> None:
    """Stop with one line when the settings would open the backend off loopback (the rule: Settings)."""
    problem = settings.exposure_problem()
    if problem:
        raise WorkbenchError(problem)


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="WORKBENCH_HOST", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="WORKBENCH_PORT", help="Port to listen on.")] = 9090,
    models: Annotated[
        Path | None, typer.Option("--models", envvar="WORKBENCH_MODELS_DIR", help="Model registry folder.")
    ] = None,
    schema: SchemaOption = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (each loads the model).")] = 1,
    insecure_no_auth: InsecureNoAuthOption = False,
) -> None:
    """Run the ML backend (Label Studio connects to it at http://HOST:PORT)."""
    import os

    import uvicorn

    from backend.settings import Settings

    overrides = {
        "models_dir": models,
        "schema_path": schema,
        "host": host,
        "insecure_no_auth": insecure_no_auth or None,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})  # a bad setting stops us here
    _refuse_open_door(settings)
    _schema(settings.schema_path)  # fail here, with one line, rather than inside a worker
    # Workers are separate processes that rebuild the app from the environment.
    os.environ["WORKBENCH_MODELS_DIR"] = str(settings.models_dir)
    os.environ["WORKBENCH_HOST"] = host
    if settings.insecure_no_auth:
        os.environ["WORKBENCH_INSECURE_NO_AUTH"] = "true"
    if settings.schema_path:
        os.environ["WORKBENCH_SCHEMA"] = str(settings.schema_path)
    from workbench.services import port_is_free

    if not port_is_free(host, port):
        raise ServiceError(f"port {port} on {host} is in use: stop what listens there or pass --port")
    uvicorn.run("backend.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


@app.command()
def up(
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir", envvar="WORKBENCH_STATE_DIR", help="Where Label Studio data, models and logs live."
        ),
    ] = Path(".workbench"),
    host: Annotated[str, typer.Option(help="Interface both servers listen on.")] = "127.0.0.1",
    ls_port: Annotated[int, typer.Option(envvar="WORKBENCH_LS_PORT", help="Label Studio port.")] = 8080,
    backend_port: Annotated[int, typer.Option(envvar="WORKBENCH_PORT", help="ML backend port.")] = 9090,
    ls_url: Annotated[
        str | None,
        typer.Option("--ls-url", envvar="LABEL_STUDIO_URL", help="Use this Label Studio instead of starting one."),
    ] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="LABEL_STUDIO_API_KEY", show_default=False)] = None,
    backend_url: Annotated[
        str | None, typer.Option(envvar="WORKBENCH_BACKEND_URL", help="URL Label Studio uses to reach the backend.")
    ] = None,
    schema: SchemaOption = None,
    tasks: Annotated[Path | None, typer.Option(help="JSON-lines task file (default: the sample corpus).")] = None,
    title: Annotated[str | None, typer.Option(help="Project title (default: from the schema).")] = None,
    insecure_no_auth: InsecureNoAuthOption = False,
) -> None:
    """Start Label Studio and the ML backend, provision and pre-annotate the sample project; Ctrl-C stops both."""
    from backend.settings import Settings
    from workbench.up import UpOptions, backend_allowed_hosts, run_up

    # The backend's settings, checked before anything starts (half a basic-auth configuration, an open door).
    settings = Settings()
    overrides = {"host": host, "allowed_hosts": backend_allowed_hosts(settings, backend_url)}
    if insecure_no_auth:
        overrides["insecure_no_auth"] = True
    _refuse_open_door(settings.model_copy(update=overrides))
    if ls_url and not api_key:
        raise WorkbenchError("--ls-url needs --api-key (or LABEL_STUDIO_API_KEY) for that Label Studio")
    run_up(
        UpOptions(
            state_dir=state_dir.resolve(),
            host=host,
            ls_port=ls_port,
            backend_port=backend_port,
            ls_url=ls_url,
            api_key=api_key,
            backend_url=backend_url,
            schema=schema,
            tasks=tasks,
            title=title,
            insecure_no_auth=insecure_no_auth,
        )
    )


def settings_problem(error: ValidationError) -> str:
    """One line naming each environment variable at fault, e.g. "WORKBENCH_RUNTIME: Input should be ... (got 'x')"."""
    parts = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem.get("loc", ()))
        name = f"WORKBENCH_{field.upper()}" if field else "settings"
        got = f" (got {problem['input']!r})" if field and "input" in problem else ""
        parts.append(f"{name}: {problem['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(parts)


def main(args: list[str] | None = None) -> None:
    """Entry point: run the app on `args` (default: the command line) and turn user-fixable errors into one line on
    stderr and exit code 1."""
    try:
        app(args=args, prog_name="workbench")
    except WorkbenchError as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except ValidationError as error:  # settings from WORKBENCH_* environment variables
        err.print(f"[bold red]error:[/] {settings_problem(error)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
