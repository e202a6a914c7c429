"""The Hugging Face model card of a trained version: metadata + a Markdown body from model_card_template.md."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).with_name("model_card_template.md")


def format_value(value: Any) -> str:
    """A figure as every card and table shows it: 3 decimals for floats, "n/a" for None."""
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def metric_rows(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """One table row per dimension: the headline metric of its kind and its ECE."""
    rows = []
    for name, m in (report.get("dimensions") or {}).items():
        if m.get("kind") == "spans":
            metric, value = (
                "partial / exact span F1",
                f"{format_value((m.get('partial') or {}).get('f1'))} / "
                + format_value((m.get("exact") or {}).get("f1")),
            )
        elif m.get("kind") == "multi":
            metric, value = "macro / micro F1", f"{format_value(m.get('macro_f1'))} / {format_value(m.get('micro_f1'))}"
        else:
            metric, value = "macro-F1", format_value(m.get("macro_f1"))
            if "f_avg" in m:
                metric, value = "macro-F1 / F_avg", f"{value} / {format_value(m['f_avg'])}"
        rows.append(
            {"name": name, "n": str(m.get("n", 0)), "metric": metric, "value": value, "ece": format_value(m.get("ece"))}
        )
    return rows


def build_card(manifest: Mapping[str, Any], report: Mapping[str, Any], language: str = "en", license: str = "other"):
    """A huggingface_hub.ModelCard for a version (manifest + test report)."""
    from huggingface_hub import ModelCard, ModelCardData

    encoder = str(manifest.get("encoder", ""))
    base_model = encoder if "/" in encoder and not Path(encoder).exists() else None
    if encoder in {"all-MiniLM-L6-v2", "default", ""}:
        base_model = "sentence-transformers/all-MiniLM-L6-v2"
    dims = manifest.get("dimensions") or []
    data = ModelCardData(
        model_name=f"{manifest.get('schema_name', 'workbench')} {manifest.get('version', '')}".strip(),
        base_model=base_model,
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["stance-detection", "framing", "multi-task", "label-studio", "stance-workbench"],
        metrics=["f1"],
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=data.model_name,
        version=manifest.get("version"),
        encoder=encoder,
        schema_name=manifest.get("schema_name"),
        schema_hash=manifest.get("schema_hash"),
        examples=manifest.get("examples"),
        data_hash=manifest.get("data_hash"),
        split_sizes=json.dumps(manifest.get("splits") or {}),
        group=manifest.get("group_field") or "task key",
        created_at=manifest.get("created_at"),
        device=(manifest.get("timings") or {}).get("device", "cpu"),
        train_seconds=format_value((manifest.get("timings") or {}).get("train_seconds")),
        seed=(manifest.get("hyperparameters") or {}).get("seed"),
        code_revision=manifest.get("code_revision") or "unknown",
        dimensions=[
            {
                "name": d["name"],
                "kind": d["kind"],
                "target": (d.get("target") or {}).get("name"),
                "labels": ", ".join(d["labels"]),
            }
            for d in dims
        ],
        primary_metric=report.get("primary_metric", ""),
        primary=format_value(report.get("primary")),
        metric_rows=metric_rows(report),
        stance_f_avg=format_value(report["stance_f_avg"]) if report.get("stance_f_avg") is not None else None,
        hyperparameters=json.dumps(manifest.get("hyperparameters") or {}, indent=2),
    )


def write_card(folder: str | Path, manifest: Mapping[str, Any], report: Mapping[str, Any], **kwargs: Any) -> Path:
    """Write README.md (the model card) into a version folder."""
    path = Path(folder) / "README.md"
    build_card(manifest, report, **kwargs).save(path)
    return path
