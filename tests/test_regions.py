"""Label Studio result JSON <-> label records: round trips (emoji, Persian, quotes) and precise rejections."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotation_config.regions import RegionError, labels_to_results, results_to_labels
from annotation_config.schema import load_schema

FIXTURES = Path(__file__).parent / "fixtures"

# Emoji outside the BMP (one code point, two UTF-16 units), a flag (two code points), Persian, typographic quotes.
TEXT = "Russia 😀 and China 🇷🇺 signed “a pact” — پیمان روسیه و چین — said NATO."


def span(text: str, word: str, label: str) -> dict:
    start = text.index(word)
    return {"start": start, "end": start + len(word), "text": word, "label": label}


def test_round_trip_every_kind_with_non_ascii(schema):
    labels = {
        "stance_russia_china": "favor",
        "threat_characterization": "contested",
        "frames": ["Security_and_defense", "Political"],
        "evidence": [
            span(TEXT, "China", "actor"),
            span(TEXT, "پیمان روسیه", "framing_cue"),
            span(TEXT, "NATO", "actor"),
        ],
    }
    results = labels_to_results(schema, labels, {"text": TEXT})
    by_name = {}
    for item in results:
        by_name.setdefault(item["from_name"], []).append(item)
    assert by_name["threat_characterization"][0]["value"] == {"choices": ["contested"]}
    assert by_name["frames"][0]["value"]["choices"] == ["Security_and_defense", "Political"]  # schema order
    nato = [r for r in by_name["evidence"] if r["value"]["labels"] == ["actor"]][-1]["value"]
    # Offsets are code points: the emoji and each flag half count as one, as in Label Studio's Text tag.
    assert TEXT[nato["start"] : nato["end"]] == "NATO"
    assert nato["start"] == len(TEXT) - len("NATO.")
    back = results_to_labels(schema, results, {"text": TEXT})
    assert back == {**labels, "frames": ["Security_and_defense", "Political"]}


def test_region_with_several_labels_becomes_several_spans(schema):
    result = {
        "from_name": "evidence",
        "to_name": "text",
        "type": "labels",
        "value": {"start": 0, "end": 6, "text": "Russia", "labels": ["actor", "framing_cue"]},
    }
    labels = results_to_labels(schema, [result], {"text": TEXT})
    assert [s["label"] for s in labels["evidence"]] == ["actor", "framing_cue"]
    assert all(s["text"] == "Russia" for s in labels["evidence"])


def test_scores_are_attached_for_predictions(schema):
    labels = {"threat_characterization": "genuine", "evidence": [{**span(TEXT, "NATO", "actor"), "score": 0.42}]}
    results = labels_to_results(schema, labels, {"text": TEXT}, scores={"threat_characterization": 0.61})
    assert [r.get("score") for r in results] == [0.61, 0.42]


def test_empty_and_missing_dimensions(schema):
    labels = results_to_labels(schema, [], {"text": TEXT})
    assert labels == {"frames": [], "evidence": []}
    assert labels_to_results(schema, labels, {"text": TEXT}) == []


def choice(name: str, *values: str) -> dict:
    return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": list(values)}}


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (choice("stance_mars", "favor"), r"result\[0\]\.from_name: unknown control 'stance_mars'"),
        (
            choice("threat_characterization", "real"),
            r"result\[0\] \(threat_characterization\)\.value\.choices: unknown label 'real'",
        ),
        (choice("threat_characterization", "genuine", "contested"), "needs exactly one, got 2"),
        ({**choice("frames", "Economic"), "to_name": "title"}, r"\.to_name: expected 'text', got 'title'"),
        (
            {
                "from_name": "evidence",
                "to_name": "text",
                "type": "labels",
                "value": {"start": 5, "end": 500, "labels": ["actor"]},
            },
            r"span 5\.\.500 is out of range for a text of \d+ characters",
        ),
        (
            {
                "from_name": "evidence",
                "to_name": "text",
                "type": "labels",
                "value": {"start": 0, "end": 6, "text": "Russi", "labels": ["actor"]},
            },
            r"value\.text: 'Russi' does not match the task text at 0\.\.6 \('Russia'\)",
        ),
        (
            {
                "from_name": "evidence",
                "to_name": "text",
                "type": "labels",
                "value": {"start": 0, "end": 6, "labels": ["villain"]},
            },
            "unknown label 'villain'",
        ),
        ({"type": "relation", "from_id": "a", "to_id": "b"}, "relations are not part of the schema"),
        ("not a region", r"result\[0\]: expected an object"),
    ],
)
def test_results_that_do_not_fit_are_rejected_precisely(schema, result, message):
    with pytest.raises(RegionError, match=message):
        results_to_labels(schema, [result], {"text": TEXT})


def test_labels_that_do_not_fit_are_rejected(schema):
    with pytest.raises(RegionError, match="not a dimension"):
        labels_to_results(schema, {"mood": "happy"}, {"text": TEXT})
    with pytest.raises(RegionError, match="unknown label 'Sport'"):
        labels_to_results(schema, {"frames": ["Sport"]}, {"text": TEXT})
    with pytest.raises(RegionError, match="out of range"):
        labels_to_results(schema, {"evidence": [{"start": 3, "end": 999, "label": "actor"}]}, {"text": TEXT})


def test_other_schema_spans_on_headline():
    other = load_schema(FIXTURES / "headline_body.yaml")
    data = {"headline": "Smith 🏆 wins again", "body": "The final..."}
    labels = {"clickbait": "no", "topics": ["sport"], "names": [span(data["headline"], "Smith", "person")]}
    results = labels_to_results(other, labels, data)
    assert {r["to_name"] for r in results if r["from_name"] == "names"} == {"headline"}
    assert results_to_labels(other, results, data) == labels


@st.composite
def label_records(draw, schema):
    text = draw(st.text(min_size=1, max_size=40))
    labels: dict = {}
    for dim in schema.of_kind("single"):
        if draw(st.booleans()):
            labels[dim.name] = draw(st.sampled_from(dim.values))
    for dim in schema.of_kind("multi"):
        picked = draw(st.sets(st.sampled_from(dim.values)))
        labels[dim.name] = [v for v in dim.values if v in picked]
    for dim in schema.of_kind("spans"):
        spans = set()
        for _ in range(draw(st.integers(0, 3))):
            start = draw(st.integers(0, len(text) - 1))
            end = draw(st.integers(start + 1, len(text)))
            spans.add((start, end, draw(st.sampled_from(dim.values))))
        labels[dim.name] = [
            {"start": s, "end": e, "text": text[s:e], "label": lab}
            for s, e, lab in sorted(spans, key=lambda t: (t[0], t[1], t[2]))
        ]
    return text, labels


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_record_survives_a_round_trip(schema, data):
    text, labels = data.draw(label_records(schema))
    assert results_to_labels(schema, labels_to_results(schema, labels, {"text": text}), {"text": text}) == labels
