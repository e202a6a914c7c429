"""`exchange.importer`: files are read and validated completely before Label Studio is touched; every bad
row is reported with its line and reason; rows map to tasks and annotations as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.importer import as_label_studio_tasks, read_file
from tests.test_exchange_export import three_annotator_tasks
from training.data import accept

FIXTURES = Path(__file__).parent / "fixtures" / "exchange"
MALFORMED = FIXTURES / "malformed.csv"


def test_malformed_csv_reports_every_bad_row_with_its_line(schema):
    parsed = read_file(MALFORMED, schema)
    reasons = {problem.where: problem.reason for problem in parsed.rejected}
    assert sorted(reasons) == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert reasons["line 3"].startswith("column 'text': not valid UTF-8 (byte 0xE9 at character 4)")
    assert reasons["line 4"] == "no value for the text field 'text'"
    assert "unknown label 'fabricated'" in reasons["line 5"] and "threat_characterization" in reasons["line 5"]
    assert reasons["line 6"] == "3 cells, the header has 6"
    assert "unknown label 'Economics'" in reasons["line 7"] and "frames" in reasons["line 7"]
    assert "out of range" in reasons["line 8"] and "evidence" in reasons["line 8"]
    assert [t.key for t in parsed.tasks] == ["ok-1", "ok-2"]
    ok1, ok2 = parsed.tasks
    assert ok1.annotations[0].labels == {
        "threat_characterization": "contested",
        "frames": ["Security_and_defense", "Political"],
        "evidence": [{"start": 0, "end": 6, "label": "actor"}],
    }
    assert ok2.data["text"] == 'Washington calls the build-up "a serious threat".'
    assert ok2.annotations[0].labels["frames"] == ["Security_and_defense"]  # a JSON list works as well as a;b


def test_import_of_a_malformed_file_exits_non_zero_before_touching_label_studio(tmp_path):
    # Port 9 (discard) is closed: had the command tried to import, the error would be "could not connect".
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "import",
            str(MALFORMED),
            "--ls-url",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    for line in (3, 4, 5, 6, 7, 8):
        assert f"malformed.csv: line {line}: " in done.stderr
    assert "6 of 8 rows rejected; nothing imported" in done.stderr
    assert "could not connect" not in done.stderr and "Traceback" not in done.stderr


def test_missing_text_column_rejects_every_row(tmp_path, schema):
    path = tmp_path / "no_text.csv"
    path.write_text("key,title,threat_characterization\nk1,A,genuine\nk2,B,genuine\n", encoding="utf-8")
    parsed = read_file(path, schema)
    assert [str(p) for p in parsed.rejected] == [
        "line 2: no value for the text field 'text'",
        "line 3: no value for the text field 'text'",
    ]
    assert parsed.tasks == []


def test_long_format_gathers_annotations_skips_duplicates_and_rejects_conflicts():
    from annotation_config.schema import load_schema

    parsed = read_file(FIXTURES / "long_format.jsonl", load_schema())
    assert [(t.key, [a.annotator for a in t.annotations]) for t in parsed.tasks] == [
        ("p1", ["alice", "bob"]),
        ("p2", []),
        ("p3", ["carol"]),
    ]
    assert [str(p) for p in parsed.duplicates] == ["line 3: duplicate of line 1 (key 'p1'): skipped"]
    assert [str(p) for p in parsed.rejected] == ["line 6: key 'p1' is already used at line 1 with different task data"]
    alice, bob = parsed.tasks[0].annotations
    assert (alice.lead_time, alice.labels["frames"]) == (12.5, ["Economic"])
    assert bob.labels["evidence"] == [{"start": 0, "end": 7, "label": "actor", "text": "Beijing"}]
    assert parsed.tasks[1].data["paragraph"] == 3 and parsed.tasks[1].data["publication"] == ""
    assert parsed.tasks[2].annotations[0].was_cancelled and parsed.tasks[2].annotations[0].labels == {}


def test_label_studio_export_reads_back_to_the_same_accepted_labels(tmp_path, schema):
    tasks = three_annotator_tasks(schema)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    parsed = read_file(path, schema)
    assert parsed.format == "label-studio" and not parsed.rejected
    assert parsed.annotations == sum(len(t["annotations"]) for t in tasks)
    again = as_label_studio_tasks(parsed, schema)
    original = {e.key: e.labels for e in accept(tasks, schema).examples}
    assert {e.key: e.labels for e in accept(again, schema).examples} == original


def test_keys_are_derived_when_the_file_has_no_key_column(tmp_path, schema):
    path = tmp_path / "texts.csv"
    path.write_text("text,frames\nFirst paragraph.,Economic\nSecond paragraph.,\n", encoding="utf-8")
    parsed = read_file(path, schema)
    assert parsed.derived_keys and len({t.key for t in parsed.tasks}) == 2
    assert all(t.key.startswith("sha1:") for t in parsed.tasks)
    assert [len(t.annotations) for t in parsed.tasks] == [1, 0]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"key": "k", "text": "t", "frames": "Economic;Economic"}', "a label is listed twice"),
        ('{"key": "k", "text": "t", "lead_time": "soon", "stance_us_policy": "none"}', "expected a number"),
        ('{"key": "k", "text": "t", "was_cancelled": "maybe"}', "expected true or false"),
        ('{"key": "k", "text": "t", "evidence": "[{\\"start\\": 0"}', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"key": "k", "text": 5}', "must be a string"),
        (
            '{"key": "k", "text": "abc", "evidence": [{"start": 0, "end": 2, "label": "actor", "text": "xy"}]}',
            "does not match",
        ),
    ],
)
def test_bad_values_are_rejected_with_a_reason(tmp_path, schema, content, reason):
    path = tmp_path / "rows.jsonl"
    path.write_text(content + "\n", encoding="utf-8")
    parsed = read_file(path, schema)
    assert len(parsed.rejected) == 1 and parsed.rejected[0].where == "line 1"
    assert reason in parsed.rejected[0].reason


def _csv_with_a_long_text(path: Path, rows: int, long_row: int, chars: int) -> None:
    """A CSV of `rows` data rows (header on line 1, data row i on line i + 1); row `long_row` holds `chars` chars."""
    lines = ["key,text,frames"]
    for i in range(1, rows + 1):
        text = "x" * chars if i == long_row else f"Paragraph {i}."
        lines.append(f"k{i},{text},Economic")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_field_over_the_csv_limit_is_one_rejected_row_and_every_later_row_is_read(tmp_path, schema, monkeypatch):
    import csv

    monkeypatch.delenv("WORKBENCH_MAX_TEXT_CHARS", raising=False)
    path = tmp_path / "long.csv"
    _csv_with_a_long_text(path, rows=1002, long_row=2, chars=200 * 1024)  # over the csv module's 128 KiB
    before = csv.field_size_limit()
    parsed = read_file(path, schema)
    assert csv.field_size_limit() == before  # the process-wide limit is restored
    assert parsed.rows == 1002 and len(parsed.tasks) == 1001
    assert [str(p) for p in parsed.rejected] == [
        "line 3: field 'text' has 204800 characters; the limit is 20000 (WORKBENCH_MAX_TEXT_CHARS)"
    ]
    assert parsed.tasks[-1].key == "k1002" and parsed.tasks[-1].annotations[0].labels == {"frames": ["Economic"]}


def test_without_skip_invalid_a_too_long_text_imports_nothing_and_names_its_line(tmp_path, capsys, monkeypatch):
    from exchange.cli import import_command
    from exchange.importer import ImportFileError

    monkeypatch.delenv("WORKBENCH_MAX_TEXT_CHARS", raising=False)
    path = tmp_path / "long.csv"
    _csv_with_a_long_text(path, rows=1002, long_row=2, chars=200 * 1024)
    # Port 9 (discard) is closed: had the command gone on to import, the error would be "could not connect".
    with pytest.raises(ImportFileError, match=r"1 of 1002 rows rejected; nothing imported .* other 1001 tasks"):
        import_command(path, ls_url="http://127.0.0.1:9", api_key="k")
    assert "long.csv: line 3: field 'text' has 204800 characters; the limit is 20000" in capsys.readouterr().err


def test_long_fields_are_read_in_full_up_to_the_configured_limit(tmp_path, schema, monkeypatch):
    from exchange.importer import ImportFileError

    path = tmp_path / "long.csv"
    _csv_with_a_long_text(path, rows=3, long_row=2, chars=200 * 1024)
    monkeypatch.setenv("WORKBENCH_MAX_TEXT_CHARS", str(200 * 1024))
    parsed = read_file(path, schema)
    assert not parsed.rejected and len(parsed.tasks[1].data["text"]) == 200 * 1024
    assert len(read_file(path, schema, max_text_chars=1000).rejected) == 1  # the parameter wins over the variable
    monkeypatch.setenv("WORKBENCH_MAX_TEXT_CHARS", "lots")
    with pytest.raises(ImportFileError, match="WORKBENCH_MAX_TEXT_CHARS must be a whole number of at least 1"):
        read_file(path, schema)


def test_json_lines_reject_a_too_long_text_by_line_and_keep_the_rest(tmp_path, schema, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MAX_TEXT_CHARS", "100")
    path = tmp_path / "rows.jsonl"
    rows = [{"key": f"k{i}", "text": "y" * (101 if i == 2 else 10)} for i in range(1, 5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    parsed = read_file(path, schema)
    assert [str(p) for p in parsed.rejected] == [
        "line 2: field 'text' has 101 characters; the limit is 100 (WORKBENCH_MAX_TEXT_CHARS)"
    ]
    assert [t.key for t in parsed.tasks] == ["k1", "k3", "k4"]


SEPARATOR_TEXTS = ["Moscow\u2028denies it.", "NATO\u2029answers.", "Kyiv\x85waits."]


def test_json_lines_split_on_newline_only_so_unicode_separators_stay_in_their_row(tmp_path, schema):
    path = tmp_path / "rows.jsonl"
    rows = [
        {"key": f"k{i}", "text": text, "threat_characterization": "genuine"} for i, text in enumerate(SEPARATOR_TEXTS)
    ]
    # ensure_ascii=False writes the separators raw, as JSON allows; one line ends in "\r\n"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text(lines[0] + "\r\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    parsed = read_file(path, schema)
    assert parsed.rejected == []
    assert [t.data["text"] for t in parsed.tasks] == SEPARATOR_TEXTS
    assert [t.annotations[0].labels for t in parsed.tasks] == [{"threat_characterization": "genuine"}] * 3


def test_duplicate_csv_headers_are_one_line_naming_them(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("key,text,frames,text,frames,title\nk1,a,Political,b,Economic,T\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "import", str(path), "--ls-url", "http://127.0.0.1:9", "--api-key", "k"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {path}:1: the header names 'frames', 'text' more than once; give each column one name"
    ]
