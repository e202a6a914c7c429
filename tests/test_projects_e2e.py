"""Two Label Studio projects on one backend: training the second, even on inverted labels, never changes what the
first is served. Real Label Studio, real training jobs in child processes, real uvicorn port."""

from __future__ import annotations

import httpx
import pytest

from annotation_config.regions import labels_to_results
from backend.app import create_app
from backend.settings import Settings
from studio.provision import connect_backend, provision
from tests.test_training_e2e import rule_labels, wait_for
from training.registry import project_registry
from workbench.services import ServerThread

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
INVERTED = {"manufactured": "not_applicable", "not_applicable": "manufactured", "against": "favor", "none": "against"}


def inverted_labels(text: str) -> dict:
    """The labels of `rule_labels`, each single choice swapped for another: a project taught the opposite."""
    labels = rule_labels(text)
    for name in ("threat_characterization", "stance_us_policy"):
        labels[name] = INVERTED[labels[name]]
    return labels


def test_training_one_project_never_changes_what_another_is_served(
    label_studio, ls_client, schema, sample_tasks, tmp_path
):
    tasks = sample_tasks[::4][:27]  # paragraphs from every article, so the test split gets groups
    models = tmp_path / "models"
    settings = Settings(
        models_dir=models,
        reload_interval=0.5,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        train_args="--max-length 64 --seed 7 --no-instant-rival --no-onnx",
    )
    with ServerThread(create_app(settings)) as backend:
        projects = {}
        for name, labels_of in (("first", rule_labels), ("second", inverted_labels)):
            project = provision(ls_client, schema, tasks, f"Two projects e2e: {name}", label_studio.url)
            backend_id = connect_backend(ls_client, project.project_id, backend.url)
            for task in ls_client.tasks.list(project=project.project_id, page_size=500):
                result = labels_to_results(schema, labels_of(task.data["text"]), task.data)
                ls_client.annotations.create(id=task.id, result=result)
            projects[name] = (project.project_id, backend_id)

        def train(name: str) -> str:
            project_id, backend_id = projects[name]
            ls_client.ml.train(id=backend_id)  # Label Studio sends START_TRAINING for this project

            def promoted() -> str | None:
                health = httpx.get(f"{backend.url}/health", params={"project": project_id}).json()
                assert health["training"]["state"] != "failed", health["training"]
                idle = health["training"]["state"] == "succeeded" and health["rung"] == "trained"
                return health["model_version"] if idle else None

            return wait_for(promoted, 600, f"project {name}'s model to serve")

        def answers(project_id: int) -> dict:
            body = {"project": f"{project_id}.1700000000", "tasks": [{"data": t} for t in tasks]}
            return httpx.post(f"{backend.url}/predict", json=body, timeout=60).json()

        first_id, second_id = projects["first"][0], projects["second"][0]
        first_version = train("first")
        before = answers(first_id)
        assert before["model_version"] == first_version
        second_version = train("second")
        assert second_version != first_version
        after = answers(first_id)
        assert after == before  # the same model, the same suggestions, after the inverted project trained
        assert answers(second_id)["model_version"] == second_version
        assert project_registry(models, first_id).versions() == [first_version]
        assert project_registry(models, second_id).versions() == [second_version]
