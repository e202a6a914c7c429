"""End to end against a real Label Studio: three annotators label a small project, `workbench export` writes a
dataset that `datasets` loads with exactly what Label Studio holds, and `workbench import` brings it back.

Label Studio Community lets one admin token annotate on behalf of others: users are created with
`users.create` and annotations with `annotations.create(completed_by=<user id>)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from annotation_config.regions import labels_to_results, results_to_labels
from exchange.agreement import agreement_report
from exchange.dataset import pseudonym
from exchange.importer import ANNOTATOR_DOMAIN
from studio.provision import export_tasks, find_project, provision
from tests.test_exchange_export import decode
from tests.test_exchange_import import MALFORMED
from training.data import accept

pytestmark = pytest.mark.e2e

SALT = "e2e-salt"
TITLE = "Exchange e2e"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=600, env=env
    )


def _labels_for(i: int, j: int, text: str) -> dict:
    """Annotator j's labels for task i: 0 and 1 agree on the stance, 2 dissents on even tasks; task 3 is a three-way
    tie on the threat; annotator 1 marks no spans."""
    actor = next(w for w in ("Russia", "China", "NATO", "Washington", "Ukraine", "Biden", "Putin") if w in text)
    start = text.index(actor)
    stance = ("favor", "against", "none")[i % 3]
    if j == 2 and i % 2 == 0:
        stance = "none" if stance != "none" else "against"
    return {
        "stance_russia_china": stance,
        "threat_characterization": ("genuine", "manufactured", "contested")[j] if i == 3 else "genuine",
        "frames": ["Security_and_defense"] + (["Political"] if j != 1 else []),
        "evidence": [] if j == 1 else [{"start": start, "end": start + len(actor), "label": "actor"}],
    }


@pytest.fixture(scope="module")
def annotated(label_studio, ls_client, schema, sample_tasks):
    """Six sample tasks from three articles, each annotated by three users; one ground truth, one cancelled."""
    picked = [sample_tasks[i] for i in (0, 1, 20, 21, 40, 41)]
    project_id = provision(ls_client, schema, picked, TITLE, label_studio.url).project_id
    existing = {u.email: u.id for u in ls_client.users.list()}
    users = [
        existing.get(f"{name}@example.com") or ls_client.users.create(username=name, email=f"{name}@example.com").id
        for name in ("ann-a", "ann-b", "ann-c")
    ]
    stored = sorted(ls_client.tasks.list(project=project_id, page_size=100), key=lambda t: t.data["key"])
    submitted = []
    for i, task in enumerate(stored):
        for j, user in enumerate(users):
            cancelled, truth = (i == 5 and j == 2), (i == 0 and j == 2)
            labels = {} if cancelled else _labels_for(i, j, task.data["text"])
            lead_time = 10.0 + i + j / 4
            ls_client.annotations.create(
                id=task.id,
                result=labels_to_results(schema, labels, task.data),
                completed_by=user,
                lead_time=lead_time,
                was_cancelled=cancelled,
                ground_truth=truth,
            )
            submitted.append((task.data["key"], user, labels, lead_time, cancelled, truth))
    return project_id, submitted


def _load(folder, config, tmp_path):
    from datasets import load_dataset

    return load_dataset(str(folder), config, cache_dir=str(tmp_path / "hf-cache"))


def _key(labels: dict, schema) -> str:
    """A label record as a comparable string (spans without their text)."""
    clean = {}
    for dim in schema.dimensions:
        value = labels.get(dim.name)
        if dim.kind == "spans":
            value = sorted((s["start"], s["end"], s["label"]) for s in value or [])
        elif dim.kind == "multi":
            value = sorted(value or [])
        clean[dim.name] = value
    return json.dumps(clean, sort_keys=True)


def test_export_holds_what_label_studio_holds_and_import_reproduces_it(
    label_studio, ls_client, schema, annotated, tmp_path
):
    project_id, submitted = annotated
    url, token = label_studio.url, label_studio.token
    folder = tmp_path / "dataset"
    done = run_cli("export", "--out", str(folder), "--ls-url", url, "--project", str(project_id))
    assert done.returncode == 1 and "API key" in done.stderr  # no key: one line, nothing written
    assert not folder.exists()
    done = run_cli(
        "export",
        "--out",
        str(folder),
        "--ls-url",
        url,
        "--api-key",
        token,
        "--project",
        str(project_id),
        "--salt",
        SALT,
    )
    assert done.returncode == 0, done.stderr

    # raw: one row per annotation, as Label Studio holds them (annotations.list leaves out cancelled ones)
    raw = _load(folder, "raw", tmp_path)["train"]
    assert len(raw) == len(submitted) == 18
    held = []
    for task in ls_client.tasks.list(project=project_id, page_size=100):
        for annotation in ls_client.annotations.list(id=task.id):
            labels = results_to_labels(schema, annotation.result, task.data)
            held.append((task.data["key"], pseudonym(annotation.completed_by, SALT), _key(labels, schema)))
    rows = [(r["key"], r["annotator"], _key(decode(r, raw.features, schema), schema)) for r in raw]
    assert Counter(r for r, row in zip(rows, raw, strict=True) if not row["was_cancelled"]) == Counter(held)
    assert Counter(
        (r["key"], r["annotator"], r["lead_time"], r["was_cancelled"], r["ground_truth"]) for r in raw
    ) == Counter(
        (key, pseudonym(user, SALT), lead, cancelled, truth) for key, user, _, lead, cancelled, truth in submitted
    )
    assert not any("example.com" in str(v) for row in raw for v in row.values())

    # aggregated: one row per task with accepted labels, exactly the policy's labels
    tasks = export_tasks(ls_client, project_id)
    accepted = {e.key: e for e in accept(tasks, schema).examples}
    aggregated = _load(folder, "aggregated", tmp_path)
    got = {row["key"]: decode(row, part.features, schema) for part in aggregated.values() for row in part}
    assert got == {key: e.labels for key, e in accepted.items()} and len(got) == 6
    first, tie = sorted(got)[0], sorted(got)[3]
    truth = next(labels for key, _, labels, _, _, gt in submitted if gt)
    assert got[first]["stance_russia_china"] == truth["stance_russia_china"]  # ground truth wins over the majority
    assert "threat_characterization" not in got[tie]  # the three-way tie is held out (-1 in the dataset)

    # import the aggregated configuration into a new project: the accepted labels come back
    done = run_cli("import", str(folder), "--ls-url", url, "--api-key", token, "--title", f"{TITLE} aggregated")
    assert done.returncode == 0, done.stderr
    assert "imported 6 tasks; created 6 annotations" in done.stdout
    again = export_tasks(ls_client, find_project(ls_client, f"{TITLE} aggregated").id)
    assert {e.key: e.labels for e in accept(again, schema).examples} == got
    data = {t["data"]["key"]: t["data"] for t in tasks}
    for task in again:
        for field in ("text", "title", "publication", "date", "article_id", "paragraph"):
            assert task["data"][field] == data[task["data"]["key"]][field]

    # import the raw configuration with one user per pseudonym: every annotation and the agreement come back
    raw_title = f"{TITLE} raw"
    done = run_cli("import", str(folder), "--config", "raw", "--annotators", "users")
    assert done.returncode == 1  # no key given: one line
    args = ("import", str(folder), "--config", "raw", "--annotators", "users", "--ls-url", url, "--api-key", token)
    done = run_cli(*args, "--title", raw_title)
    assert done.returncode == 0, done.stderr
    assert "imported 6 tasks; created 18 annotations" in done.stdout and "created 3 annotator users" in done.stdout
    rerun = run_cli(*args, "--title", raw_title)
    assert "imported 0 tasks; created 0 annotations; skipped 6 tasks already there" in rerun.stdout
    copy = export_tasks(ls_client, find_project(ls_client, raw_title).id)
    assert {e.key: e.labels for e in accept(copy, schema).examples} == got

    def annotations(tasks):
        return Counter(
            (
                t["data"]["key"],
                a["lead_time"],
                a["was_cancelled"],
                a["ground_truth"],
                _key(results_to_labels(schema, a["result"], t["data"]), schema),
            )
            for t in tasks
            for a in t["annotations"]
        )

    assert annotations(copy) == annotations(tasks)
    emails = {u.id: u.email for u in ls_client.users.list()}
    assert {emails[a["completed_by"]].split("@")[1] for t in copy for a in t["annotations"]} == {ANNOTATOR_DOMAIN}

    def figures(report):  # agreement without annotator names, to 9 decimals (pairs come in another order)
        def r(value):
            return None if value is None else round(value, 9)

        return {
            name: (
                r(d["alpha"]),
                r(d["percent_agreement"]),
                r(d["kappa_mean"]),
                sorted(r(p["kappa"] or 0) for p in d.get("pairs") or []),
            )
            for name, d in report["dimensions"].items()
        }

    assert figures(agreement_report(copy, schema)) == figures(agreement_report(tasks, schema))

    # agreement from Label Studio and from the exported folder agree
    live = run_cli("agreement", "--ls-url", url, "--api-key", token, "--project", str(project_id), "--json")
    assert live.returncode == 0, live.stderr
    from_folder = run_cli("agreement", "--from-export", str(folder), "--json")
    live_report, folder_report = json.loads(live.stdout), json.loads(from_folder.stdout)
    assert live_report["counts"]["annotators"] == 3 and live_report["counts"]["cancelled_annotations"] == 1
    assert [(h["key"], h["dimension"]) for h in live_report["adjudication"]] == [(tie, "threat_characterization")]
    assert figures(live_report) == figures(folder_report)


def test_malformed_file_imports_nothing_unless_told_to_skip(label_studio, ls_client, schema):
    title = "Malformed e2e"
    args = ("import", str(MALFORMED), "--ls-url", label_studio.url, "--api-key", label_studio.token, "--title", title)
    done = run_cli(*args)
    assert done.returncode == 1
    assert [line.split(": ")[2] for line in done.stderr.splitlines() if line.startswith("rejected:")] == [
        f"line {n}" for n in (3, 4, 5, 6, 7, 8)
    ]
    assert find_project(ls_client, title) is None  # nothing was imported, not even the project

    # ok-1 was provisioned before, without labels: it gets the file's labels; ok-2 is a new task
    provision(
        ls_client,
        schema,
        [{"key": "ok-1", "text": "Moscow denies any plans to invade.", "title": "Talks"}],
        title,
        label_studio.url,
    )
    done = run_cli(*args, "--skip-invalid")
    assert done.returncode == 0, done.stderr
    assert "imported 1 tasks, labelled 1 tasks already there; created 2 annotations" in done.stdout
    assert "6 rejected rows" in done.stdout
    project = find_project(ls_client, title)
    stored = {t.data["key"]: t for t in ls_client.tasks.list(project=project.id)}
    assert sorted(stored) == ["ok-1", "ok-2"]
    labels = results_to_labels(schema, ls_client.annotations.list(id=stored["ok-1"].id)[0].result, stored["ok-1"].data)
    assert labels["threat_characterization"] == "contested" and labels["frames"] == [
        "Security_and_defense",
        "Political",
    ]

    again = run_cli(*args, "--skip-invalid")  # a second run adds nothing
    assert "imported 0 tasks; created 0 annotations; skipped 2 tasks already there" in again.stdout
    assert sum(len(ls_client.annotations.list(id=t.id)) for t in stored.values()) == 2


def test_import_as_predictions(label_studio, ls_client, schema):
    title = "Predictions e2e"
    done = run_cli(
        *("import", str(MALFORMED), "--ls-url", label_studio.url, "--api-key", label_studio.token),
        *("--title", title, "--as", "predictions", "--skip-invalid"),
    )
    assert done.returncode == 0, done.stderr
    assert "imported 2 tasks; created 2 predictions" in done.stdout
    for task in ls_client.tasks.list(project=find_project(ls_client, title).id):
        (prediction,) = ls_client.predictions.list(task=task.id)
        assert prediction.model_version == "import"
        assert not ls_client.annotations.list(id=task.id)
        labels = results_to_labels(schema, prediction.result, task.data)
        expected = "contested" if task.data["key"] == "ok-1" else "genuine"
        assert labels["threat_characterization"] == expected


def test_a_rerun_after_a_partial_failure_writes_what_is_missing(label_studio, ls_client, schema, tmp_path):
    """Label Studio goes away after 2 of 5 annotations: the second run gives the task that got 2 of its 3 the third
    one and the other task both of its own (before, the part-labelled task was skipped for good); a third run adds
    nothing. The texts hold U+2028 and U+2029, which JSON lines keep inside a row."""
    import httpx

    from exchange.importer import ImportFailed, import_parsed, read_file

    title = "Partial import e2e"
    texts = {"p-1": "Moscow\u2028denies any plans to invade.", "p-2": "NATO\u2029answers the build-up."}
    rows = [
        ("p-1", "ann-a", "genuine"),
        ("p-1", "ann-b", "contested"),
        ("p-1", "ann-c", "manufactured"),
        ("p-2", "ann-a", "genuine"),
        ("p-2", "ann-b", "contested"),
    ]
    path = tmp_path / "long.jsonl"
    path.write_text(
        "".join(
            json.dumps({"key": k, "text": texts[k], "annotator": who, "threat_characterization": v}, ensure_ascii=False)
            + "\n"
            for k, who, v in rows
        ),
        encoding="utf-8",
    )
    parsed = read_file(path, schema)
    assert not parsed.rejected and [len(t.annotations) for t in parsed.tasks] == [3, 2]

    class Annotations:
        """The real client's annotations, whose third create finds Label Studio gone."""

        created = 0

        def create(self, **kwargs):
            if Annotations.created == 2:
                raise httpx.ConnectError("injected: Label Studio went away")
            Annotations.created += 1
            return ls_client.annotations.create(**kwargs)

        def __getattr__(self, name):
            return getattr(ls_client.annotations, name)

    class Flaky:
        annotations = Annotations()

        def __getattr__(self, name):
            return getattr(ls_client, name)

    with pytest.raises(ImportFailed, match="already written: 2 tasks and 2 of 5 annotations"):
        import_parsed(Flaky(), schema, parsed, ls_url=label_studio.url, title=title)

    args = ("import", str(path), "--ls-url", label_studio.url, "--api-key", label_studio.token, "--title", title)
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert (
        "imported 0 tasks, labelled 1 tasks already there, completed 1 tasks an earlier import left part-labelled; "
        "created 3 annotations" in done.stdout
    )
    stored = {t.data["key"]: t for t in ls_client.tasks.list(project=find_project(ls_client, title).id)}
    assert {key: task.data["text"] for key, task in stored.items()} == texts

    def answers() -> dict[str, list[str]]:
        return {
            key: sorted(
                results_to_labels(schema, a.result, task.data)["threat_characterization"]
                for a in ls_client.annotations.list(id=task.id)
            )
            for key, task in stored.items()
        }

    assert answers() == {"p-1": ["contested", "genuine", "manufactured"], "p-2": ["contested", "genuine"]}
    again = run_cli(*args)
    assert "imported 0 tasks; created 0 annotations; skipped 2 tasks already there" in again.stdout, again.stdout
    assert answers() == {"p-1": ["contested", "genuine", "manufactured"], "p-2": ["contested", "genuine"]}
