"""The whole loop through a real Label Studio: annotate, START_TRAINING, train in a child process, promote,
serve the new model without restart, and new predictions in Label Studio carry the new model_version."""

from __future__ import annotations

import time

import httpx
import pytest

from annotation_config.regions import labels_to_results, results_to_labels
from backend.app import create_app
from backend.settings import Settings
from studio.provision import connect_backend, provision, request_predictions
from training.registry import project_registry
from workbench.services import ServerThread

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MANUFACTURED_WORDS = ("lies", "propaganda", "fiction", "pretext", "manufactured", "hype", "disinformation")


def rule_labels(text: str) -> dict:
    """Deterministic labels a person might give, so the run is reproducible."""
    lowered = text.lower()
    threat = "manufactured" if any(word in lowered for word in MANUFACTURED_WORDS) else "not_applicable"
    frames = ["Security_and_defense"] if any(w in lowered for w in ("military", "war", "nato")) else ["Political"]
    return {
        "stance_us_policy": "against" if "biden" in lowered or "washington" in lowered else "none",
        "threat_characterization": threat,
        "frames": frames,
    }


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_annotate_train_promote_and_serve_the_new_model(label_studio, ls_client, schema, sample_tasks, tmp_path):
    tasks = sample_tasks[::4][:27]  # paragraphs from every article, so all three splits get groups
    models = tmp_path / "models"
    settings = Settings(
        models_dir=models,
        reload_interval=0.5,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        # The instant-learner rival would decide this on a test split of ~3 rows, a coin flip: this test is about the
        # loop (annotate, train, promote, serve); the rival's refusal has its own tests.
        train_args="--epochs 2 --max-length 64 --batch-size 8 --seed 7 --no-instant-rival",
    )
    app = create_app(settings)
    with ServerThread(app) as backend:
        project = provision(ls_client, schema, tasks, "Training loop e2e", label_studio.url)
        backend_id = connect_backend(ls_client, project.project_id, backend.url)
        request_predictions(ls_client, project.project_id)
        cold_version = httpx.get(f"{backend.url}/health").json()["model_version"]
        assert cold_version.startswith("cold-start-")

        stored = list(ls_client.tasks.list(project=project.project_id, page_size=500))
        for task in stored:
            ls_client.annotations.create(
                id=task.id, result=labels_to_results(schema, rule_labels(task.data["text"]), task.data)
            )
        ls_client.ml.train(id=backend_id)  # Label Studio sends START_TRAINING to /webhook

        def trained() -> dict | None:
            health = httpx.get(f"{backend.url}/health").json()
            assert health["training"]["state"] != "failed", health["training"]
            done = health["model_kind"] == "trained" and health["training"]["state"] == "succeeded"
            return health if done else None

        health = wait_for(trained, 600, "a trained model to serve")
        new_version = health["model_version"]
        assert new_version == project_registry(models, project.project_id).current()
        assert health["training"]["state"] == "succeeded"
        manifest = project_registry(models, project.project_id).manifest(new_version)
        assert manifest["schema_hash"] == schema.hash

        request_predictions(ls_client, project.project_id)  # Label Studio calls /setup, sees the new version

    for task in ls_client.tasks.list(project=project.project_id, fields="all", page_size=500):
        versions = sorted(p.model_version for p in task.predictions)
        assert versions == sorted([cold_version, new_version]), versions
        newest = next(p for p in task.predictions if p.model_version == new_version)
        labels = results_to_labels(schema, newest.result, task.data)
        assert all(labels.get(d.name) in d.values for d in schema.of_kind("single"))
        assert 0 <= newest.score <= 1
