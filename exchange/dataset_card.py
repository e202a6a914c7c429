"""The dataset card (README.md) of an export: YAML metadata + a Markdown body from dataset_card_template.md."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from annotation_config.schema import Schema
from training.model_card import format_value

if TYPE_CHECKING:
    from exchange.bundle import ExportBundle

TEMPLATE_NAME = "dataset_card_template.md"
_KIND_TEXT = {"single": "Single choice", "multi": "Multiple choice (any number)", "spans": "Span labels"}


def size_category(n: int) -> str:
    """The Hub's size category for n rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
    ]
    return next((name for bound, name in bounds if n < bound), "n>1T" if n > 10**12 else "100M<n<1B")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def card_data(bundle: ExportBundle, schema: Schema, files: Mapping[str, Mapping[str, str]]):
    """The card's YAML metadata: configs with data files per split, license, language, tasks, size."""
    from huggingface_hub import DatasetCardData

    from exchange.bundle import MARKER_TAG

    kinds = {d.kind for d in schema.dimensions}
    task_ids = [
        name
        for kind, name in (("single", "multi-class-classification"), ("multi", "multi-label-classification"))
        if kind in kinds
    ]
    configs = [
        {
            "config_name": config,
            "data_files": [
                {"split": split, "path": path.replace("-00000-of-00001", "-*")} for split, path in parts.items()
            ],
            **({"default": True} if i == 0 else {}),
        }
        for i, (config, parts) in enumerate(files.items())
    ]
    rows = sum(bundle.split_sizes.values())
    return DatasetCardData(
        language=[schema.language],
        license=schema.license,
        pretty_name=schema.name,
        task_categories=["text-classification", *(["token-classification"] if "spans" in kinds else [])],
        task_ids=task_ids,
        size_categories=[size_category(rows)],
        annotations_creators=["expert-generated"],
        tags=["stance-detection", "framing", "label-studio", MARKER_TAG],
        configs=configs,
    )


def _columns(schema: Schema, bundle: ExportBundle) -> list[dict[str, str]]:
    features = next(iter(bundle.aggregated.values())).features
    roles = {schema.data.key: "task key (stable across Label Studio projects)", schema.data.text: "the labelled text"}
    for ctx in schema.data.context:
        roles[ctx.name] = f"context shown to annotators ({ctx.title or ctx.name})"
    for name in schema.data.extra:
        roles.setdefault(name, "task metadata (not shown to annotators)")
    if schema.data.group:
        roles[schema.data.group] = roles.get(schema.data.group, "task metadata") + "; the split group"
    for dim in schema.dimensions:
        roles[dim.name] = f"{dim.title or dim.name} ({dim.kind})"
    roles["n_annotators"] = "`aggregated` only: annotators whose votes were counted for the task"
    out = []
    for name, feature in features.items():
        out.append({"name": name, "type": _type_name(feature), "meaning": _cell(roles.get(name, ""))})
    return out


def _type_name(feature: Any) -> str:
    from datasets import ClassLabel, List, Value

    if isinstance(feature, ClassLabel):
        return f"ClassLabel ({feature.num_classes})"
    if isinstance(feature, List):
        inner = feature.feature
        if isinstance(inner, ClassLabel):
            return f"list of ClassLabel ({inner.num_classes})"
        if isinstance(inner, dict):
            return "list of {" + ", ".join(inner) + "}"
        return f"list of {_type_name(inner)}"
    if isinstance(feature, Value):
        return feature.dtype
    return type(feature).__name__


def build_dataset_card(bundle: ExportBundle, schema: Schema, files: Mapping[str, Mapping[str, str]]):
    """A huggingface_hub.DatasetCard for an export bundle."""
    from pathlib import Path

    from huggingface_hub import DatasetCard

    from exchange.agreement import summary_rows

    report = bundle.agreement
    accepted = bundle.accepted
    counts = dict(report.get("counts") or {})
    counts["rows in aggregated"] = sum(bundle.split_sizes.values())
    counts["rows in raw"] = len(bundle.raw["train"])
    counts["tasks without a counted annotation"] = accepted.unlabeled
    reasons = Counter(h.reason.split(":")[0] for h in accepted.held_out)
    dimensions = [
        {
            "name": d.name,
            "title": d.title or d.name,
            "kind_text": _KIND_TEXT[d.kind],
            "field": d.field,
            "target": d.target.name if d.target else "",
            "labels": [{"value": label.value, "definition": _cell(label.definition)} for label in d.labels],
        }
        for d in schema.dimensions
    ]
    rows = [
        {k: (format_value(v) if k in {"alpha", "kappa_mean", "percent_agreement"} else v) for k, v in r.items()}
        for r in summary_rows(report)
    ]
    salt_text = {
        "option": "given with --salt (pseudonyms match other exports made with the same salt)",
        "environment": "from WORKBENCH_EXPORT_SALT (pseudonyms match other exports made with the same salt)",
        "random": "random for this export and not kept (pseudonyms cannot be linked to other exports)",
    }[bundle.salt_source]
    return DatasetCard.from_template(
        card_data(bundle, schema, files),
        template_path=str(Path(__file__).with_name(TEMPLATE_NAME)),
        pretty_name=schema.name,
        description=(schema.description or "Stance and framing labels on text.").strip(),
        exported_at=bundle.exported_at,
        source=bundle.source or "a Label Studio export",
        schema_name=schema.name,
        schema_hash=schema.hash,
        split_names=", ".join(bundle.split_sizes),
        first_split=next(iter(bundle.split_sizes)),
        first_dimension=schema.dimensions[0].name,
        group_field=schema.data.group or schema.data.key,
        seed=bundle.seed,
        ratios=" / ".join(f"{r:g}" for r in bundle.ratios),
        split_sizes=bundle.split_sizes,
        raw_rows=len(bundle.raw["train"]),
        columns=_columns(schema, bundle),
        dimensions=dimensions,
        instructions=(schema.instructions or "No instructions were given in the schema.").strip(),
        policy=report.get("policy") or {},
        counts=counts,
        agreement_rows=rows,
        held_out_total=len(accepted.held_out),
        held_out_reasons=", ".join(f"{n} {reason}" for reason, n in reasons.most_common()),
        salt_text=salt_text,
    )
