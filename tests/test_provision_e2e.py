"""End to end against a real Label Studio: provision the sample project twice, then submit an annotation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from annotation_config.label_config import render_label_config
from annotation_config.regions import labels_to_results, results_to_labels
from studio.provision import (
    DEFAULT_TASKS_PATH,
    SCORE_COLUMN,
    UNCERTAINTY_VIEW_TITLE,
    LabelStudioError,
    connect,
    connect_backend,
    provision,
    request_predictions,
)

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
    assert len(_uncertainty_tabs(ls_client, project.id)) == 1  # the CLI path sets the tab up once too


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


def _uncertainty_tabs(ls_client, project_id):
    return [
        v for v in ls_client.views.list(project=project_id) if (v.data or {}).get("title") == UNCERTAINTY_VIEW_TITLE
    ]


SCORES = (0.9, 0.2, 0.5)  # for the first three tasks by id, so that id order and score order differ; the 4th: none


def _provision_and_score(ls_client, schema, sample_tasks, title, url):
    """Provision 4 tasks and store a prediction with SCORES on the first three; returns (result, tasks by id)."""
    result = provision(ls_client, schema, sample_tasks[:4], title, url)
    tasks = sorted(ls_client.tasks.list(project=result.project_id, fields="task_only"), key=lambda t: t.id)
    assert len(tasks) == 4
    for task, score in zip(tasks, SCORES, strict=False):
        # no model_version: the prediction then belongs to the project's selected one ("" here), the predictions
        # Label Studio averages into the Prediction score column (see the ML-backend test below)
        result_ = labels_to_results(schema, {"stance_russia_china": "none"}, task.data)
        ls_client.predictions.create(task=task.id, result=result_, score=score)
    return result, tasks


def test_provision_sets_up_one_least_certain_first_tab(label_studio, ls_client, schema, sample_tasks):
    title = "Uncertainty tab e2e"
    first = provision(ls_client, schema, sample_tasks[:4], title, label_studio.url)
    second = provision(ls_client, schema, sample_tasks[:4], title, label_studio.url)
    (tab,) = _uncertainty_tabs(ls_client, first.project_id)  # exactly one, also after the second provision
    assert tab.id == first.view_id == second.view_id
    assert tab.data["ordering"] == [SCORE_COLUMN]  # ascending: no "-" in front
    hidden = tab.data["hiddenColumns"]
    for column in (SCORE_COLUMN, "tasks:data.text", "tasks:total_annotations"):
        assert column not in hidden["explore"] and column not in hidden["labeling"]
    assert "tasks:total_predictions" not in hidden["explore"] and "tasks:data.title" in hidden["explore"]
    # the ids are the ones this server's Data Manager knows (it drops unknown ones from hiddenColumns)
    response = ls_client._client_wrapper.httpx_client.request(
        "api/dm/columns/", method="GET", params={"project": first.project_id}
    )
    columns = {
        f"{c['target']}:{'data.' if c.get('parent') == 'data' else ''}{c['id']}" for c in response.json()["columns"]
    }
    assert {SCORE_COLUMN, "tasks:data.text", "tasks:total_annotations", "tasks:total_predictions"} <= columns
    assert set(hidden["explore"]) & columns, "hiddenColumns names no real column"


def test_the_tab_lists_the_least_certain_task_first(label_studio, ls_client, schema, sample_tasks):
    result, tasks = _provision_and_score(ls_client, schema, sample_tasks, "Uncertainty order e2e", label_studio.url)
    listed = list(ls_client.tasks.list(project=result.project_id, view=result.view_id))
    # 0.2, 0.5, 0.9, then the task without a prediction (NULLS LAST)
    assert [t.id for t in listed] == [tasks[1].id, tasks[2].id, tasks[0].id, tasks[3].id]
    assert [getattr(t, "predictions_score", None) for t in listed] == pytest.approx([0.2, 0.5, 0.9, None])


@pytest.mark.browser
def test_the_data_manager_opens_on_the_tab_with_the_score_column(label_studio, ls_client, schema, sample_tasks):
    from playwright.sync_api import sync_playwright

    result, tasks = _provision_and_score(ls_client, schema, sample_tasks, "Uncertainty browser e2e", label_studio.url)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{label_studio.url}/user/login")
        page.fill("input[name=email]", label_studio.username)
        page.fill("input[name=password]", label_studio.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda current: "/login" not in current, timeout=30_000)
        page.goto(result.url)  # the project's Data Manager, as `provision` prints it
        page.wait_for_selector("[data-testid=table-row]", timeout=60_000)
        selected = page.locator("[role=tab][aria-selected=true]")
        assert selected.get_attribute("aria-label") == UNCERTAINTY_VIEW_TITLE
        headers = page.locator(".lsf-th-content").all_inner_texts()
        assert {"ID", "Prediction score", "text"} <= {h.strip() for h in headers}, headers
        assert "Inner ID" not in headers and "title" not in headers  # hidden by the tab
        rows = page.locator("[data-testid=table-row]").all_inner_texts()
        browser.close()
    firsts = [row.split()[0] for row in rows]
    assert firsts == [str(tasks[i].id) for i in (1, 2, 0, 3)], rows
    assert "0.200" in rows[0] and "0.900" in rows[2]


FLAG_1682 = "ff_front_dev_1682_model_version_dropdown_070622_short"


# Needs FLAG_1682 on, which workbench.services.label_studio_env sets (HumanSignal/label-studio#7151).
def test_the_tab_sorts_predictions_that_an_ml_backend_made(label_studio, ls_client, schema, sample_tasks):
    """The workbench's own path: an ML backend connected with ml.create, predictions fetched by Label Studio."""
    result = provision(ls_client, schema, sample_tasks[:4], "Uncertainty ML backend e2e", label_studio.url)
    tasks = sorted(ls_client.tasks.list(project=result.project_id, fields="task_only"), key=lambda t: t.id)
    wanted = {task.data["key"]: score for task, score in zip(tasks, (*SCORES, 0.7), strict=True)}
    backend = _fake_ml_backend(lambda task: wanted[task["data"]["key"]])
    try:
        connect_backend(ls_client, result.project_id, f"http://127.0.0.1:{backend.server_port}")
        request_predictions(ls_client, result.project_id)
        listed = list(ls_client.tasks.list(project=result.project_id, view=result.view_id))
    finally:
        backend.shutdown()
    assert [getattr(t, "predictions_score", None) for t in listed] == pytest.approx([0.2, 0.5, 0.7, 0.9])
    assert [t.id for t in listed] == [tasks[i].id for i in (1, 2, 3, 0)]


def _fake_ml_backend(score: Callable[[dict], float]) -> ThreadingHTTPServer:
    """A minimal ML backend (/health, /setup, /predict) in a thread: one choice per task, scored by `score`."""
    version = "fake-ml-1"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._answer({"status": "UP", "model_version": version})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not self.path.startswith("/predict"):
                self._answer({"model_version": version})
                return
            choice = {"from_name": "stance_russia_china", "to_name": "text", "type": "choices"}
            results = [
                {"result": [{**choice, "value": {"choices": ["none"]}}], "score": score(t), "model_version": version}
                for t in body.get("tasks", [])
            ]
            self._answer({"results": results, "model_version": version})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_provision_repairs_the_tab_but_keeps_what_annotators_changed(label_studio, ls_client, schema, sample_tasks):
    result = provision(ls_client, schema, sample_tasks[:2], "Uncertainty tab repair e2e", label_studio.url)
    (tab,) = _uncertainty_tabs(ls_client, result.project_id)
    changed = {k: v for k, v in tab.data.items() if k != "filters"}
    changed["ordering"] = ["-" + SCORE_COLUMN]
    changed["hiddenColumns"] = {"explore": [SCORE_COLUMN, "tasks:data.title"], "labeling": [SCORE_COLUMN]}
    changed["columnsWidth"] = {"tasks:data.text": 480}
    ls_client.views.update(id=str(tab.id), project=result.project_id, data=changed)
    assert ls_client.views.get(id=str(tab.id)).data["ordering"] == ["-" + SCORE_COLUMN]  # the change took

    again = provision(ls_client, schema, sample_tasks[:2], "Uncertainty tab repair e2e", label_studio.url)
    (fixed,) = _uncertainty_tabs(ls_client, result.project_id)
    assert fixed.id == tab.id == again.view_id
    assert fixed.data["ordering"] == [SCORE_COLUMN]
    assert fixed.data["hiddenColumns"] == {"explore": ["tasks:data.title"], "labeling": []}
    assert fixed.data["columnsWidth"] == {"tasks:data.text": 480}  # the annotator's own change stays


def test_wrong_key_and_unreachable_server_give_one_line(label_studio):
    with pytest.raises(LabelStudioError, match="rejected the API key"):
        connect(label_studio.url, "not-a-token")
    done = run_cli("provision", "--ls-url", "http://127.0.0.1:9", "--api-key", "x")
    assert done.returncode == 1
    assert "could not connect to Label Studio at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
