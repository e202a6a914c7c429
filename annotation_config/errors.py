"""The base of every error a user can fix; the CLI prints its one-line message instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class WorkbenchError(Exception):
    """An error with a one-line message that says what is wrong and what to do."""


class CommandError(WorkbenchError):
    """A command-line usage problem with a one-line fix."""


def read_user_file(path: Path, error: type[WorkbenchError], missing: str, what: str) -> str:
    """The text of a file a user named, or `error` with one line: "PATH: `missing`" when there is no such file,
    "PATH: cannot read the `what` (why)" when it cannot be read as UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: cannot read the {what} ({problem})") from None
