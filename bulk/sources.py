"""Where `workbench predict` reads its rows: a file or folder as a Ray Dataset, or the tasks of a Label Studio
project. Each is checked up front (readable, has the schema's text field) so a bad input stops with one line.

Rows are task `data` dicts keyed by the schema's fields (a Label Studio JSON export's {"id", "data"} tasks too).
Only the columns the schema knows are read, so wide archives do not travel to the actors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation_config.errors import CommandError, WorkbenchError
from annotation_config.schema import Schema
from bulk.actor import LS_DATA, LS_TASK_ID
from studio.source import LABEL_STUDIO_URL_ENV

JSON_LINES = {".jsonl", ".ndjson"}
HF_MARKERS = ("dataset_dict.json", "state.json")  # datasets' save_to_disk layout (DatasetDict, Dataset)


class SourceError(WorkbenchError):
    """An input that cannot be read; the message names it and says what to fix."""


@dataclass
class Source:
    """A Ray Dataset of input rows, how many rows it has (None: unknown) and what it is, for the user."""

    dataset: Any
    rows: int | None
    label: str


def _needed_columns(schema: Schema, available: list[str]) -> list[str]:
    wanted = [*schema.data.all_fields, *(d.field for d in schema.dimensions if d.field), "id", "data"]
    return [c for c in available if c in set(wanted)]


def _check_text(path: Path, schema: Schema, columns: list[str]) -> None:
    if schema.data.text not in columns and "data" not in columns:
        shown = ", ".join(columns[:12]) + (" ..." if len(columns) > 12 else "")
        raise SourceError(
            f"{path}: no {schema.data.text!r} column (the schema's text field); it has {shown or 'no columns'}. "
            "Rename the column, or pass the --schema whose data.text names it"
        )


def _short(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text[:300]


@dataclass
class Probe:
    """An input checked without Ray: its `kind`, files, row count (None: unknown) and columns."""

    path: Path
    kind: str  # "parquet", "jsonl", "export" or "hf"
    files: list[Path]
    rows: int | None
    columns: list[str]
    items: list[dict[str, Any]] | None = None  # a JSON export's rows, already read


def probe_path(path: Path, schema: Schema) -> Probe:
    """Check a JSON-lines, Parquet or Label Studio JSON export file, a Hugging Face dataset folder (save_to_disk)
    or a folder of Parquet or JSON-lines files: readable, and with the schema's text field (before Ray starts)."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_MARKERS):
            found = _probe_hf(path)
        elif parquet := sorted(path.rglob("*.parquet")):
            found = _probe_parquet(path, parquet)
        elif lines := sorted(p for p in path.rglob("*") if p.suffix.lower() in JSON_LINES):
            found = _probe_json_lines(path, lines)
        else:
            raise SourceError(
                f"{path}: a folder, but neither a Hugging Face dataset (save_to_disk) nor Parquet or JSON-lines files"
            )
    else:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            found = _probe_parquet(path, [path])
        elif suffix in JSON_LINES:
            found = _probe_json_lines(path, [path])
        elif suffix == ".json":
            found = _probe_export(path, schema)
        else:
            raise SourceError(
                f"{path}: unknown input format {suffix or '(no suffix)'}; give .jsonl, .parquet, .json or a folder"
            )
    _check_text(path, schema, found.columns)
    return found


def _probe_parquet(path: Path, files: list[Path]) -> Probe:
    import pyarrow.parquet as pq

    try:
        columns = list(pq.read_schema(files[0]).names)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise SourceError(f"{path}: cannot read as Parquet ({_short(error)})") from None
    return Probe(path, "parquet", files, rows, columns)


def _probe_json_lines(path: Path, files: list[Path]) -> Probe:
    rows, columns = 0, None
    try:
        for file in files:
            with open(file, "rb") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    rows += 1
                    if columns is None:
                        first = json.loads(line)
                        if not isinstance(first, dict):
                            raise ValueError(f"line {rows} is not a JSON object")
                        columns = list(first)
    except (OSError, ValueError) as error:
        raise SourceError(f"{path}: cannot read as JSON lines ({_short(error)})") from None
    return Probe(path, "jsonl", files, rows, columns or [])


def _probe_export(path: Path, schema: Schema) -> Probe:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(f"{path}: cannot read as JSON ({_short(error)}); JSON lines need the .jsonl suffix") from None
    raw = raw.get("tasks") if isinstance(raw, dict) else raw
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise SourceError(f"{path}: expected a list of tasks (a Label Studio JSON export) or JSON lines (.jsonl)")
    items, columns = [], set()
    for item in raw:
        data = item["data"] if isinstance(item.get("data"), dict) else item
        task_id = item.get("id") if data is not item else None
        columns |= set(data)
        items.append({LS_TASK_ID: task_id if isinstance(task_id, int) else None, LS_DATA: json.dumps(data)})
    return Probe(path, "export", [path], len(items), sorted(columns), items)


def _probe_hf(path: Path) -> Probe:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds
        raise SourceError(f"{path}: cannot load as a Hugging Face dataset folder ({_short(error)})") from None
    splits = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    columns = list(dict.fromkeys(c for split in splits for c in split.column_names))
    return Probe(path, "hf", [path], sum(len(s) for s in splits), columns)


def read_probe(found: Probe, schema: Schema, block_rows: int) -> Source:
    """The checked input as a Ray Dataset of its needed columns (Ray must be initialised)."""
    import ray

    keep = _needed_columns(schema, found.columns)
    if found.kind == "parquet":
        dataset = ray.data.read_parquet([str(f) for f in found.files], columns=keep)
        return Source(dataset, found.rows, f"Parquet {found.path}")
    if found.kind == "jsonl":
        dataset = ray.data.read_json([str(f) for f in found.files], lines=True, file_extensions=None)
        try:
            names = list(dataset.schema().names)  # reads the first block: a malformed file fails here
        except Exception as error:  # noqa: BLE001 - Ray wraps pandas' and pyarrow's parse errors
            raise SourceError(f"{found.path}: cannot read as JSON lines ({_short(error)})") from None
        return Source(dataset.select_columns(_needed_columns(schema, names)), found.rows, f"JSON lines {found.path}")
    if found.kind == "export":
        return Source(from_rows(found.items or [], block_rows), found.rows, f"Label Studio export {found.path}")
    import datasets

    loaded = datasets.load_from_disk(str(found.path))
    splits = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    parts = []
    for split in splits:
        table = split.select_columns(_needed_columns(schema, split.column_names)).with_format("arrow")[:]
        parts.append(ray.data.from_arrow(table, override_num_blocks=max(1, -(-len(split) // block_rows))))
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return Source(dataset, found.rows, f"dataset folder {found.path}")


def from_rows(items: list[dict[str, Any]], block_rows: int) -> Any:
    """A Ray Dataset of small dicts, in blocks of about `block_rows` (so every actor gets work at once)."""
    import ray

    return ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // block_rows)))


def project_rows(tasks: dict[str, Any], skip: set[str]) -> list[dict[str, Any]]:
    """Rows for the project's tasks whose key is not in `skip` (the task data travels as JSON)."""
    return [{LS_TASK_ID: t.id, LS_DATA: json.dumps(t.data)} for key, t in tasks.items() if key not in skip]


def resolve_source(source: Path | None, ls_url: str | None, project: int | None, to_label_studio: bool) -> str | None:
    """The data-source rule of `workbench predict` (studio/source.py's, for an archive): SOURCE, a file or folder,
    wins even when $LABEL_STUDIO_URL is set; without it the tasks of --project are read. --ls-url and --project
    also name the project that --to-label-studio writes into. Returns the Label Studio URL the run needs, if any."""
    if source is not None and (ls_url or project is not None) and not to_label_studio:
        raise CommandError(
            "pass either SOURCE or --ls-url URL --project ID, not both (add --to-label-studio to write the "
            "predictions of SOURCE into that project)"
        )
    if source is None and project is None:
        raise CommandError("give SOURCE (JSON lines, Parquet or a dataset folder), or --project ID with --ls-url URL")
    if to_label_studio and project is None:
        raise CommandError("--to-label-studio needs --project ID (and --ls-url URL with --api-key)")
    if source is not None and not to_label_studio:
        return None
    url = ls_url or os.environ.get(LABEL_STUDIO_URL_ENV) or None
    if not url:
        raise CommandError("give --ls-url URL (or set LABEL_STUDIO_URL) with --project ID")
    return url
