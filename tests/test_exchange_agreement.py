"""Agreement figures on small hand-made examples, checked against values worked out independently.

The single-choice example is Krippendorff's own (K. Krippendorff, "Computing Krippendorff's Alpha-Reliability",
2011, section C: 4 observers, 12 units, nominal data with missing values): alpha = 0.743. Cohen's kappa and
percent agreement are recomputed here from their textbook formulas, not with the packages the module uses.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter

import pytest

from annotation_config.regions import labels_to_results
from annotation_config.schema import parse_schema
from exchange.agreement import agreement_report, tokens

NAN = None
# Krippendorff (2011), observers A-D (rows) x units 1-12 (columns); None: the observer did not code the unit.
RELIABILITY = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    "C": [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
}


@pytest.fixture(scope="module")
def small_schema():
    return parse_schema(
        {
            "name": "agreement-example",
            "data": {"text": "text", "key": "key"},
            "dimensions": [
                {
                    "name": "value",
                    "kind": "single",
                    "labels": [{"value": str(v), "definition": f"value {v}"} for v in range(1, 6)],
                },
                {
                    "name": "topics",
                    "kind": "multi",
                    "labels": [{"value": "a", "definition": "A."}, {"value": "b", "definition": "B."}],
                },
                {"name": "names", "kind": "spans", "labels": [{"value": "actor", "definition": "An actor."}]},
            ],
        }
    )


def make_tasks(schema, coded: dict[str, list[dict | None]], texts: list[str]) -> list[dict]:
    """Label Studio tasks: coded[annotator][unit] is that annotator's label record (None: no annotation)."""
    tasks = []
    for unit, text in enumerate(texts):
        data = {"key": f"u{unit + 1}", "text": text}
        annotations = [
            {"id": f"{who}{unit}", "completed_by": who, "result": labels_to_results(schema, records[unit], data)}
            for who, records in coded.items()
            if records[unit] is not None
        ]
        tasks.append({"id": unit + 1, "data": data, "annotations": annotations})
    return tasks


def kappa_by_hand(a: list, b: list) -> float:
    """Cohen (1960): (p_o - p_e) / (1 - p_e) with p_e from the two raters' marginal proportions."""
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(a) | set(b)) / n**2
    return (p_o - p_e) / (1 - p_e)


def percent_by_hand(columns: list[list]) -> float:
    """Mean over units coded at least twice of the share of agreeing pairs of codes."""
    shares = []
    for values in columns:
        values = [v for v in values if v is not None]
        if len(values) >= 2:
            pairs = list(itertools.combinations(values, 2))
            shares.append(sum(x == y for x, y in pairs) / len(pairs))
    return sum(shares) / len(shares)


def test_krippendorff_example_single_choice(small_schema):
    coded = {
        who: [None if v is None else {"value": str(v), "topics": []} for v in row] for who, row in RELIABILITY.items()
    }
    report = agreement_report(make_tasks(small_schema, coded, ["x"] * 12), small_schema)
    value = report["dimensions"]["value"]

    assert value["alpha"] == pytest.approx(0.743, abs=5e-4)  # Krippendorff (2011): 0.743
    assert value["units"] == 11  # unit 12 was coded once
    columns = [[RELIABILITY[w][u] for w in RELIABILITY] for u in range(12)]
    assert value["percent_agreement"] == pytest.approx(percent_by_hand(columns))
    assert value["percent_agreement"] == pytest.approx(9 / 11)  # units 2 and 8: 1/2, unit 6: 0, the rest agree

    pairs = {(p["a"], p["b"]): p for p in value["pairs"]}
    assert pairs[("A", "B")]["kappa"] == pytest.approx(49 / 58)  # by hand: p_o = 8/9, p_e = 23/81
    for (a, b), pair in pairs.items():
        both = [u for u in range(12) if RELIABILITY[a][u] is not None and RELIABILITY[b][u] is not None]
        assert pair["n"] == len(both)
        assert pair["kappa"] == pytest.approx(
            kappa_by_hand([RELIABILITY[a][u] for u in both], [RELIABILITY[b][u] for u in both])
        )
        assert pair["agreement"] == pytest.approx(sum(RELIABILITY[a][u] == RELIABILITY[b][u] for u in both) / len(both))
    assert len(pairs) == 6
    assert value["kappa_mean"] == pytest.approx(sum(p["kappa"] for p in pairs.values()) / 6)

    # Against the aggregate (majority; unit 6 is a four-way tie, held out): A always sides with the majority,
    # C differs on units 2 and 8 of the 9 units it coded that have an accepted value.
    people = {p["annotator"]: p for p in value["annotators"]}
    assert (people["A"]["n"], people["A"]["accuracy"]) == (8, 1.0)
    assert (people["C"]["n"], people["C"]["accuracy"]) == (9, pytest.approx(7 / 9))
    assert [(h["key"], h["dimension"]) for h in report["adjudication"]] == [("u6", "value")]
    assert report["adjudication"][0]["reason"].startswith("tie:")
    assert report["counts"]["annotators"] == 4 and report["counts"]["annotations"] == 41


def test_multi_choice_and_spans_per_label(small_schema):
    text = "Russia warns NATO ."
    assert tokens(text) == [(0, 6), (7, 12), (13, 17), (18, 19)]
    russia, nato = {"start": 0, "end": 6, "label": "actor"}, {"start": 13, "end": 17, "label": "actor"}
    first = [{"topics": ["a"], "names": [russia, nato]}] + [{"topics": t} for t in (["a"], [], [])]
    second = [{"topics": ["a", "b"], "names": [russia]}] + [{"topics": t} for t in ([], [], [])]
    report = agreement_report(make_tasks(small_schema, {"p": first, "q": second}, [text] * 4), small_schema)

    # Label "a": p ticks units 1-2, q unit 1 only. By hand: p_o = 3/4, p_e = (2*1 + 2*3)/16 = 1/2, kappa = 1/2;
    # alpha = 1 - (n - 1) * D_o / D_e = 1 - 7 * 2 / (2 * 3 * 5) = 8/15 (8 values, 3 ones, one disagreeing unit).
    topic_a = report["dimensions"]["topics"]["labels"]["a"]
    assert topic_a["kappa_mean"] == pytest.approx(0.5) == pytest.approx(kappa_by_hand([1, 1, 0, 0], [1, 0, 0, 0]))
    assert topic_a["alpha"] == pytest.approx(8 / 15)
    assert topic_a["percent_agreement"] == pytest.approx(3 / 4)
    topic_b = report["dimensions"]["topics"]["labels"]["b"]
    assert topic_b["percent_agreement"] == pytest.approx(3 / 4)  # only q ticks b, once
    assert topic_b["kappa_mean"] == pytest.approx(0.0)  # p never ticks b: p_o = p_e = 3/4
    assert report["dimensions"]["topics"]["labels_used"] == 2

    # Spans: only unit 1 has spans; its 4 tokens are the units. p marks Russia and NATO, q only Russia: the same
    # 0/1 pattern as label "a" above, so the same figures.
    actor = report["dimensions"]["names"]["labels"]["actor"]
    assert actor["units"] == 4
    assert actor["kappa_mean"] == pytest.approx(0.5)
    assert actor["alpha"] == pytest.approx(8 / 15)
    assert actor["percent_agreement"] == pytest.approx(3 / 4)
    assert report["dimensions"]["names"]["alpha"] == pytest.approx(8 / 15)  # the only label used


def test_agreement_command_json_and_table(tmp_path, small_schema):
    from typer.testing import CliRunner

    from workbench.cli import app

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(small_schema.model_dump()))  # JSON is YAML
    coded = {who: [None if v is None else {"value": str(v)} for v in row] for who, row in RELIABILITY.items()}
    export = tmp_path / "export.json"
    export.write_text(json.dumps(make_tasks(small_schema, coded, ["x"] * 12)))
    args = ["agreement", "--from-export", str(export), "--schema", str(schema_file)]
    runner = CliRunner()
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["dimensions"]["value"]["alpha"] == pytest.approx(0.743, abs=5e-4)
    table = runner.invoke(app, args, env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "0.743" in table.stdout and "u6" in table.stdout and "tie" in table.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "workbench", "agreement"], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1 and "give --ls-url URL --project ID" in missing.stderr
