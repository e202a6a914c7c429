"""The base of every error a user can fix; the CLI prints its one-line message instead of a traceback."""


class WorkbenchError(Exception):
    """An error with a one-line message that says what is wrong and what to do."""


class CommandError(WorkbenchError):
    """A command-line usage problem with a one-line fix."""
