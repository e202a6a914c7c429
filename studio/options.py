"""The command-line options that several commands share (typer), so each is spelled, documented and read once.

The data-source options follow studio/source.py's rule: `--ls-url` has no envvar of its own, so that an explicit
--from-export can win over $LABEL_STUDIO_URL (load_tasks reads the variable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SchemaOption = Annotated[
    Path | None,
    typer.Option("--schema", envvar="WORKBENCH_SCHEMA", help="Label schema YAML (default: the sample schema)."),
]
ApiKeyOption = Annotated[
    str, typer.Option("--api-key", envvar="LABEL_STUDIO_API_KEY", help="Label Studio API token.", show_default=False)
]
# where labelled tasks are read from (load_tasks)
FromExportOption = Annotated[
    Path | None,
    typer.Option("--from-export", help="A Label Studio JSON export (for export and agreement also a dataset folder)."),
]
SourceUrlOption = Annotated[
    str | None,
    typer.Option(
        "--ls-url",
        help="Read annotations from this Label Studio (default: $LABEL_STUDIO_URL, unless --from-export is given).",
        show_default=False,
    ),
]
ProjectOption = Annotated[int | None, typer.Option("--project", help="Label Studio project id (with --ls-url).")]
# the Label Studio that a command writes into (provision, import)
TargetUrlOption = Annotated[str, typer.Option("--ls-url", envvar="LABEL_STUDIO_URL", help="Label Studio base URL.")]
