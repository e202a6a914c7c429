"""One meaning per Label Studio field (annotation_config/annotations.py), and one data-source rule for every command
(studio/source.py): each command that reads annotations agrees with them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from annotation_config.annotations import annotator_of, counted, is_counted, stamp, task_key
from annotation_config.regions import labels_to_results
from exchange.agreement import agreement_report
from exchange.importer import read_file
from studio.source import load_tasks
from training.data import accept, latest_votes
from workbench.cli import app

EMAIL = "ann@example.org"


def test_the_annotator_is_the_user_id_in_either_form():
    assert annotator_of({"completed_by": 13}) == 13
    assert annotator_of({"completed_by": {"id": 13, "email": EMAIL}}) == 13  # the same person as the plain id
    assert annotator_of({"completed_by": {"email": EMAIL}}) == EMAIL  # no id: the e-mail
    assert annotator_of({"completed_by": {"id": 0, "email": EMAIL}}) == 0  # a falsy id is still an id
    assert annotator_of({}) is None


def test_task_key_counted_and_stamp(schema):
    key = schema.data.key
    assert task_key({"id": 4, "data": {key: "p-1"}}, schema, 9) == "p-1"
    assert task_key({"id": 4, "data": {}}, schema, 9) == "task-4"
    assert task_key({"data": {}}, schema, 9) == "task-#9"
    annotations = [{"id": 1}, {"id": 2, "was_cancelled": True}, "junk", {"id": 3, "was_cancelled": False}]
    assert [a["id"] for a in counted(annotations)] == [1, 3] and not is_counted("junk")
    assert stamp({"created_at": "2026-01-01", "updated_at": "2026-02-01"}) == "2026-02-01"
    assert stamp({"created_at": "2026-01-01"}) == "2026-01-01" and stamp({}) == ""


def two_forms_of_one_annotator(schema) -> list[dict]:
    """One task that one person annotated twice: once named by id, later by an expanded user object."""
    data = {schema.data.key: "p-1", schema.data.text: "NATO troops are massing near the border."}

    def annotation(number: int, who, label: str, when: str) -> dict:
        result = labels_to_results(schema, {"threat_characterization": label}, data)
        return {"id": number, "completed_by": who, "result": result, "updated_at": when}

    first = annotation(1, 13, "genuine", "2026-01-01T00:00:00Z")
    later = annotation(2, {"id": 13, "email": EMAIL}, "manufactured", "2026-01-02T00:00:00Z")
    return [{"id": 1, "data": data, "annotations": [first, later]}]


def test_every_command_counts_one_person_once_whichever_form_names_them(schema, tmp_path):
    tasks = two_forms_of_one_annotator(schema)
    assert [a["id"] for a in latest_votes(tasks[0]["annotations"])] == [2]  # one vote: the latest
    [example] = accept(tasks, schema).examples
    assert example.annotators == 1 and example.labels["threat_characterization"] == "manufactured"
    assert agreement_report(tasks, schema)["counts"]["annotators"] == 1
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    parsed = read_file(export, schema, None)
    assert {a.annotator for t in parsed.tasks for a in t.annotations} == {"13"}  # the importer names them alike


def test_an_explicit_file_wins_over_label_studio_in_the_environment_for_every_command(schema, tmp_path, monkeypatch):
    tasks = two_forms_of_one_annotator(schema)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens: reading it would fail
    loaded = load_tasks(export, None, None)
    assert loaded.tasks == tasks and loaded.source == str(export) and loaded.label == "export file export.json"
    runner = CliRunner()
    agreement = runner.invoke(app, ["agreement", "--from-export", str(export), "--json"])
    assert agreement.exit_code == 0, agreement.output
    exported = runner.invoke(app, ["export", "--from-export", str(export), "--out", str(tmp_path / "ds")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "ds" / "README.md").is_file()


@pytest.mark.parametrize("command", ["agreement", "export --out ds", "train"])
def test_a_file_and_a_named_label_studio_together_are_refused_alike(command, tmp_path):
    export = tmp_path / "export.json"
    export.write_text("[]")
    args = [*command.split(), "--from-export", str(export), "--ls-url", "http://127.0.0.1:9", "--project", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "pass either --from-export FILE or --ls-url URL --project ID, not both" in str(result.exception)
