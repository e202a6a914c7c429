"""`workbench export`, `workbench import` and `workbench agreement` (typer; heavy imports inside the commands).

Wire into the main app with `register(app)`. The plain functions (`export_command`, `import_command`,
`agreement_command`) do the work and return an exit code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from annotation_config.errors import CommandError
from studio.options import (
    ApiKeyOption,
    FromExportOption,
    ProjectOption,
    SchemaOption,
    SourceUrlOption,
    TargetUrlOption,
)
from training.model_card import format_value

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class ImportAs(StrEnum):
    """What imported labels become in Label Studio."""

    annotations = "annotations"
    predictions = "predictions"


class Annotators(StrEnum):
    """Whom imported annotations belong to."""

    self = "self"
    users = "users"


def _read_folder(schema: Any) -> Any:
    """A reader of dataset folders (their raw configuration) as Label Studio tasks, for studio.source.load_tasks."""

    def read(folder: Path) -> list[dict]:
        from exchange.importer import as_label_studio_tasks, read_file

        parsed = read_file(folder, schema, "raw")
        if parsed.rejected:
            raise CommandError(
                f"{folder}: {len(parsed.rejected)} rows do not fit the schema, e.g. {parsed.rejected[0]}"
            )
        return as_label_studio_tasks(parsed, schema)

    return read


# ---- export ----


def export_command(
    out_dir: Path,
    *,
    tasks: list[dict],
    source: str,
    schema_path: Path | None = None,
    salt: str | None = None,
    seed: int = 42,
    push: str | None = None,
    private: bool = True,
) -> int:
    """Write the dataset folder (and push it, to a private repo unless `private` is False); print what was written."""
    from annotation_config.schema import load_schema
    from exchange.dataset import export_dataset, push_folder
    from training.training_args import TrainingArguments

    schema = load_schema(schema_path)
    folder, bundle = export_dataset(
        tasks, schema, out_dir, salt=salt, seed=seed, ratios=TrainingArguments().split_ratios, source=source
    )
    sizes = ", ".join(f"{name} {n}" for name, n in bundle.split_sizes.items())
    out.print(f"wrote {folder}: aggregated ({sizes}), raw ({len(bundle.raw['train'])} annotations)")
    out.print(bundle.accepted.summary())
    if bundle.salt_source == "random":
        out.print("annotator pseudonyms use a random salt (pass --salt or WORKBENCH_EXPORT_SALT to link exports)")
    if push:
        # The raw configuration holds per-annotator timestamps: nobody should publish it by forgetting a flag.
        visibility = "private" if private else "public"
        out.print(f"pushing to {push}: a new repo is {visibility} (an existing repo keeps its visibility)")
        url = push_folder(folder, push, private=private)
        out.print(f"pushed to {push}: {url}")
    return 0


def export(
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset folder to write (replaced only when complete).")],
    push: Annotated[
        str | None, typer.Option("--push", help="Also upload to this Hub dataset repo (one commit).")
    ] = None,
    public: Annotated[
        bool,
        typer.Option(
            "--public/--private",
            help="Visibility of a Hub repo that --push creates (private by default; an existing repo keeps its own).",
        ),
    ] = False,
    ls_url: SourceUrlOption = None,
    project: ProjectOption = None,
    api_key: ApiKeyOption = "",
    from_export: FromExportOption = None,
    schema: SchemaOption = None,
    salt: Annotated[
        str | None,
        typer.Option(
            "--salt",
            envvar="WORKBENCH_EXPORT_SALT",
            help="Salt for annotator pseudonyms (default: random, not kept).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Split seed (the training default gives the training splits).")] = 42,
) -> None:
    """Export accepted labels (aggregated) and every annotation (raw) as a Hugging Face dataset folder."""
    from annotation_config.schema import load_schema
    from studio.source import load_tasks

    loaded = load_tasks(from_export, ls_url, project, api_key, read_folder=_read_folder(load_schema(schema)))
    raise typer.Exit(
        export_command(
            out_dir,
            tasks=loaded.tasks,
            source=loaded.label,
            schema_path=schema,
            salt=salt,
            seed=seed,
            push=push,
            private=not public,
        )
    )


# ---- import ----


def import_command(
    file: Path,
    *,
    ls_url: str,
    api_key: str,
    schema_path: Path | None = None,
    as_predictions: bool = False,
    project: int | None = None,
    title: str | None = None,
    skip_invalid: bool = False,
    annotator_users: bool = False,
    config: str | None = None,
) -> int:
    """Validate the whole file, then import it (or nothing, when a row is bad and `skip_invalid` is off)."""
    from annotation_config.schema import load_schema
    from exchange.importer import ImportFileError, import_parsed, problems_text, read_file
    from studio.provision import connect

    if project is not None and title:
        raise CommandError("pass either --project ID or --title T, not both")
    schema = load_schema(schema_path)
    parsed = read_file(file, schema, config)
    for line in problems_text(parsed.rejected, file):
        err.print(f"rejected: {line}")
    for line in problems_text(parsed.duplicates, file, limit=20):
        err.print(f"skipped: {line}")
    if parsed.ignored_columns:
        err.print(f"ignored columns (not in the schema): {', '.join(parsed.ignored_columns)}")
    if parsed.derived_keys:
        err.print(f"no {schema.data.key!r} column: task keys are derived from the text")
    if parsed.rejected and not skip_invalid:
        raise ImportFileError(
            f"{file}: {len(parsed.rejected)} of {parsed.rows} rows rejected; nothing imported "
            f"(fix them, or pass --skip-invalid to import the other {len(parsed.tasks)} tasks)"
        )
    if not parsed.tasks:
        raise ImportFileError(f"{file}: no task to import ({parsed.rows} rows read)")
    people = {a.annotator for t in parsed.tasks for a in t.annotations if a.annotator}
    if people and not annotator_users and not as_predictions:
        several = sum(len({a.annotator for a in t.annotations}) > 1 for t in parsed.tasks)
        if several:
            err.print(
                f"{several} tasks carry annotations of several annotators; they are all created by the API key's "
                "user, so the acceptance policy counts only the latest (pass --annotators users to keep them apart)"
            )
    client = connect(ls_url, api_key)
    result = import_parsed(
        client,
        schema,
        parsed,
        ls_url=ls_url,
        title=title,
        project_id=project,
        as_predictions=as_predictions,
        annotator_users=annotator_users,
    )
    state = "created" if result.created else ("config updated" if result.config_updated else "reused")
    made = f"{result.predictions} predictions" if as_predictions else f"{result.annotations} annotations"
    if result.conflicts:
        err.print(
            f"skipped {len(result.conflicts)} tasks whose key the project holds with another text: "
            + ", ".join(result.conflicts[:10])
            + (" ..." if len(result.conflicts) > 10 else "")
        )
    labelled = f", labelled {result.tasks_labelled} tasks already there" if result.tasks_labelled else ""
    if result.tasks_completed:
        labelled += f", completed {result.tasks_completed} tasks an earlier import left part-labelled"
    out.print(
        f"project {result.project_id} ({state}): imported {result.tasks_imported} tasks{labelled}; created {made}; "
        f"skipped {result.tasks_skipped} tasks already there, {len(parsed.duplicates)} duplicate rows, "
        f"{len(parsed.rejected)} rejected rows"
        + (f"; created {result.users_created} annotator users" if result.users_created else "")
    )
    out.print(result.url)
    return 0


def import_(
    file: Annotated[Path, typer.Argument(help="CSV, JSON lines, Label Studio JSON export, or a dataset folder.")],
    ls_url: TargetUrlOption = "http://localhost:8080",
    api_key: ApiKeyOption = "",
    schema: SchemaOption = None,
    as_: Annotated[ImportAs, typer.Option("--as", help="Create annotations or predictions.")] = ImportAs.annotations,
    project: ProjectOption = None,
    title: Annotated[str | None, typer.Option(help="Project title (default: from the schema).")] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Import the good rows even when some are rejected.")
    ] = False,
    annotators: Annotated[
        Annotators,
        typer.Option(
            "--annotators",
            help="Who the annotations belong to: the API key's user, or one Label Studio user per annotator value.",
        ),
    ] = Annotators.self,
    config: Annotated[
        str | None, typer.Option(help="Dataset folder configuration (default: aggregated when present).")
    ] = None,
) -> None:
    """Import labelled data into a Label Studio project; rejected rows are listed and block the import."""
    raise typer.Exit(
        import_command(
            file,
            ls_url=ls_url,
            api_key=api_key,
            schema_path=schema,
            as_predictions=as_ is ImportAs.predictions,
            project=project,
            title=title,
            skip_invalid=skip_invalid,
            annotator_users=annotators is Annotators.users,
            config=config,
        )
    )


# ---- agreement ----


def agreement_command(tasks: list[dict], *, schema_path: Path | None = None, as_json: bool = False) -> int:
    """Compute and print agreement figures for Label Studio task dicts."""
    from annotation_config.schema import load_schema
    from exchange.agreement import agreement_report

    report = agreement_report(tasks, load_schema(schema_path))
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(report)
    return 0


def print_report(report: Mapping[str, Any]) -> None:
    """Rich tables: counts, agreement per dimension and label, pairs, annotators against the aggregate."""
    from rich.table import Table

    from exchange.agreement import summary_rows

    counts = report["counts"]
    out.print(", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in counts.items()))
    table = Table("dimension", "label", "units", "alpha", "mean kappa", "% agreement", title="agreement")
    for row in summary_rows(report):
        table.add_row(
            row["dimension"] if not row["label"] else "",
            row["label"],
            str(row["units"]),
            format_value(row["alpha"]),
            format_value(row["kappa_mean"]),
            format_value(row["percent_agreement"]),
        )
    out.print(table)
    pairs = Table("dimension", "annotator a", "annotator b", "n", "kappa", "agreement", title="pairwise Cohen's kappa")
    people = Table("dimension", "annotator", "n", "accuracy", "kappa", title="each annotator against the aggregate")
    for name, dim in report["dimensions"].items():
        for pair in dim.get("pairs") or []:
            pairs.add_row(
                name, pair["a"], pair["b"], str(pair["n"]), format_value(pair["kappa"]), format_value(pair["agreement"])
            )
        for who in dim["annotators"]:
            people.add_row(
                name, who["annotator"], str(who["n"]), format_value(who["accuracy"]), format_value(who["kappa"])
            )
    if pairs.row_count:
        out.print(pairs)
    if people.row_count:
        out.print(people)
    held = report["adjudication"]
    out.print(f"{len(held)} task dimensions need adjudication" + (":" if held else ""))
    for item in held[:50]:
        out.print(f"  task {item['task_id']} ({item['key']}) {item['dimension'] or 'whole task'}: {item['reason']}")
    if len(held) > 50:
        out.print(f"  ... and {len(held) - 50} more (use --json for all)")


def agreement(
    ls_url: SourceUrlOption = None,
    project: ProjectOption = None,
    api_key: ApiKeyOption = "",
    from_export: FromExportOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    schema: SchemaOption = None,
) -> None:
    """Inter-annotator agreement per dimension and label, and the tasks that need adjudication."""
    from annotation_config.schema import load_schema
    from studio.source import load_tasks

    loaded = load_tasks(from_export, ls_url, project, api_key, read_folder=_read_folder(load_schema(schema)))
    raise typer.Exit(agreement_command(loaded.tasks, schema_path=schema, as_json=as_json))


def register(app: typer.Typer) -> None:
    """Add `export`, `import` and `agreement` to a typer app (the `workbench` command)."""
    app.command("export")(export)
    app.command("import")(import_)
    app.command("agreement")(agreement)
