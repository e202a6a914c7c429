"""Export labelled data as a Hugging Face dataset folder (parquet + card) and push it to the Hub.

Two configurations:
- `aggregated`: one row per task with accepted labels (the acceptance policy of `training.data.accept`), split into
  train/validation/test by `training.data.split_examples` (same seed and ratios as training: same splits). Columns:
  the task key, the text, context fields, the schema's extra and group fields, one column per dimension, and
  `n_annotators` (votes counted for the task).
- `raw`: one row per annotation in Label Studio (cancelled ones too): the task fields, `annotator` (a pseudonym),
  `lead_time`, `was_cancelled`, `ground_truth`, `created_at`, `updated_at`, `split` (the task's aggregated split,
  null when it was not accepted), `result_error` (why a result that does not fit the schema has no labels) and one
  column per dimension, as the annotator answered. One split, `train` (all annotations; not a training split).

Label columns: single choice is a `ClassLabel` and -1 when not answered (what `datasets` itself uses for "no
label": `ClassLabel` accepts -1, and integer columns keep working with numpy/torch formatting, which nulls do not).
Multi choice is a list of `ClassLabel` (null when not answered, `[]` when answered with nothing ticked); spans are a
list of {start, end, text, label: ClassLabel} (null when not answered). Empty splits are left out of the folder and
the card (`datasets` cannot load a split without rows).

Annotators are never written in clear: `annotator` is `a-` + 16 hex digits of HMAC-SHA256(salt, Label Studio user
id). The salt comes from `salt` (`--salt`) or WORKBENCH_EXPORT_SALT; without one a random salt is made for this
export and thrown away, so pseudonyms are stable within one export only. Pass the same salt to link exports.

Writing is atomic: the folder is built in a temporary sibling of DIR and renamed into place only when complete;
an existing DIR is replaced only if it is empty or holds a previous export of this tool (its `.workbench-export`
marker, written last). A write that fails (a full disk) is one line and leaves DIR as it was.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from annotation_config.annotations import annotator_of, is_cancelled, is_ground_truth, task_key
from annotation_config.errors import WorkbenchError
from annotation_config.regions import RegionError, results_to_labels
from annotation_config.schema import Dimension, Schema
from exchange.bundle import AGGREGATED, EXPORT_MARKER, RAW, RAW_SPLIT, ExportBundle
from exchange.importer import (
    ANNOTATOR,
    CREATED_AT,
    GROUND_TRUTH,
    LEAD_TIME,
    UPDATED_AT,
    WAS_CANCELLED,
)
from training.data import SPLITS, AcceptancePolicy, Example, accept, split_examples

SALT_ENV = "WORKBENCH_EXPORT_SALT"


class DatasetExportError(WorkbenchError):
    """The export cannot be written (nothing accepted, a folder in the way, a column clash)."""


class PushError(WorkbenchError):
    """The Hub (or its stand-in) refused or could not be reached."""


def resolve_salt(salt: str | None) -> tuple[str, str]:
    """The salt and where it came from: the option, the environment, or random for this export."""
    if salt:
        return salt, "option"
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV], "environment"
    return secrets.token_hex(16), "random"


def pseudonym(annotator: Any, salt: str) -> str | None:
    """A salted, keyed hash of a Label Studio annotator id (None for annotations without one)."""
    if annotator is None:
        return None
    digest = hmac.new(salt.encode("utf-8"), str(annotator).encode("utf-8"), hashlib.sha256).hexdigest()
    return f"a-{digest[:16]}"


# ---- features and rows ----


def _metadata_fields(schema: Schema) -> list[str]:
    """Task fields that are neither the key nor shown (extra and group), in schema order."""
    shown = {schema.data.key, *schema.data.shown_fields}
    return [name for name in schema.data.all_fields if name not in shown]


def _infer_value(values: Sequence[Any]):
    """The `datasets.Value` of a metadata column: bool, int64, float64, or string (JSON for anything else)."""
    from datasets import Value

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return Value("bool")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return Value("int64")
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return Value("float64")
    return Value("string")


def _cast_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "string" and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
    if kind == "float64":
        return float(value)
    return value


def label_features(schema: Schema) -> dict[str, Any]:
    """One feature per dimension: ClassLabel, list of ClassLabel, or list of span structs."""
    from datasets import ClassLabel, List, Value

    out: dict[str, Any] = {}
    for dim in schema.dimensions:
        names = ClassLabel(names=dim.values)
        if dim.kind == "single":
            out[dim.name] = names
        elif dim.kind == "multi":
            out[dim.name] = List(names)
        else:
            out[dim.name] = List(
                {"start": Value("int32"), "end": Value("int32"), "text": Value("string"), "label": names}
            )
    return out


def _task_features(schema: Schema, tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from datasets import Value

    columns: dict[str, Any] = {schema.data.key: Value("string")}
    for name in schema.data.shown_fields:
        columns[name] = Value("string")
    for name in _metadata_fields(schema):
        columns[name] = _infer_value([(t.get("data") or {}).get(name) for t in tasks])
    return columns


def _check_clash(columns: Mapping[str, Any], reserved: Sequence[str]) -> None:
    for name in reserved:
        if name in columns:
            raise DatasetExportError(
                f"the schema uses {name!r} as a field or dimension name, which the export needs for itself; rename it"
            )


def _task_columns(data: Mapping[str, Any], key: str, schema: Schema, features: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {schema.data.key: key}
    for name in schema.data.shown_fields:
        value = data.get(name)
        row[name] = "" if value is None else str(value)
    for name in _metadata_fields(schema):
        row[name] = _cast_value(data.get(name), features[name].dtype)
    return row


def encode_labels(schema: Schema, labels: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """A label record as dataset values: class indices, -1 / null for "not answered", span texts filled in."""
    out: dict[str, Any] = {}
    for dim in schema.dimensions:
        out[dim.name] = _encode(dim, labels.get(dim.name), data)
    return out


def _encode(dim: Dimension, value: Any, data: Mapping[str, Any]) -> Any:
    index = {v: i for i, v in enumerate(dim.values)}
    if dim.kind == "single":
        return -1 if value is None else index[value]
    if value is None:
        return None
    if dim.kind == "multi":
        return [index[v] for v in dim.values if v in set(value)]
    text = str(data.get(dim.field or "") or "")
    return [
        {"start": s["start"], "end": s["end"], "text": text[s["start"] : s["end"]], "label": index[s["label"]]}
        for s in sorted(value, key=lambda s: (s["start"], s["end"], s["label"]))
    ]


def aggregated_rows(examples: Sequence[Example], schema: Schema, features: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per accepted example."""
    rows = []
    for example in examples:
        row = _task_columns(example.data, example.key, schema, features)
        row.update(encode_labels(schema, example.labels, example.data))
        row["n_annotators"] = example.annotators
        rows.append(row)
    return rows


def _timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.astimezone()


def raw_rows(
    tasks: Sequence[Mapping[str, Any]],
    schema: Schema,
    salt: str,
    features: Mapping[str, Any],
    split_of: Mapping[str, str],
) -> list[dict[str, Any]]:
    """One row per annotation (drafts and predictions are not annotations), in task then annotation order."""
    rows = []
    for index, task in enumerate(tasks):
        data = dict(task.get("data") or {})
        key = task_key(task, schema, index)
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, Mapping):
                continue
            row = _task_columns(data, key, schema, features)
            lead_time = annotation.get(LEAD_TIME)
            row.update(
                {
                    ANNOTATOR: pseudonym(annotator_of(annotation), salt),
                    LEAD_TIME: None if lead_time is None else float(lead_time),
                    WAS_CANCELLED: is_cancelled(annotation),
                    GROUND_TRUTH: is_ground_truth(annotation),
                    CREATED_AT: _timestamp(annotation.get(CREATED_AT)),
                    UPDATED_AT: _timestamp(annotation.get(UPDATED_AT)),
                    "split": split_of.get(key),
                    "result_error": None,
                }
            )
            labels: dict[str, Any] = {}
            if not is_cancelled(annotation):
                try:
                    labels = results_to_labels(schema, annotation.get("result") or [], data)
                except RegionError as error:
                    row["result_error"] = str(error)
            row.update(encode_labels(schema, labels, data))
            rows.append(row)
    return rows


def build_export(
    tasks: Sequence[Mapping[str, Any]],
    schema: Schema,
    *,
    salt: str | None = None,
    seed: int = 42,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    policy: AcceptancePolicy | None = None,
    source: str = "",
) -> ExportBundle:
    """Both configurations in memory, with agreement figures; raises DatasetExportError when nothing was accepted."""
    from datasets import Dataset, DatasetDict, Features, Value

    from exchange.agreement import agreement_report

    salt, salt_source = resolve_salt(salt)
    accepted = accept(tasks, schema, policy)
    if not accepted.examples:
        raise DatasetExportError(f"no accepted annotations to export ({accepted.summary()})")
    task_features = _task_features(schema, tasks)
    labels = label_features(schema)
    aggregated_extra = {"n_annotators": Value("int32")}
    raw_extra = {
        ANNOTATOR: Value("string"),
        LEAD_TIME: Value("float64"),
        WAS_CANCELLED: Value("bool"),
        GROUND_TRUTH: Value("bool"),
        CREATED_AT: Value("timestamp[us, tz=UTC]"),
        UPDATED_AT: Value("timestamp[us, tz=UTC]"),
        "split": Value("string"),
        "result_error": Value("string"),
    }
    _check_clash({**task_features, **labels}, [*aggregated_extra, *raw_extra])
    aggregated_features = Features({**task_features, **labels, **aggregated_extra})
    raw_features = Features({**task_features, **raw_extra, **labels})

    parts = split_examples(accepted.examples, schema, seed=seed, ratios=ratios)
    split_of = {e.key: name for name, examples in parts.items() for e in examples}
    aggregated = DatasetDict(
        {
            name: Dataset.from_list(aggregated_rows(parts[name], schema, task_features), features=aggregated_features)
            for name in SPLITS
            if parts[name]
        }
    )
    # Never empty: an accepted example has at least one annotation.
    raw_table = Dataset.from_list(raw_rows(tasks, schema, salt, task_features, split_of), features=raw_features)
    report = agreement_report(
        tasks, schema, policy, annotator_name=lambda who: pseudonym(who, salt) or "", accepted=accepted
    )
    return ExportBundle(
        aggregated=aggregated,
        raw=DatasetDict({RAW_SPLIT: raw_table}),
        accepted=accepted,
        agreement=report,
        salt_source=salt_source,
        seed=seed,
        ratios=tuple(float(r) for r in ratios),  # type: ignore[arg-type]
        source=source,
    )


# ---- writing and pushing ----


def data_files(bundle: ExportBundle) -> dict[str, dict[str, str]]:
    """Per configuration, split name -> parquet path inside the folder (the standard `config/split-*` layout)."""
    return {
        AGGREGATED: {name: f"{AGGREGATED}/{name}-00000-of-00001.parquet" for name in bundle.aggregated},
        RAW: {RAW_SPLIT: f"{RAW}/{RAW_SPLIT}-00000-of-00001.parquet"},
    }


def write_export(bundle: ExportBundle, schema: Schema, out: str | Path) -> Path:
    """Write parquet files and the card into a temporary sibling of `out`, then move it into place."""
    import datasets

    from exchange.dataset_card import build_dataset_card

    out = Path(out).resolve()
    _check_replaceable(out)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            files = data_files(bundle)
            for config, parts in ((AGGREGATED, bundle.aggregated), (RAW, bundle.raw)):
                for name, part in parts.items():
                    target = tmp / files[config][name]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    part.to_parquet(str(target))
        finally:
            if enabled:
                datasets.enable_progress_bars()
        build_dataset_card(bundle, schema, files).save(tmp / "README.md")
        (tmp / EXPORT_MARKER).write_text(
            "Written by `workbench export`; the next export to this folder may replace it.\n", encoding="utf-8"
        )
        _move_into_place(tmp, out)
    except OSError as error:  # a full disk, no permission: pyarrow and huggingface_hub raise OSError subclasses
        reason = error.strerror or str(error).strip().split("\n")[0] or type(error).__name__
        raise DatasetExportError(
            f"cannot write the export to {out} ({reason}); nothing there was changed: "
            "free space or choose another --out"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was moved into place
    return out


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetExportError(f"{out} exists and is not a folder; choose another --out")
    if any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise DatasetExportError(
            f"{out} exists and is not an export of this tool (no {EXPORT_MARKER} file); "
            "choose an empty or new folder for --out"
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_dataset(
    tasks: Sequence[Mapping[str, Any]], schema: Schema, out: str | Path, **options: Any
) -> tuple[Path, ExportBundle]:
    """Build and write an export (options as in `build_export`); returns the folder and the bundle."""
    bundle = build_export(tasks, schema, **options)
    return write_export(bundle, schema, out), bundle


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    endpoint: str | None = None,
    message: str = "Export from stance-workbench",
) -> str:
    """Create the dataset repo if needed and upload the folder in one commit; returns the commit URL.

    The token is `token`, else HF_TOKEN or the saved login (huggingface_hub's own lookup); the endpoint is
    `endpoint`, else HF_ENDPOINT. Parquet files of earlier exports that this one no longer has are deleted in the
    same commit. A new repo is private unless `private` is False (the raw configuration holds per-annotator
    timestamps); an existing repo keeps its visibility.
    """
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        # upload_folder makes one commit for a folder of a few files (it batches only from hundreds of files).
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            commit_message=message,
            delete_patterns=["*.parquet", "**/*.parquet"],
            ignore_patterns=[EXPORT_MARKER],  # a local guard, not part of the dataset
        )
    except LocalTokenNotFoundError:
        raise PushError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`") from None
    except HfHubHTTPError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PushError(f"could not push to {repo_id}: {first}") from None
    except (httpx.HTTPError, OSError) as error:
        raise PushError(
            f"could not push to {repo_id}: {type(error).__name__}: {error}; is the Hub reachable?"
        ) from None
    except ValueError as error:  # huggingface_hub's check of the card's YAML, a malformed repo id
        raise PushError(f"could not push to {repo_id}: {' '.join(str(error).split())}") from None
    return str(info.commit_url)
