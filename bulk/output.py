"""The output folder of `workbench predict`: Parquet part files written atomically, the keys already done, a lock.

A part appears only whole (written under a dot-name, flushed, renamed), so a crash or Ctrl-C leaves complete parts
and at most a stray temporary file, which the next run removes. What is done is read back from the parts
themselves: there is no separate journal to disagree with them.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotation_config.errors import CommandError, WorkbenchError
from bulk.table import MODEL_VERSION, output_schema

if TYPE_CHECKING:
    import pyarrow as pa

    from annotation_config.schema import Schema

PART = re.compile(r"^part-(\d+)\.parquet$")
LOCK_FILE = ".workbench-predict.lock"


class OutputError(WorkbenchError):
    """The output folder cannot be used; the message says what to do."""


@dataclass
class OutputFolder:
    """An output folder opened for one run: `done` keys of the run's model version, rows of other versions."""

    path: Path
    schema: Schema
    version: str
    done: set[str] = field(default_factory=set)
    other_versions: Counter = field(default_factory=Counter)
    next_part: int = 0
    parts_written: int = 0
    _lock: Any = None

    @classmethod
    def open(cls, path: Path, schema: Schema, version: str) -> OutputFolder:
        """Lock the folder (one run at a time), clear stray temporary files and read which keys are done."""
        if path.exists() and not path.is_dir():
            raise CommandError(f"--out {path}: is a file; give a folder for the Parquet parts")
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = _lock(path / LOCK_FILE)
        except OSError as error:
            raise OutputError(f"--out {path}: cannot write there ({error.strerror or error})") from None
        folder = cls(path, schema, version, _lock=lock)
        try:
            folder._scan()
        except BaseException:
            folder.close()
            raise
        return folder

    def _scan(self) -> None:
        import pyarrow.parquet as pq

        for stray in self.path.glob(".part-*.tmp"):
            stray.unlink(missing_ok=True)
        wanted = output_schema(self.schema)
        key = self.schema.data.key
        for part in self.parts():
            try:
                found = pq.read_schema(part)
                if not found.equals(wanted):
                    raise OutputError(
                        f"{part}: written for another schema (its columns differ from this schema's); "
                        "give another --out"
                    )
                table = pq.read_table(part, columns=[key, MODEL_VERSION])
            except OutputError:
                raise
            except Exception as error:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
                raise OutputError(f"{part}: not a readable part ({error}); move it away and run again") from None
            versions = table.column(MODEL_VERSION).to_pylist()
            for k, v in zip(table.column(key).to_pylist(), versions, strict=True):
                if v == self.version:
                    self.done.add(k)
                else:
                    self.other_versions[v] += 1
            self.next_part = max(self.next_part, int(PART.match(part.name).group(1)) + 1)  # type: ignore[union-attr]

    def parts(self) -> list[Path]:
        """The complete part files, in order."""
        return sorted(p for p in self.path.iterdir() if PART.match(p.name))

    def write(self, table: pa.Table) -> Path:
        """Write one part atomically and count its keys as done."""
        import pyarrow.parquet as pq

        name = f"part-{self.next_part:05d}.parquet"
        final, temporary = self.path / name, self.path / f".{name}.tmp"
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        _fsync_dir(self.path)
        self.next_part += 1
        self.parts_written += 1
        self.done.update(table.column(self.schema.data.key).to_pylist())
        return final

    def read_rows(self, keys: set[str]) -> list[dict[str, Any]]:
        """Stored rows of this run's version whose key is in `keys` (to write them into Label Studio)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        if not keys:
            return rows
        wanted = list(keys)
        for part in self.parts():
            table = pq.read_table(part)
            mask = pc.and_(
                pc.equal(table.column(MODEL_VERSION), self.version),
                pc.is_in(table.column(self.schema.data.key), value_set=_string_array(wanted)),
            )
            rows.extend(table.filter(mask).to_pylist())
        return rows

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _string_array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _lock(path: Path) -> Any:
    """An exclusive lock on `path` held by the returned open file (the OS drops it when the process dies)."""
    import fcntl

    handle = open(path, "a")  # noqa: SIM115 - held for the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputError(
            f"--out {path.parent}: another `workbench predict` writes there; wait for it or give another --out"
        ) from None
    return handle


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
