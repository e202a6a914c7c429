"""JSON lines, split the one way the format defines: on "\\n" only.

`str.splitlines()` also splits on U+2028, U+2029, U+0085 and other separators that JSON strings may hold raw
(`json.dumps(..., ensure_ascii=False)` writes them as they are), which cuts a valid row in two.
"""

from __future__ import annotations

from collections.abc import Iterator


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) for each non-blank line of a JSON-lines text; a trailing "\\r" is dropped."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line
