"""Schema loading and validation: the sample is valid, broken files fail with one precise line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from annotation_config.schema import DEFAULT_SCHEMA_PATH, SchemaError, load_schema, parse_schema

FIXTURES = Path(__file__).parent / "fixtures"
SRC = yaml.safe_load(DEFAULT_SCHEMA_PATH.read_text(encoding="utf-8"))


def test_sample_schema_expands_stance_per_target(schema):
    names = [d.name for d in schema.dimensions]
    assert names == [
        "stance_russia_china",
        "stance_us_policy",
        "stance_nato_enlargement",
        "threat_characterization",
        "frames",
        "evidence",
    ]
    stance = schema.dimension("stance_us_policy")
    assert stance.target is not None and stance.target.name == "US foreign policy"
    assert stance.title == "Stance toward US foreign policy"
    assert "US foreign policy" in stance.label("favor").definition
    assert schema.dimension("threat_characterization").values == [
        "manufactured",
        "genuine",
        "contested",
        "not_applicable",
    ]
    assert len(schema.dimension("frames").values) == 14
    assert schema.dimension("evidence").values == ["threat_claim", "framing_cue", "actor"]
    assert all(d.field == "text" for d in schema.dimensions)


def test_hash_is_stable_and_follows_content():
    first, second = parse_schema(SRC), parse_schema(SRC)
    assert first.hash == second.hash
    changed = yaml.safe_load(DEFAULT_SCHEMA_PATH.read_text(encoding="utf-8"))
    changed["dimensions"][1]["labels"][0]["cues"].append("staged")
    assert parse_schema(changed).hash != first.hash


def test_target_mentions_are_groups_of_alternatives():
    """`mentions`: a flat list is one group of alternatives, a list of lists needs a word of every group; optional."""
    raw = _broken(lambda r: None)
    raw["targets"][0]["mentions"] = [["Russia", "Moscow"], "China"]
    raw["targets"][1]["mentions"] = ["US", "Washington"]
    del raw["targets"][2]["mentions"]
    targets = parse_schema(raw).targets
    assert targets[0].mentions == [["Russia", "Moscow"], ["China"]]
    assert targets[1].mentions == [["US", "Washington"]]
    assert targets[2].mentions == []  # schemas without mentions still load
    assert load_schema().targets[0].mentions[1][:3] == ["China", "Chinese", "Beijing"]
    raw["targets"][0]["mentions"] = [["Russia", " "]]
    with pytest.raises(SchemaError, match=r"targets\[0\]\.mentions: group 1 .* must be a non-empty list"):
        parse_schema(raw, "schema.yaml")


def test_other_schema_with_other_fields(tmp_path):
    other = load_schema(FIXTURES / "headline_body.yaml")
    assert other.data.shown_fields == ["body", "headline"]
    assert other.dimension("clickbait").field == "headline"
    assert other.dimension("topics").field == "body"


def _broken(mutate) -> dict:
    raw = yaml.safe_load(DEFAULT_SCHEMA_PATH.read_text(encoding="utf-8"))
    mutate(raw)
    return raw


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda r: r["dimensions"][1].update(kind="singel"),
            "dimensions[1].kind: Input should be 'single', 'multi' or 'spans' (got 'singel')",
        ),
        (
            lambda r: r["dimensions"][1]["labels"].append(dict(r["dimensions"][1]["labels"][0])),
            "dimensions[1].labels[4]: duplicate label 'manufactured'",
        ),
        (lambda r: r["dimensions"][2].update(labels=[]), "dimensions[2].labels: List should have at least 1 item"),
        (
            lambda r: r["dimensions"][1].update(field="body"),
            "(threat_characterization).field: 'body' is not a text or context field",
        ),
        (lambda r: r["dimensions"][3].update(name="frames"), "dimensions[5].name: 'frames' is used twice"),
        (lambda r: r.pop("targets"), "dimensions[0].per_target: no targets are defined"),
        (lambda r: r["dimensions"][1].update(colour="red"), "dimensions[1].colour: Extra inputs are not permitted"),
        (
            lambda r: r["dimensions"][1]["labels"][0].pop("definition"),
            "dimensions[1].labels[0].definition: Field required",
        ),
        (
            lambda r: r["dimensions"][1].update(labels=[{"value": "x", "definition": "only one"}]),
            "a single-choice dimension needs at least two labels",
        ),
        (lambda r: r["dimensions"][1].update(name="threat characterization"), "is not a valid name"),
        (lambda r: r["targets"].append(dict(r["targets"][0])), "targets[3].id: duplicate target 'russia_china'"),
        (lambda r: r["data"]["context"][1].update(name="source"), "data: field 'source' is reserved by Label Studio"),
    ],
)
def test_broken_schema_fails_with_path_and_fix(mutate, expected):
    with pytest.raises(SchemaError) as caught:
        parse_schema(_broken(mutate), "schema.yaml")
    message = str(caught.value)
    assert message.startswith("schema.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_bad_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text("name: x\ndimensions:\n  - name: a\n    kind: [single\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"schema.yaml: line \d+, column \d+: invalid YAML"):
        load_schema(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(SchemaError, match="no such schema file"):
        load_schema(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(SchemaError, match="top level must be a mapping"):
        load_schema(tmp_path / "list.yaml")


def test_cli_validate_broken_schema_exits_nonzero_with_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(_broken(lambda r: r["dimensions"][1].update(kind="singel"))), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "config", "validate", "--schema", str(path)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0] and "dimensions[1].kind" in lines[0]
    assert "Traceback" not in done.stderr


def test_cli_validate_sample_schema_succeeds():
    done = subprocess.run([sys.executable, "-m", "workbench", "config", "validate"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")
