"""Where a command's Label Studio tasks come from: the one data-source rule, and Label Studio JSON export files.

The rule, for every command that reads labelled tasks (`train`, `export`, `agreement`): an explicit file wins.
  --from-export FILE               read that file, even when $LABEL_STUDIO_URL is set (the backend's environment
                                   sets it for its jobs); --ls-url or --project given with it is a usage error;
  --ls-url URL --project ID        read the project's tasks through label-studio-sdk (--ls-url defaults to
                                   $LABEL_STUDIO_URL);
  neither                          a usage error that says what to pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from annotation_config.errors import CommandError, WorkbenchError, read_user_file
from annotation_config.jsonl import jsonl_lines

LABEL_STUDIO_URL_ENV = "LABEL_STUDIO_URL"


class ExportError(WorkbenchError, ValueError):
    """An export file that cannot be read as Label Studio tasks."""


@dataclass(frozen=True)
class LoadedTasks:
    """Label Studio task dicts, where they came from (`source`: a path or project URL, for manifests) and a `label`
    naming the source without paths or hosts (for cards that may be published)."""

    tasks: list[dict]
    source: str
    label: str


def load_tasks(
    from_export: Path | None,
    ls_url: str | None,
    project: int | None,
    api_key: str = "",
    *,
    read_folder: Callable[[Path], list[dict]] | None = None,
) -> LoadedTasks:
    """The tasks a command works on, by the data-source rule (module docstring).

    `read_folder` reads a dataset folder given as --from-export (exchange's import does); without it a folder is an
    error like any unreadable export.
    """
    if from_export is not None:
        if ls_url or project is not None:
            raise CommandError("pass either --from-export FILE or --ls-url URL --project ID, not both")
        if from_export.is_dir() and read_folder is not None:
            return LoadedTasks(read_folder(from_export), str(from_export), f"dataset folder {from_export.name}")
        return LoadedTasks(load_export(from_export), str(from_export), f"export file {from_export.name}")
    ls_url = ls_url or os.environ.get(LABEL_STUDIO_URL_ENV) or None
    if not (ls_url and project is not None):
        raise CommandError("give --ls-url URL --project ID (with --api-key), or --from-export FILE")
    from studio.provision import connect, export_tasks

    tasks = export_tasks(connect(ls_url, api_key), project)
    return LoadedTasks(tasks, f"{ls_url.rstrip('/')}/projects/{project}", f"Label Studio project {project}")


def load_export(path: str | Path) -> list[dict]:
    """Read a Label Studio JSON export (a list of tasks) or a JSON-lines file of tasks."""
    path = Path(path)
    missing = "no such export file; export the project as JSON from Label Studio"
    text = read_user_file(path, ExportError, missing, "export")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = []
        for number, line in jsonl_lines(text):
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ExportError(
                    f"{path}:{number}: invalid JSON ({error.msg}); expected a Label Studio JSON export"
                ) from None
    if isinstance(raw, dict) and isinstance(raw.get("tasks"), list):
        raw = raw["tasks"]
    if not isinstance(raw, list):
        raise ExportError(f"{path}: expected a list of tasks (Label Studio 'JSON' export format)")
    for i, task in enumerate(raw):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ExportError(f"{path}: task [{i}] has no 'data' object; use the 'JSON' export format, not JSON_MIN")
    return raw
