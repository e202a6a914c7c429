"""Import labelled data into a Label Studio project: CSV, JSON lines, a Label Studio JSON export or a dataset folder.

Column mapping (CSV, JSON lines and dataset rows; names come from the schema):
- task fields: the schema's `data.key`, `data.text`, context, extra and group fields, under their own names. The text
  is required; a file with no key column at all gets keys derived from the text (`sha1:<16 hex>`; of the text and
  the paired fields where a dimension has `pair_with`), a row with an empty key in a file that has the column is
  rejected. Other columns are ignored (and named once in the report).
- labels: one column per dimension, named like the dimension. Single choice: the label. Multi choice: a JSON list
  (`["Economic", "Political"]`) or labels joined by `;` (`Economic;Political`); `[]` means "answered, nothing
  ticked". Spans: a JSON list of `{"start", "end", "label"}` objects (optional "text", checked against the task
  text; offsets are code points of the text with `\\n` line ends). An empty cell (or null) is "not answered".
- annotation columns (all optional): `annotator` (any string; with `--annotators users` each distinct value becomes
  a Label Studio user), `lead_time` (seconds), `was_cancelled`, `ground_truth` (true/false/1/0/yes/no), `score`
  (for predictions), `created_at`/`updated_at` (kept for agreement, Label Studio sets its own times).
- a row carrying any label (or `was_cancelled`) becomes one annotation (or prediction) of its task.

Several rows may describe one task (the same key, one row per annotation, as in the `raw` configuration of an
export) when the file has an `annotator` column: their annotations are gathered on one task. Without it, a repeated
key is a duplicate and is skipped; a repeated key with different task data is rejected.

Label Studio JSON exports keep their tasks and annotations (drafts and predictions are left out). Dataset folders
are read with `datasets.load_dataset` (by default the `aggregated` configuration when there is one); class-label
columns are turned back into label names and -1 into "not answered".

Rows are located by line number (CSV, JSON lines), item index (a JSON array) or `split[row]` (datasets). Every row
is either read or rejected with its location: fields of any length are read in full (the csv module's 128 KiB field
limit is lifted while a file is read), and a row whose labelled text field is longer than WORKBENCH_MAX_TEXT_CHARS
(the backend's limit, default 20000) is rejected. A file with any rejected row imports nothing unless `skip_invalid`
is set. Tasks whose key the project already holds are skipped,
except that a task with no labels yet (say, provisioned earlier) gets the file's labels when its text is the same,
and a task whose labels are all among the file's (an earlier import that stopped part way) gets the rest.
Label Studio cannot store "answered, nothing ticked" apart from "not answered" for multi choice and spans: both come
back from Label Studio as an empty answer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation_config.annotations import annotator_of, derived_key, is_cancelled, is_ground_truth
from annotation_config.errors import WorkbenchError
from annotation_config.jsonl import jsonl_lines
from annotation_config.regions import RegionError, labels_to_results, results_to_labels
from annotation_config.schema import Dimension, Schema
from studio.provision import call, find_project, provision, task_data

ANNOTATOR, LEAD_TIME, SCORE = "annotator", "lead_time", "score"
WAS_CANCELLED, GROUND_TRUTH = "was_cancelled", "ground_truth"
CREATED_AT, UPDATED_AT = "created_at", "updated_at"
ANNOTATION_COLUMNS = (ANNOTATOR, LEAD_TIME, WAS_CANCELLED, GROUND_TRUTH, SCORE, CREATED_AT, UPDATED_AT)
# Columns a workbench export writes that are not task data or labels: read silently, not imported.
EXPORT_ONLY_COLUMNS = ("n_annotators", "split", "result_error")
MODEL_VERSION = "import"
ANNOTATOR_DOMAIN = "annotators.invalid"  # e-mail domain of users made for imported annotators (RFC 2606)
_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f", ""}
MAX_TEXT_CHARS_ENV = "WORKBENCH_MAX_TEXT_CHARS"
DEFAULT_MAX_TEXT_CHARS = 20_000  # the backend's default (backend.settings.Settings.max_text_chars)
# csv.field_size_limit is process-wide: one lock, so two reads cannot restore it under each other's feet.
_CSV_LIMIT_LOCK = threading.Lock()


class ImportFileError(WorkbenchError):
    """A file that cannot be imported as a whole (unreadable, unknown format, rejected rows)."""


class ImportFailed(WorkbenchError):
    """Label Studio refused part of an import; the message says what was already written."""


class _RowError(ValueError):
    """One row's problem (becomes a `Rejected`)."""


@dataclass
class AnnotationIn:
    """One annotation (or prediction) to create: a validated label record and its metadata."""

    labels: dict[str, Any]
    annotator: str | None = None
    lead_time: float | None = None
    was_cancelled: bool = False
    ground_truth: bool = False
    score: float | None = None
    created_at: str | None = None
    updated_at: str | None = None


@dataclass
class TaskIn:
    """One task of the file: where it was read, its key, its Label Studio data and its annotations."""

    where: str
    key: str
    data: dict[str, Any]
    annotations: list[AnnotationIn] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    """A row that was rejected or skipped, with where it is and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ParsedFile:
    """Everything read from a file: good tasks, rejected rows, skipped duplicates, ignored columns."""

    path: Path
    format: str
    rows: int = 0
    tasks: list[TaskIn] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    duplicates: list[Problem] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    derived_keys: bool = False
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # longer labelled text fields are rejected rows
    _by_key: dict[str, TaskIn] = field(default_factory=dict, repr=False)

    @property
    def annotations(self) -> int:
        """How many annotations the good tasks carry."""
        return sum(len(t.annotations) for t in self.tasks)


@dataclass
class ImportResult:
    """What an import did in Label Studio."""

    project_id: int
    url: str
    created: bool
    config_updated: bool
    tasks_imported: int
    tasks_skipped: int
    tasks_labelled: int = 0  # tasks already in the project, without labels, that got the file's labels
    tasks_completed: int = 0  # tasks holding part of the file's labels (an interrupted import) that got the rest
    conflicts: list[str] = field(default_factory=list)  # keys skipped: same key, different text in the project
    annotations: int = 0
    predictions: int = 0
    users_created: int = 0


# ---- reading ----


def max_text_chars_from_env() -> int:
    """The longest labelled text accepted: WORKBENCH_MAX_TEXT_CHARS, as the backend reads it (default 20000)."""
    raw = os.environ.get(MAX_TEXT_CHARS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_TEXT_CHARS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ImportFileError(f"{MAX_TEXT_CHARS_ENV} must be a whole number of at least 1, got {raw!r}")
    return value


def read_file(
    path: str | Path, schema: Schema, config: str | None = None, *, max_text_chars: int | None = None
) -> ParsedFile:
    """Read and validate a CSV, JSON-lines, Label Studio JSON export or dataset folder; never touches Label Studio.

    `max_text_chars` (default: WORKBENCH_MAX_TEXT_CHARS) bounds the labelled text fields; a longer one rejects its row.
    """
    path = Path(path)
    limit = max_text_chars_from_env() if max_text_chars is None else max_text_chars
    if path.is_dir():
        return _read_dataset_folder(path, schema, config, limit)
    if not path.exists():
        raise ImportFileError(f"{path}: no such file or folder")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ImportFileError(f"{path}: cannot read ({error.strerror})") from None
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return _read_csv(path, text, schema, delimiter="\t" if suffix == ".tsv" else ",", limit=limit)
    if suffix in {".jsonl", ".ndjson"}:
        return _read_json_lines(path, text, schema, limit)
    if suffix == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return _read_json_lines(path, text, schema, limit)
        return _read_json_document(path, document, schema, limit)
    raise ImportFileError(f"{path}: unknown format; use .csv, .tsv, .jsonl, .json or a dataset folder")


def _bad_bytes(value: str) -> str | None:
    """Where a string decoded with "surrogateescape" holds bytes that are not UTF-8, or None."""
    match = re.search(r"[\udc80-\udcff]", value)
    if not match:
        return None
    return f"not valid UTF-8 (byte 0x{ord(match.group()) - 0xDC00:02X} at character {match.start() + 1})"


def _bad_cell(row: Mapping[str, Any]) -> str | None:
    """The first column whose value holds bytes that are not UTF-8, named, or None."""
    for column, value in row.items():
        bad = _bad_bytes(json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value)
        if bad:
            return f"column {column!r}: {bad}; save the file as UTF-8"
    return None


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """Raise the csv module's field size limit to at least `limit` characters for one read, then restore it."""
    with _CSV_LIMIT_LOCK:
        old = csv.field_size_limit()
        csv.field_size_limit(max(old, min(limit, 2**31 - 1)))  # a C long: 32 bits on Windows
        try:
            yield
        finally:
            csv.field_size_limit(old)


def _csv_records(path: Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and every record with the line it starts on; a CSV the reader cannot follow is a file error."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    # No field can be longer than the file: with that limit the reader never stops at a long field (the csv
    # module's default, 128 KiB, ended the read there and every later row vanished).
    with _csv_field_limit(len(text) + 1):
        try:
            header = next(reader)
        except StopIteration:
            raise ImportFileError(f"{path}: the file is empty; expected a header row") from None
        except csv.Error as error:
            raise ImportFileError(f"{path}:1: {error}") from None
        records: list[tuple[int, list[str]]] = []
        line = reader.line_num
        while True:
            start = line + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as error:  # the reader lost its place: rows after this one cannot be trusted
                raise ImportFileError(
                    f"{path}: line {start}: broken CSV ({error}); the rows after it cannot be read, nothing imported"
                ) from None
            line = reader.line_num
            records.append((start, cells))
    return header, records


def _read_csv(path: Path, text: str, schema: Schema, delimiter: str, limit: int) -> ParsedFile:
    parsed = ParsedFile(path, "csv", max_text_chars=limit)
    header, records = _csv_records(path, text, delimiter)
    bad = _bad_bytes("".join(header))
    if bad:
        raise ImportFileError(f"{path}:1: the header is {bad}; save the file as UTF-8")
    header = [h.strip() for h in header]
    # zip() into a dict would keep only the last of two same-named columns: a silent loss of the first
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise ImportFileError(
            f"{path}:1: the header names {', '.join(map(repr, repeated))} more than once; give each column one name"
        )
    columns = set(header)
    _check_columns(parsed, columns, schema)
    rows: list[tuple[str, dict[str, Any] | Problem]] = []
    for start, cells in records:
        if not cells or not any(c.strip() for c in cells):
            continue
        where = f"line {start}"
        if len(cells) != len(header):
            rows.append((where, Problem(where, f"{len(cells)} cells, the header has {len(header)}")))
            continue
        rows.append((where, dict(zip(header, cells, strict=True))))
    return _collect(parsed, rows, schema, columns, from_text=True)


def _read_json_lines(path: Path, text: str, schema: Schema, limit: int) -> ParsedFile:
    items: list[tuple[str, Any]] = []
    for number, line in jsonl_lines(text):
        where = f"line {number}"
        bad = _bad_bytes(line)
        if bad:
            items.append((where, Problem(where, f"{bad}; save the file as UTF-8")))
            continue
        try:
            items.append((where, json.loads(line)))
        except json.JSONDecodeError as error:
            items.append((where, Problem(where, f"invalid JSON ({error.msg} at column {error.colno})")))
    return _read_items(ParsedFile(path, "jsonl", max_text_chars=limit), items, schema)


def _read_json_document(path: Path, document: Any, schema: Schema, limit: int) -> ParsedFile:
    if isinstance(document, dict) and isinstance(document.get("tasks"), list):
        document = document["tasks"]
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise ImportFileError(f"{path}: expected a JSON list of tasks or rows")
    items = [(f"item [{i}]", item) for i, item in enumerate(document)]
    return _read_items(ParsedFile(path, "json", max_text_chars=limit), items, schema)


def _read_items(parsed: ParsedFile, items: list[tuple[str, Any]], schema: Schema) -> ParsedFile:
    """JSON values: Label Studio tasks (objects with "data") or flat rows; bad values become problems."""
    objects = [item for _, item in items if isinstance(item, dict)]
    if objects and all(isinstance(item.get("data"), dict) for item in objects):
        parsed.format = "label-studio" if parsed.format == "json" else "label-studio-jsonl"
        return _read_label_studio(parsed, items, schema)
    rows: list[tuple[str, dict[str, Any] | Problem]] = []
    for where, item in items:
        if isinstance(item, Problem):
            rows.append((where, item))
        elif not isinstance(item, dict):
            rows.append((where, Problem(where, f"expected a JSON object, got {type(item).__name__}")))
        else:
            rows.append((where, item))
    columns = {name for item in objects for name in item}
    _check_columns(parsed, columns, schema)
    return _collect(parsed, rows, schema, columns, from_text=False)


def _check_columns(parsed: ParsedFile, columns: set[str], schema: Schema) -> None:
    known = {*schema.data.all_fields, *(d.name for d in schema.dimensions), *ANNOTATION_COLUMNS, *EXPORT_ONLY_COLUMNS}
    parsed.ignored_columns = sorted(columns - known)
    parsed.derived_keys = schema.data.key not in columns


def _collect(
    parsed: ParsedFile,
    rows: list[tuple[str, dict[str, Any] | Problem]],
    schema: Schema,
    columns: set[str],
    *,
    from_text: bool,
) -> ParsedFile:
    """Validate flat rows and gather them into tasks (see the module docstring)."""
    long_format = ANNOTATOR in columns
    for where, row in rows:
        parsed.rows += 1
        if isinstance(row, Problem):
            parsed.rejected.append(row)
            continue
        bad = _bad_cell(row)
        if bad:
            parsed.rejected.append(Problem(where, bad))
            continue
        try:
            task = _flat_row(
                row,
                schema,
                where,
                from_text=from_text,
                derive_key=parsed.derived_keys,
                max_chars=parsed.max_text_chars,
            )
        except _RowError as error:
            parsed.rejected.append(Problem(where, str(error)))
            continue
        _gather(parsed, task, long_format)
    return parsed


def _gather(parsed: ParsedFile, task: TaskIn, long_format: bool) -> None:
    first = parsed._by_key.get(task.key)
    if first is None:
        parsed.tasks.append(task)
        parsed._by_key[task.key] = task
        return
    if first.data != task.data:
        parsed.rejected.append(
            Problem(task.where, f"key {task.key!r} is already used at {first.where} with different task data")
        )
    elif long_format and task.annotations and all(a not in first.annotations for a in task.annotations):
        first.annotations.extend(task.annotations)
    else:
        parsed.duplicates.append(Problem(task.where, f"duplicate of {first.where} (key {task.key!r}): skipped"))


def _flat_row(
    row: Mapping[str, Any],
    schema: Schema,
    where: str,
    *,
    from_text: bool,
    derive_key: bool,
    max_chars: int = DEFAULT_MAX_TEXT_CHARS,
) -> TaskIn:
    text = row.get(schema.data.text)
    if text is None or (isinstance(text, str) and not text.strip()):
        raise _RowError(f"no value for the text field {schema.data.text!r}")
    if not isinstance(text, str):
        raise _RowError(f"field {schema.data.text!r} must be a string, got {type(text).__name__}")
    data: dict[str, Any] = {}
    for name in schema.data.all_fields:
        if name in row and name != schema.data.key:
            data[name] = _blank_to_none(row[name]) if from_text else row[name]
    data = {k: v for k, v in data.items() if v is not None or k in schema.data.shown_fields}
    key = row.get(schema.data.key)
    if derive_key:
        key = derived_key({**data, schema.data.text: text}, schema)  # the paired fields are part of a task
    elif key is None or (isinstance(key, str) and not key.strip()) or isinstance(key, dict | list | bool):
        raise _RowError(f"no value for the key field {schema.data.key!r}")
    data[schema.data.key] = str(key)
    data = task_data(data, schema)
    # The fields the backend predicts on, measured as Label Studio stores them: a longer one would get a 413 there.
    for name in dict.fromkeys([schema.data.text, *(d.field for d in schema.dimensions if d.field)]):
        value = data.get(name)
        if isinstance(value, str) and len(value) > max_chars:
            raise _RowError(
                f"field {name!r} has {len(value)} characters; the limit is {max_chars} ({MAX_TEXT_CHARS_ENV})"
            )
    labels: dict[str, Any] = {}
    for dim in schema.dimensions:
        if dim.name not in row:
            continue
        value = _parse_label(dim, row[dim.name])
        if value is not None:
            labels[dim.name] = value
    cancelled = _bool(row.get(WAS_CANCELLED), WAS_CANCELLED)
    annotations = []
    if labels or cancelled:
        _validate_labels(schema, labels, data)
        annotations.append(
            AnnotationIn(
                labels=labels,
                annotator=_text_or_none(row.get(ANNOTATOR)),
                lead_time=_number(row.get(LEAD_TIME), LEAD_TIME),
                was_cancelled=cancelled,
                ground_truth=_bool(row.get(GROUND_TRUTH), GROUND_TRUTH),
                score=_number(row.get(SCORE), SCORE),
                created_at=_text_or_none(row.get(CREATED_AT)),
                updated_at=_text_or_none(row.get(UPDATED_AT)),
            )
        )
    return TaskIn(where, str(key), data, annotations)


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and value == "" else value


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _bool(value: Any, column: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _RowError(f"column {column!r}: expected true or false, got {value!r}")


def _number(value: Any, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _RowError(f"column {column!r}: expected a number, got {value!r}") from None
    if number != number or number < 0:  # NaN or negative
        raise _RowError(f"column {column!r}: expected a non-negative number, got {value!r}")
    return number


def _parse_label(dim: Dimension, value: Any) -> Any:
    """A cell's value as a label-record value (None: not answered); shapes are checked, labels later."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if dim.kind == "single":
        if not isinstance(value, str):
            raise _RowError(f"column {dim.name!r}: expected one label, got {value!r}")
        return value.strip()
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith(("[", "{")):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as error:
                raise _RowError(f"column {dim.name!r}: invalid JSON ({error.msg})") from None
        elif dim.kind == "multi":
            return [part.strip() for part in stripped.split(";") if part.strip()]
        else:
            raise _RowError(f"column {dim.name!r}: expected a JSON list of spans with start, end and label")
    if dim.kind == "multi":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _RowError(f"column {dim.name!r}: expected a list of labels, got {value!r}")
        return value
    if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
        raise _RowError(f"column {dim.name!r}: expected a list of span objects with start, end and label")
    return [dict(s) for s in value]


def _validate_labels(schema: Schema, labels: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    try:
        labels_to_results(schema, labels, data)
    except RegionError as error:  # "<dimension>[.value...]: problem" -> "column '<dimension>': problem"
        where, _, problem = str(error).partition(": ")
        raise _RowError(f"column {where.split('.')[0]!r}: {problem or where}") from None
    for dim in schema.of_kind("multi"):
        value = labels.get(dim.name)
        if value is not None and len(set(value)) != len(value):
            raise _RowError(f"column {dim.name!r}: a label is listed twice in {value!r}")


def _read_label_studio(parsed: ParsedFile, items: list[tuple[str, Any]], schema: Schema) -> ParsedFile:
    keyed = any(isinstance(i, dict) and schema.data.key in (i.get("data") or {}) for _, i in items)
    parsed.derived_keys = not keyed
    for where, item in items:
        parsed.rows += 1
        if isinstance(item, Problem):
            parsed.rejected.append(item)
            continue
        try:
            task = _label_studio_task(item, schema, where, derive_key=not keyed, max_chars=parsed.max_text_chars)
        except _RowError as error:
            parsed.rejected.append(Problem(where, str(error)))
            continue
        _gather(parsed, task, long_format=False)
    return parsed


def _label_studio_task(item: Any, schema: Schema, where: str, *, derive_key: bool, max_chars: int) -> TaskIn:
    if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
        raise _RowError("expected a task object with a 'data' object")
    row = dict(item["data"])
    bad = _bad_cell(row)
    if bad:
        raise _RowError(bad)
    fields = {k: v for k, v in row.items() if k in schema.data.all_fields}
    task = _flat_row(fields, schema, where, from_text=False, derive_key=derive_key, max_chars=max_chars)
    for extra, value in row.items():  # Label Studio keeps any data field: so do we
        task.data.setdefault(extra, value)
    for i, annotation in enumerate(item.get("annotations") or []):
        if not isinstance(annotation, dict):
            raise _RowError(f"annotations[{i}]: expected an object")
        try:
            labels = results_to_labels(schema, annotation.get("result") or [], task.data)
        except RegionError as error:
            raise _RowError(f"annotations[{i}].{error}") from None
        who = annotator_of(annotation)
        task.annotations.append(
            AnnotationIn(
                labels=labels,
                annotator=None if who is None else str(who),
                lead_time=_number(annotation.get("lead_time"), f"annotations[{i}].lead_time"),
                was_cancelled=is_cancelled(annotation),
                ground_truth=is_ground_truth(annotation),
                created_at=_text_or_none(annotation.get("created_at")),
                updated_at=_text_or_none(annotation.get("updated_at")),
            )
        )
    return task


def dataset_configs(folder: Path) -> list[str]:
    """Configuration names declared in a dataset folder's card (empty: `datasets` infers one from the files)."""
    readme = folder / "README.md"
    if not readme.exists():
        return []
    from huggingface_hub import DatasetCard

    try:
        configs = DatasetCard.load(readme).data.to_dict().get("configs") or []
    except Exception:  # noqa: BLE001 - a card we cannot parse: let datasets infer the layout
        return []
    return [c["config_name"] for c in configs if isinstance(c, dict) and c.get("config_name")]


def _read_dataset_folder(folder: Path, schema: Schema, config: str | None, limit: int) -> ParsedFile:
    import datasets

    configs = dataset_configs(folder)
    if config is None:
        config = "aggregated" if "aggregated" in configs else (configs[0] if len(configs) == 1 else None)
    elif configs and config not in configs:
        raise ImportFileError(f"{folder}: no configuration {config!r}; it has {', '.join(configs)}")
    parsed = ParsedFile(folder, f"dataset:{config or 'default'}", max_text_chars=limit)
    rows: list[tuple[str, dict[str, Any] | Problem]] = []
    columns: set[str] = set()
    # A throw-away cache and rows in memory: reading labelled data must not leave copies in ~/.cache.
    with tempfile.TemporaryDirectory(prefix="workbench-import-") as cache, _quiet_datasets():
        try:
            loaded = datasets.load_dataset(str(folder), config, cache_dir=cache, keep_in_memory=True)
        except Exception as error:  # noqa: BLE001 - datasets raises many kinds; all mean "not a dataset we can read"
            raise ImportFileError(f"{folder}: cannot load as a dataset ({type(error).__name__}: {error})") from None
        for split, part in loaded.items():
            columns |= set(part.column_names)
            names = _class_names(part.features)
            for i, row in enumerate(part):
                rows.append((f"{split}[{i}]", _decode_row(row, names)))
    _check_columns(parsed, columns, schema)
    return _collect(parsed, rows, schema, columns, from_text=False)


class _quiet_datasets:
    """Hide datasets' progress bars while loading."""

    def __enter__(self) -> None:
        import datasets

        self.was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc: object) -> None:
        import datasets

        if self.was_enabled:
            datasets.enable_progress_bars()


def _class_names(features: Mapping[str, Any]) -> dict[str, Any]:
    """Per column: a ClassLabel, a list of ClassLabel, or a list of structs with a ClassLabel `label`."""
    from datasets import ClassLabel, LargeList, List, Sequence

    out: dict[str, Any] = {}
    for name, feature in features.items():
        if isinstance(feature, ClassLabel):
            out[name] = ("single", feature)
        elif isinstance(feature, List | LargeList | Sequence):
            inner = feature.feature
            if isinstance(inner, ClassLabel):
                out[name] = ("multi", inner)
            elif isinstance(inner, dict) and isinstance(inner.get("label"), ClassLabel):
                out[name] = ("spans", inner["label"])
    return out


def _decode_row(row: Mapping[str, Any], names: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column, (kind, feature) in names.items():
        value = out.get(column)
        if value is None:
            continue
        if kind == "single":
            out[column] = None if value < 0 else feature.int2str(value)
        elif kind == "multi":
            out[column] = [feature.int2str(v) for v in value]
        else:
            out[column] = [{**s, "label": feature.int2str(s["label"])} for s in value]
    return out


# ---- from parsed rows to Label Studio task dicts (agreement, export from a file) ----


def as_label_studio_tasks(parsed: ParsedFile, schema: Schema) -> list[dict[str, Any]]:
    """The parsed tasks as Label Studio JSON-export task dicts (annotations with `completed_by` = annotator)."""
    tasks = []
    for task in parsed.tasks:
        annotations = [
            {
                "id": i,
                "completed_by": a.annotator,
                "result": labels_to_results(schema, a.labels, task.data),
                "was_cancelled": a.was_cancelled,
                "ground_truth": a.ground_truth,
                "lead_time": a.lead_time,
                "created_at": a.created_at,
                "updated_at": a.updated_at,
            }
            for i, a in enumerate(task.annotations)
        ]
        tasks.append({"id": None, "data": dict(task.data), "annotations": annotations})
    return tasks


# ---- writing into Label Studio ----


def annotator_email(annotator: str) -> str:
    """The Label Studio e-mail for an imported annotator: the value itself when it is an address."""
    if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", annotator):
        return annotator.lower()
    slug = re.sub(r"[^a-z0-9]+", "-", annotator.lower()).strip("-")[:40] or "annotator"
    digest = hashlib.sha1(annotator.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}@{ANNOTATOR_DOMAIN}"


def _user_ids(client: Any, annotators: Iterable[str]) -> tuple[dict[str, int], int]:
    """Label Studio user ids for annotator names: existing users by e-mail, new ones created (no password)."""
    wanted = sorted(set(annotators))
    if not wanted:
        return {}, 0
    users = call(lambda: list(client.users.list()), "list users")
    by_email = {(u.email or "").lower(): u.id for u in users}
    ids, created = {}, 0
    for name in wanted:
        email = annotator_email(name)
        if email not in by_email:
            username = email.split("@")[0][:150]
            user = call(lambda e=email, u=username: client.users.create(username=u, email=e), f"create user {email}")
            by_email[email] = user.id
            created += 1
        ids[name] = by_email[email]
    return ids, created


def import_parsed(
    client: Any,
    schema: Schema,
    parsed: ParsedFile,
    *,
    ls_url: str,
    title: str | None = None,
    project_id: int | None = None,
    as_predictions: bool = False,
    annotator_users: bool = False,
) -> ImportResult:
    """Create or reuse the project, import tasks whose key is new, then their annotations or predictions.

    A task whose key the project already holds gets the file's labels only when it has none of that kind yet
    (no annotation, or no prediction with `as_predictions`) and the same labelled text: so labels can be imported
    for tasks provisioned earlier, and importing the same file twice adds nothing. When all it holds are among the
    file's labels (an import that failed part way), it gets the rest. Other such tasks are skipped.
    Call only with a file without rejected rows (or after deciding to skip them).
    """
    title = _project_title(client, project_id) if project_id is not None else (title or schema.name)
    before = find_project(client, title)
    present = _project_tasks(client, before.id) if before is not None else []
    have = {str(t.data.get(schema.data.key)): t for t in present if t.data}
    outcome = provision(client, schema, [task.data for task in parsed.tasks], title, ls_url)
    result = ImportResult(
        project_id=outcome.project_id,
        url=outcome.url,
        created=outcome.created,
        config_updated=outcome.config_updated,
        tasks_imported=outcome.imported,
        tasks_skipped=0,
    )
    to_label = _tasks_to_label(client, parsed, have, schema, as_predictions, result)
    pending = [(task, a) for task, labels in to_label for a in labels if not (as_predictions and a.was_cancelled)]
    if not pending:
        return result
    ids = {str(t.data.get(schema.data.key)): t.id for t in _project_tasks(client, outcome.project_id) if t.data}
    users: dict[str, int] = {}
    if annotator_users and not as_predictions:
        users, result.users_created = _user_ids(client, (a.annotator for _, a in pending if a.annotator))
    _write_labels(client, schema, pending, ids, users, as_predictions, result)
    return result


def _project_title(client: Any, project_id: int) -> str:
    """The title of an existing project, which must be unique (provisioning finds projects by title)."""
    project = call(lambda: client.projects.get(id=project_id), f"read project {project_id}")
    same_title = find_project(client, project.title)
    if same_title is None or same_title.id != project_id:
        raise ImportFailed(
            f"project {project_id} shares its title {project.title!r} with another project; "
            "give it a unique title or use --title"
        )
    return project.title


def _tasks_to_label(
    client: Any,
    parsed: ParsedFile,
    have: Mapping[str, Any],
    schema: Schema,
    as_predictions: bool,
    result: ImportResult,
) -> list[tuple[TaskIn, list[AnnotationIn]]]:
    """The tasks and which of their labels to write: all of new ones and of ones already there with the same text
    and no labels of this kind, the missing ones of tasks an interrupted import labelled in part; counts the others
    in `result` (skipped; conflicts when the project holds the key with another text and no labels)."""
    fields = {schema.data.text, *(d.field for d in schema.dimensions)}
    to_label = []
    for task in parsed.tasks:
        old = have.get(task.key)
        if old is None:
            to_label.append((task, task.annotations))
        elif not task.annotations:
            result.tasks_skipped += 1
        elif any(old.data.get(f) != task.data.get(f) for f in fields):
            result.tasks_skipped += 1
            if not _has_labels(old, as_predictions):
                result.conflicts.append(task.key)
        elif not _has_labels(old, as_predictions):
            to_label.append((task, task.annotations))
            result.tasks_labelled += 1
        elif missing := _not_yet_written(client, schema, task, old, as_predictions):
            to_label.append((task, missing))
            result.tasks_completed += 1
        else:
            result.tasks_skipped += 1
    return to_label


def _not_yet_written(client: Any, schema: Schema, task: TaskIn, old: Any, as_predictions: bool) -> list[AnnotationIn]:
    """The file's labels of `task` that the project's task `old` lacks, when each label it holds is one of the
    file's (an earlier import of the file stopped part way); [] when it holds labels from anywhere else.

    Labels are matched on their answers (cancelled ones on their number: Label Studio does not list them), the
    first match in file order: an interrupted import wrote a task's labels from the first on, so what is left is
    the rest.
    """
    wanted = [a for a in task.annotations if not (as_predictions and a.was_cancelled)]
    if as_predictions:
        stored = call(lambda: list(client.predictions.list(task=old.id)), f"list predictions of task {task.key!r}")
        held = [_answer(schema, p.result, old.data) if p.model_version == MODEL_VERSION else None for p in stored]
    else:
        stored = call(lambda: list(client.annotations.list(id=old.id)), f"list annotations of task {task.key!r}")
        held = [_answer(schema, a.result, old.data) for a in stored if not a.was_cancelled]
        held += [_CANCELLED] * (old.cancelled_annotations or 0)
    left = [
        (
            a,
            _CANCELLED
            if a.was_cancelled
            else _answer(schema, labels_to_results(schema, a.labels, task.data), task.data),
        )
        for a in wanted
    ]
    for answer in held:
        match = next((i for i, (_, other) in enumerate(left) if answer is not None and other == answer), None)
        if match is None:
            return []
        del left[match]
    return [a for a, _ in left]


_CANCELLED = "cancelled"  # a cancelled annotation's answer: a skip carries no labels


def _answer(schema: Schema, results: Any, data: Mapping[str, Any]) -> str | None:
    """A label as Label Studio holds it, comparable across the file and the project (None: it does not fit)."""
    try:
        labels = results_to_labels(schema, results or [], data)
    except RegionError:
        return None
    return json.dumps(labels, sort_keys=True, ensure_ascii=False)


def _write_labels(
    client: Any,
    schema: Schema,
    pending: list[tuple[TaskIn, AnnotationIn]],
    ids: Mapping[str, int],
    users: Mapping[str, int],
    as_predictions: bool,
    result: ImportResult,
) -> None:
    """Create each pending annotation (or prediction), counting them in `result`; a failure names what was written."""
    for task, annotation in pending:
        results = labels_to_results(schema, annotation.labels, task.data)
        try:
            if as_predictions:
                score = {"score": annotation.score} if annotation.score is not None else {}
                call(
                    lambda t=task, r=results, x=score: client.predictions.create(
                        task=ids[t.key], result=r, model_version=MODEL_VERSION, **x
                    ),
                    f"create a prediction for task {task.key!r}",
                )
                result.predictions += 1
            else:
                extra = {"completed_by": users[annotation.annotator]} if annotation.annotator in users else {}
                if annotation.lead_time is not None:
                    extra["lead_time"] = annotation.lead_time
                call(
                    lambda t=task, r=results, a=annotation, x=extra: client.annotations.create(
                        id=ids[t.key], result=r, was_cancelled=a.was_cancelled, ground_truth=a.ground_truth, **x
                    ),
                    f"create an annotation for task {task.key!r}",
                )
                result.annotations += 1
        except WorkbenchError as error:
            done = result.predictions if as_predictions else result.annotations
            raise ImportFailed(
                f"{error}; already written: {result.tasks_imported} tasks and {done} of {len(pending)} "
                f"{'predictions' if as_predictions else 'annotations'} in project {result.project_id}"
            ) from None


def _project_tasks(client: Any, project_id: int) -> list[Any]:
    return call(lambda: list(client.tasks.list(project=project_id, fields="task_only", page_size=500)), "list tasks")


def _has_labels(task: Any, predictions: bool) -> bool:
    if predictions:
        return bool(task.total_predictions)
    return bool(task.total_annotations or task.cancelled_annotations)


def problems_text(problems: Sequence[Problem], path: Path, limit: int = 50) -> list[str]:
    """Report lines `FILE: where: reason`, at most `limit` of them plus a count of the rest."""
    lines = [f"{path}: {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return lines
