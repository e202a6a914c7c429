"""The Label Studio XML generated from the schema: committed copy, SDK validity, and drift detection."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from annotation_config.label_config import (
    COMMITTED_CONFIG_PATH,
    LabelConfigError,
    config_differences,
    render_label_config,
    validate_label_config,
)
from annotation_config.schema import load_schema

FIXTURES = Path(__file__).parent / "fixtures"


def test_committed_config_matches_generator(schema):
    assert COMMITTED_CONFIG_PATH.read_text(encoding="utf-8") == render_label_config(schema), (
        "label_config.xml is stale: run `workbench config render > annotation_config/label_config.xml`"
    )


def test_rendered_config_is_valid_for_label_studio(schema):
    validate_label_config(render_label_config(schema), schema)


def test_rendering_has_one_control_per_dimension_with_hints(schema):
    root = ET.fromstring(render_label_config(schema))
    choices = {c.get("name"): c for c in root.iter("Choices")}
    assert set(choices) == {d.name for d in schema.of_kind("single", "multi")}
    assert choices["frames"].get("choice") == "multiple"
    assert choices["threat_characterization"].get("choice") == "single-radio"
    manufactured = choices["threat_characterization"].find("Choice[@value='manufactured']")
    assert manufactured is not None
    assert manufactured.get("hint") == schema.dimension("threat_characterization").label("manufactured").definition
    spans = list(root.iter("Labels"))
    assert [s.get("name") for s in spans] == ["evidence"]
    assert [label.get("value") for label in spans[0]] == ["threat_claim", "framing_cue", "actor"]
    texts = {t.get("name"): t.get("value") for t in root.iter("Text")}
    assert texts == {"text": "$text", "title": "$title", "publication": "$publication", "date": "$date"}


def test_other_schema_renders_and_validates():
    other = load_schema(FIXTURES / "headline_body.yaml")
    xml = render_label_config(other)
    validate_label_config(xml, other)
    root = ET.fromstring(xml)
    assert root.find(".//Labels[@name='names']").get("toName") == "headline"
    assert root.find(".//Choices[@name='topics']").get("toName") == "body"


def test_differences_name_missing_controls_and_labels(schema):
    xml = render_label_config(schema)
    assert config_differences(xml, schema) == []
    tampered = xml.replace('<Choice value="genuine"', '<Choice value="real"').replace('name="frames"', 'name="frame"')
    problems = config_differences(tampered, schema)
    assert "missing control 'frames' (multi)" in problems
    assert "control 'threat_characterization' lacks label 'genuine'" in problems
    assert "control 'threat_characterization' has unknown label 'real'" in problems
    with pytest.raises(LabelConfigError, match="does not match the schema"):
        validate_label_config(tampered, schema)


def test_invalid_xml_is_rejected(schema):
    with pytest.raises(LabelConfigError, match="Label Studio rejects the config"):
        validate_label_config('<View><Choices name="a" toName="missing"><Choice value="x"/></Choices></View>', schema)
    with pytest.raises(LabelConfigError, match="Label Studio rejects the config"):
        validate_label_config("<View><Choices", schema)
