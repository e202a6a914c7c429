"""`workbench up` as a user runs it: a subprocess that starts Label Studio and the backend, provisions and
pre-annotates the sample project, stops both on Ctrl-C, and reuses everything when run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from annotation_config.regions import results_to_labels
from studio.provision import connect
from workbench.services import free_port, port_is_free

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


class UpProcess:
    """`workbench up` in a subprocess, with its output collected line by line."""

    def __init__(self, state_dir: Path, ls_port: int, backend_port: int) -> None:
        self.state_dir, self.ls_port, self.backend_port = state_dir, ls_port, backend_port
        self.lines: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "TERM": "dumb"}
        for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "WORKBENCH_BASIC_AUTH_USER"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workbench", "up", "--state-dir", str(state_dir)]
            + ["--ls-port", str(ls_port), "--backend-port", str(backend_port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # as a non-interactive shell starts `workbench up &`: SIGINT ignored; Ctrl-C must still stop everything
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 400) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith("ready:"):
                    return line.split("ready:", 1)[1].strip()
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError("workbench up did not get ready:\n" + "\n".join(self.lines[-30:]))

    def interrupt(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _children_gone(state_dir: Path) -> bool:
    """No process whose command line names this state folder (Label Studio's data dir, the backend's models)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(state_dir) in cmdline or f"LABEL_STUDIO_BASE_DATA_DIR={state_dir}" in environ:
            return False
    return True


@pytest.fixture(scope="module")
def up_run(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("state")
    run = UpProcess(state_dir, free_port(), free_port())
    url = run.wait_ready()
    credentials = json.loads((state_dir / "credentials.json").read_text(encoding="utf-8"))
    yield run, url, credentials
    if run.process.poll() is None:
        run.interrupt()


def _project_snapshot(client) -> dict:
    projects = list(client.projects.list())
    assert len(projects) == 1, [p.title for p in projects]
    project = projects[0]
    tasks = list(client.tasks.list(project=project.id, fields="all", page_size=500))
    return {
        "project": project.id,
        "tasks": len(tasks),
        "keys": len({t.data["key"] for t in tasks}),
        "backends": len(list(client.ml.list(project=project.id))),
        "predictions": sorted(len(t.predictions) for t in tasks),
        "task_objects": tasks,
    }


def test_up_provisions_and_preannotates_everything(up_run, schema, sample_tasks):
    run, url, credentials = up_run
    assert (run.state_dir / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert credentials["password"] in run.output and credentials["username"] in run.output
    client = connect(f"http://127.0.0.1:{run.ls_port}", credentials["token"])
    snapshot = _project_snapshot(client)
    assert url.endswith(f"/projects/{snapshot['project']}/data")
    assert snapshot["tasks"] == snapshot["keys"] == len(sample_tasks)
    assert snapshot["backends"] == 1
    assert snapshot["predictions"] == [1] * len(sample_tasks)
    for task in snapshot["task_objects"]:
        prediction = task.predictions[0]
        assert prediction.model_version == f"cold-start-{schema.hash}"
        labels = results_to_labels(schema, prediction.result, task.data)
        assert all(labels.get(d.name) in d.values for d in schema.of_kind("single"))


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine has no network: background calls only fail noisily
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "docs" / "labeling-view.png"


def _logged_in(playwright, base: str, credentials: dict):
    """Headless Chromium logged in to Label Studio at `base`: (browser, page)."""
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/user/login")
    page.fill("input[name=email]", credentials["username"])
    page.fill("input[name=password]", credentials["password"])
    page.click("button[type=submit]")
    page.wait_for_url(lambda current: "/login" not in current, timeout=30_000)
    return browser, page


@pytest.mark.browser
def test_browser_shows_suggestions_and_stores_what_was_clicked(up_run, schema, tmp_path):
    from playwright.sync_api import sync_playwright

    run, url, credentials = up_run
    base = f"http://127.0.0.1:{run.ls_port}"
    client = connect(base, credentials["token"])
    project_id = int(url.rstrip("/").split("/")[-2])
    task = next(iter(client.tasks.list(project=project_id, fields="all")))
    predicted = results_to_labels(schema, task.predictions[0].result, task.data)
    threat = schema.dimension("threat_characterization")
    clicked = next(value for value in threat.values if value != predicted["threat_characterization"])

    with sync_playwright() as playwright:
        browser, page = _logged_in(playwright, base, credentials)
        page.goto(f"{base}/projects/{project_id}/data?task={task.id}")
        page.wait_for_selector(".wb-question input", timeout=60_000)
        page.wait_for_selector("span.htx-highlight", timeout=30_000)

        # The suggestion of every single-choice question is shown selected. (Read Label Studio's own state, the
        # -checked class a person sees: the stance questions share choice names, and browsers group native radio
        # inputs by name across the page, so `input:checked` holds only the last question's answer.)
        for dim in schema.of_kind("single"):
            question = page.locator(".wb-question", has=page.get_by_role("heading", name=dim.title, exact=True))
            checked = question.locator("label.ant-radio-wrapper-checked")
            assert checked.count() == 1, dim.name
            assert checked.inner_text().split("[")[0].strip() == predicted[dim.name], dim.name
        frames = page.locator(".wb-question", has=page.get_by_role("heading", name="Issue frames", exact=True))
        ticked = [
            t.split("[")[0].strip() for t in frames.locator("label.ant-checkbox-wrapper-checked").all_inner_texts()
        ]
        assert ticked == predicted["frames"]
        # Every suggested evidence span is highlighted at the same code-point offsets.
        highlighted = {
            (int(s.get_attribute("data-start")), int(s.get_attribute("data-end")))
            for s in page.locator("span.htx-highlight[data-start]").all()
        }
        assert {(s["start"], s["end"]) for s in predicted["evidence"]} == highlighted
        page.screenshot(path=str(tmp_path / "labeling-view.png"))
        if os.environ.get("WORKBENCH_UPDATE_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))

        # Change one answer and submit.
        question = page.locator(".wb-question", has=page.get_by_role("heading", name=threat.title, exact=True))
        question.locator("label", has_text=clicked).first.click()
        assert question.locator("label.ant-radio-wrapper-checked").inner_text().split("[")[0].strip() == clicked
        page.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + 30
        while not client.annotations.list(id=task.id):
            assert time.monotonic() < deadline, "the submitted annotation never reached Label Studio"
            time.sleep(0.5)
        browser.close()

    annotations = client.annotations.list(id=task.id)
    assert len(annotations) == 1
    stored = results_to_labels(schema, annotations[0].result, task.data)
    assert stored == {**predicted, "threat_characterization": clicked}


INSTANT_PROJECT = "Instant learner e2e"
INSTANT_TIMEOUT = 60  # s: five webhooks and their refits take ~2 s here; generous for a loaded CI runner


def _instant_state(backend_url: str, project_id: int) -> dict:
    """The project's entry in the backend's /health `instant` (version, accepted tasks, fits, errors)."""
    health = httpx.get(f"{backend_url}/health", timeout=5).json()
    return (health.get("instant") or {}).get(str(project_id)) or {}


def _instant_version(backend_url: str, project_id: int, accepted: int) -> str | None:
    """The instant learner's model_version for the project once it has fitted `accepted` tasks, else None."""
    state = _instant_state(backend_url, project_id)
    if state.get("accepted_tasks") == accepted and str(state.get("model_version") or "").startswith("instant-"):
        return state["model_version"]
    return None


def _is_next_task(url: str, project_id: int) -> bool:
    """Whether a request URL is the labelling stream's next-task call for this project."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return (
        parts.path.rstrip("/") == "/api/dm/actions"
        and query.get("id") == ["next_task"]
        and query.get("project") == [str(project_id)]
    )


def _contrary_labels(schema, cold: dict, index: int) -> dict:
    """An annotation that never gives the cold start's answer on the task left to open (`cold`): each single-choice
    question alternates between two other labels (two classes, so the learner fits a head of its own), and a frame
    the cold start did not tick there is ticked every time."""
    labels: dict = {}
    for dim in schema.of_kind("single"):
        others = [value for value in dim.values if value != cold.get(dim.name)]
        labels[dim.name] = others[index % 2]
    frames = schema.dimension("frames")
    unticked = [value for value in frames.values if value not in (cold.get("frames") or [])]
    labels["frames"] = unticked[:1] + (unticked[1:2] if index % 2 else [])
    return labels


@pytest.mark.browser
def test_next_task_in_the_labelling_stream_shows_the_instant_learners_suggestions(
    up_run, schema, sample_tasks, tmp_path
):
    """Submit 5 annotations, open the labelling stream: the next task holds a new prediction from the instant
    learner's version besides its stored cold-start one, and Label Studio shows that one, not the cold start's.

    Its own small project (6 tasks, so the stream's next task is the one left unlabelled), deleted at the end: the
    sample project keeps exactly one cold-start prediction per task, as the other tests of this module expect.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    from annotation_config.regions import labels_to_results
    from studio.provision import connect_backend, provision, request_predictions

    run, _, credentials = up_run
    base = f"http://127.0.0.1:{run.ls_port}"
    backend_url = f"http://127.0.0.1:{run.backend_port}"
    client = connect(base, credentials["token"])
    cold_version = f"cold-start-{schema.hash}"
    started = time.monotonic()
    result = provision(client, schema, sample_tasks[::18][:6], INSTANT_PROJECT, base)
    project_id = result.project_id
    try:
        # the backend `up` started wants the webhook secret it keeps in credentials.json
        connect_backend(client, project_id, backend_url, webhook_secret=credentials["webhook_secret"])
        request_predictions(client, project_id)
        deadline = time.monotonic() + INSTANT_TIMEOUT
        while True:
            tasks = sorted(client.tasks.list(project=project_id, fields="all"), key=lambda t: t.id)
            if (
                len(tasks) == 6
                and all(p.model_version == cold_version for t in tasks for p in t.predictions)
                and all(len(t.predictions) == 1 for t in tasks)
            ):
                break
            assert time.monotonic() < deadline, (
                "the cold start did not pre-annotate the project's 6 tasks once each within "
                f"{INSTANT_TIMEOUT} s: {[[p.model_version for p in t.predictions] for t in tasks]}"
            )
            time.sleep(0.5)
        *labelled, left = tasks
        cold = results_to_labels(schema, left.predictions[0].result, left.data)

        # 1. Five annotations, as an annotator submits them: none agrees with the cold start on the task left.
        for index, task in enumerate(labelled):
            labels = _contrary_labels(schema, cold, index)
            client.annotations.create(id=task.id, result=labels_to_results(schema, labels, task.data))
        submitted = time.monotonic()

        # 2. The backend's instant learner for this project has fitted all five (Label Studio's webhooks).
        deadline = time.monotonic() + INSTANT_TIMEOUT
        while (instant_version := _instant_version(backend_url, project_id, len(labelled))) is None:
            assert time.monotonic() < deadline, (
                f"the backend serves no instant-learner version for project {project_id} fitted on "
                f"{len(labelled)} tasks within {INSTANT_TIMEOUT} s: /health instant = "
                f"{_instant_state(backend_url, project_id)}"
            )
            time.sleep(0.25)
        learnt_after = time.monotonic()

        # 3. The labelling stream ("Label All Tasks") in a real browser.
        with sync_playwright() as playwright:
            browser, page = _logged_in(playwright, base, credentials)
            # "Label All Tasks" opens ?labeling=1; the Data Manager then asks for the next task with its
            # `next_task` action (POST /api/dm/actions?id=next_task&tabID=..&project=..), which serializes it as
            # /api/projects/<id>/next does (NextTaskSerializer: the backend is asked for its current version).
            with page.expect_response(lambda r: _is_next_task(r.url, project_id), timeout=60_000) as served:
                page.goto(f"{base}/projects/{project_id}/data?labeling=1")
            assert served.value.ok, f"the next-task action answered {served.value.status}: {served.value.text()}"
            next_task = served.value.json()
            page.wait_for_selector(".wb-question input", timeout=60_000)
            page.wait_for_selector("label.ant-radio-wrapper-checked", timeout=30_000)
            # The stream opens with the project's instructions (provision turns them on): close them, as a person would.
            close = page.get_by_role("button", name="Close modal")
            try:
                close.click(timeout=15_000)
                close.wait_for(state="hidden", timeout=10_000)
            except PlaywrightTimeoutError:
                pass  # no instructions shown: nothing hides the editor
            page.screenshot(path=str(tmp_path / "labelling-stream.png"))
            shown = {}
            for dim in schema.of_kind("single"):
                question = page.locator(".wb-question", has=page.get_by_role("heading", name=dim.title, exact=True))
                checked = question.locator("label.ant-radio-wrapper-checked")
                assert checked.count() == 1, f"{dim.name}: {checked.count()} choices shown selected"
                shown[dim.name] = checked.inner_text().split("[")[0].strip()
            frames = page.locator(".wb-question", has=page.get_by_role("heading", name="Issue frames", exact=True))
            shown["frames"] = [
                t.split("[")[0].strip() for t in frames.locator("label.ant-checkbox-wrapper-checked").all_inner_texts()
            ]
            highlighted = {
                (int(s.get_attribute("data-start")), int(s.get_attribute("data-end")))
                for s in page.locator("span.htx-highlight[data-start]").all()
            }
            browser.close()
        elapsed = time.monotonic() - started

        assert next_task["id"] == left.id, f"the stream opened task {next_task['id']}, not the unlabelled {left.id}"
        predictions = list(client.predictions.list(task=left.id))
        versions = sorted(p.model_version for p in predictions)
        assert versions == sorted([cold_version, instant_version]), (
            f"task {left.id} holds predictions of {versions}; expected its cold-start one and a new one of "
            f"{instant_version}: Label Studio did not ask the backend again"
        )
        new = next(p for p in predictions if p.model_version == instant_version)
        learnt = results_to_labels(schema, new.result, left.data)
        served_versions = [p["model_version"] for p in next_task.get("predictions") or []]
        assert served_versions == [instant_version], f"the stream served predictions of {served_versions}"
        differs = [d.name for d in schema.of_kind("single", "multi") if learnt.get(d.name) != cold.get(d.name)]
        assert differs, "the instant learner answers as the cold start does everywhere: the check would prove nothing"
        for dim in schema.of_kind("single"):
            assert shown[dim.name] == learnt[dim.name], (
                f"{dim.name}: the browser shows {shown[dim.name]!r}, the instant learner says {learnt[dim.name]!r} "
                f"(cold start: {cold.get(dim.name)!r})"
            )
        assert shown["frames"] == learnt["frames"], (shown["frames"], learnt["frames"], cold.get("frames"))
        assert highlighted == {(s["start"], s["end"]) for s in learnt.get("evidence") or []}
        print(
            f"{instant_version} served {learnt_after - submitted:.1f} s after the 5th annotation; "
            f"test body {elapsed:.1f} s; differs from the cold start on {differs}"
        )
    finally:
        client.projects.delete(id=project_id)


def test_ctrl_c_stops_both_and_a_second_run_reuses_everything(up_run, sample_tasks):
    run, _, credentials = up_run
    assert run.interrupt() == 0
    assert "stopped Label Studio and the ML backend" in run.output
    deadline = time.monotonic() + 20
    while not (_children_gone(run.state_dir) and port_is_free("127.0.0.1", run.ls_port)):
        assert time.monotonic() < deadline, "a child process outlived workbench up"
        time.sleep(0.5)
    assert port_is_free("127.0.0.1", run.backend_port)

    again = UpProcess(run.state_dir, run.ls_port, run.backend_port)
    try:
        again.wait_ready()
        assert f"0 tasks imported, {len(sample_tasks)} already there" in again.output
        client = connect(f"http://127.0.0.1:{run.ls_port}", credentials["token"])  # same token as the first run
        snapshot = _project_snapshot(client)
        assert snapshot["tasks"] == len(sample_tasks)
        assert snapshot["backends"] == 1
        # The same model version never predicts a task twice. (The instant learner may rebuild from the
        # annotation the browser test stored and serve a new version before predictions are requested again.)
        for task in snapshot["task_objects"]:
            versions = [prediction.model_version for prediction in task.predictions]
            assert versions and len(versions) == len(set(versions)), (task.id, versions)
            assert sum(v.startswith("cold-start-") for v in versions) == 1, (task.id, versions)
    finally:
        assert again.interrupt() == 0


def test_port_in_use_gives_one_clear_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "workbench", "up", "--state-dir", str(tmp_path), "--ls-port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"port {port} is in use" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
