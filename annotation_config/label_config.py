"""Generate the Label Studio labeling config (XML) from the schema, and check it with label-studio-sdk's parser."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from annotation_config.errors import WorkbenchError
from annotation_config.schema import Schema

COMMITTED_CONFIG_PATH = Path(__file__).with_name("label_config.xml")

# Distinct, readable highlight colours for span labels (cycled).
_SPAN_COLOURS = ["#f4a261", "#2a9d8f", "#e9c46a", "#8ecae6", "#e76f51", "#b5838d", "#90be6d", "#cdb4db"]

# Offsets count every character only if whitespace is kept as is (Label Studio's own advice for NER).
_STYLE = """
.htx-text { white-space: pre-wrap; line-height: 1.6; }
.wb-context { font-size: 0.9em; color: #555; margin-bottom: 0.5em; }
.wb-question { margin-top: 0.75em; }
"""


class LabelConfigError(WorkbenchError, ValueError):
    """The generated or given label config is not valid for Label Studio or does not match the schema."""


def render_label_config(schema: Schema) -> str:
    """The Label Studio XML for a schema: context fields, span labels above the text, one Choices per question."""
    view = ET.Element("View")
    ET.SubElement(view, "Style").text = _STYLE
    for context in schema.data.context:
        block = ET.SubElement(view, "View", className="wb-context")
        ET.SubElement(block, "Header", value=context.title or context.name, size="6")
        ET.SubElement(block, "Text", name=context.name, value=f"${context.name}")
    for dim in schema.of_kind("spans"):
        labels = ET.SubElement(view, "Labels", name=dim.name, toName=dim.field or schema.data.text)
        for i, label in enumerate(dim.labels):
            ET.SubElement(labels, "Label", value=label.value, hint=label.definition, background=_SPAN_COLOURS[i % 8])
    ET.SubElement(view, "Header", value="Paragraph", size="5")
    ET.SubElement(view, "Text", name=schema.data.text, value=f"${schema.data.text}")
    for dim in schema.of_kind("single", "multi"):
        block = ET.SubElement(view, "View", className="wb-question")
        ET.SubElement(block, "Header", value=dim.title or dim.name, size="5")
        attrs = {
            "name": dim.name,
            "toName": dim.field or schema.data.text,
            "choice": "single-radio" if dim.kind == "single" else "multiple",
            "showInline": "true",
        }
        if dim.required:
            attrs["required"] = "true"
        choices = ET.SubElement(block, "Choices", **attrs)
        for label in dim.labels:
            ET.SubElement(choices, "Choice", value=label.value, hint=label.definition)
    ET.indent(view, space="  ")
    return ET.tostring(view, encoding="unicode") + "\n"


def validate_label_config(xml: str, schema: Schema) -> None:
    """Parse the XML with label-studio-sdk and check it holds one control per dimension with the same labels."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(xml)
        interface.validate()
    except Exception as error:  # the SDK raises several types; all mean "Label Studio would refuse this"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LabelConfigError(f"Label Studio rejects the config: {first_line}") from None
    problems = config_differences(xml, schema)
    if problems:
        raise LabelConfigError("the config does not match the schema: " + "; ".join(problems))


def config_differences(xml: str, schema: Schema) -> list[str]:
    """What a label config lacks or adds compared with the schema (empty when compatible)."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(xml)
    except Exception as error:
        return [f"the label config cannot be parsed ({str(error).strip().splitlines()[0]})"]
    expected_tag = {"single": "choices", "multi": "choices", "spans": "labels"}
    controls = {control.name: control for control in interface.controls}
    problems: list[str] = []
    for dim in schema.dimensions:
        control = controls.get(dim.name)
        if control is None:
            problems.append(f"missing control {dim.name!r} ({dim.kind})")
            continue
        if control.tag.lower() != expected_tag[dim.kind]:
            problems.append(f"control {dim.name!r} is <{control.tag}>, expected {expected_tag[dim.kind]}")
        if dim.kind == "multi" or dim.kind == "single":
            is_multiple = control.attr.get("choice") == "multiple"
            if is_multiple != (dim.kind == "multi"):
                problems.append(f"control {dim.name!r} choice mode does not match kind {dim.kind!r}")
        target = dim.field or schema.data.text
        if target not in control.to_name:
            problems.append(f"control {dim.name!r} points at {control.to_name}, expected {target!r}")
        have = set(control.labels)
        for value in dim.values:
            if value not in have:
                problems.append(f"control {dim.name!r} lacks label {value!r}")
        for value in sorted(have - set(dim.values)):
            problems.append(f"control {dim.name!r} has unknown label {value!r}")
    return problems
