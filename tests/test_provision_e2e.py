"""End to end against a real Label Studio: provision the sample project twice, then submit an annotation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from annotation_config.label_config import render_label_config
from annotation_config.provision import DEFAULT_TASKS_PATH, LabelStudioError, connect, provision
from annotation_config.regions import labels_to_results, results_to_labels

pytestmark = pytest.mark.e2e


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env)


def test_provision_twice_is_idempotent(label_studio, ls_client, schema):
    args = ("provision", "--ls-url", label_studio.url, "--api-key", label_studio.token, "--title", "Sample e2e")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "imported 0 tasks" in second.stdout and "reused" in second.stdout

    projects = [p for p in ls_client.projects.list() if p.title == "Sample e2e"]
    assert len(projects) == 1
    project = ls_client.projects.get(id=projects[0].id)
    assert project.label_config.strip() == render_label_config(schema).strip()
    task_lines = [line for line in DEFAULT_TASKS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    tasks = list(ls_client.tasks.list(project=project.id, page_size=500))
    assert len(tasks) == len(task_lines)
    assert len({t.data["key"] for t in tasks}) == len(task_lines)
    assert f"/projects/{project.id}/data" in first.stdout


def test_schema_change_updates_config_and_new_tasks_only(label_studio, ls_client, schema, sample_tasks):
    title = "Schema change e2e"
    result = provision(ls_client, schema, sample_tasks[:3], title, label_studio.url)
    assert (result.created, result.imported) == (True, 3)
    changed = schema.model_copy(deep=True)
    changed.dimensions[3].labels[0].definition = "Presented as invented."
    again = provision(ls_client, changed, sample_tasks[:5], title, label_studio.url)
    assert (again.created, again.config_updated, again.imported, again.skipped) == (False, True, 2, 3)
    assert ls_client.projects.get(id=result.project_id).label_config.strip() == render_label_config(changed).strip()


def test_label_studio_accepts_converted_annotation_for_every_kind(label_studio, ls_client, schema):
    text = "Moscow 😀 calls the “invasion” story پروپاگاندا — hype from Washington."
    task = {"key": "emoji-1", "text": text, "title": "T", "publication": None, "date": None}
    result = provision(ls_client, schema, [task], "Annotation e2e", label_studio.url)
    stored = next(iter(ls_client.tasks.list(project=result.project_id)))

    def span(word, label):
        start = text.index(word)
        return {"start": start, "end": start + len(word), "text": word, "label": label}

    labels = {
        "stance_russia_china": "none",
        "stance_us_policy": "against",
        "threat_characterization": "manufactured",
        "frames": ["Security_and_defense", "External_regulation_and_reputation"],
        "evidence": [span("Moscow", "actor"), span("پروپاگاندا", "framing_cue"), span("Washington", "actor")],
    }
    results = labels_to_results(schema, labels, stored.data)
    ls_client.annotations.create(id=stored.id, result=results)
    annotations = ls_client.annotations.list(id=stored.id)
    assert len(annotations) == 1
    assert results_to_labels(schema, annotations[0].result, stored.data) == labels


def test_wrong_key_and_unreachable_server_give_one_line(label_studio):
    with pytest.raises(LabelStudioError, match="rejected the API key"):
        connect(label_studio.url, "not-a-token")
    done = run_cli("provision", "--ls-url", "http://127.0.0.1:9", "--api-key", "x")
    assert done.returncode == 1
    assert "could not connect to Label Studio at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
