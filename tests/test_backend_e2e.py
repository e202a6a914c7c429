"""A real Label Studio connects to the backend on a real port, asks for predictions and stores them.

The request bodies Label Studio sends are recorded and compared with tests/fixtures/label_studio_requests, which
the protocol tests replay. Refresh them after a Label Studio upgrade: WORKBENCH_UPDATE_FIXTURES=1 pytest -m e2e.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from annotation_config.regions import results_to_labels
from backend.app import create_app
from backend.settings import Settings
from studio.provision import connect_backend, provision, request_predictions
from workbench.services import ServerThread

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).parent / "fixtures" / "label_studio_requests"


def _shape(value, key: str = ""):
    """The structure Label Studio gives a JSON value: keys and types (null matches any type). Task `data` is our
    own content, so only Label Studio's envelope around it is compared."""
    if key == "data":
        return "data"
    if isinstance(value, dict):
        return {name: _shape(item, name) for name, item in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return None if value is None else type(value).__name__


def _same_shape(a, b) -> bool:
    if a is None or b is None:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return not a or not b or _same_shape(a[0], b[0])
    return a == b


def test_label_studio_stores_backend_predictions_for_every_dimension(
    label_studio, ls_client, schema, sample_tasks, tmp_path, cold_start_predictor
):
    record_dir = tmp_path / "recorded"
    settings = Settings(models_dir=tmp_path / "models", record_dir=record_dir)
    no_registry = (lambda project: None, lambda project: [])
    app = create_app(settings, predictors=(lambda: cold_start_predictor, None), registry=no_registry)
    version = cold_start_predictor.model_version
    with ServerThread(app) as backend:
        result = provision(ls_client, schema, sample_tasks, "Backend e2e", label_studio.url)
        backend_id = connect_backend(ls_client, result.project_id, backend.url)  # LS calls /health and /setup here
        request_predictions(ls_client, result.project_id)
        # A webhook event of each kind the backend acts on, sent by Label Studio itself.
        task = next(iter(ls_client.tasks.list(project=result.project_id)))
        ls_client.annotations.create(
            id=task.id,
            result=[
                {
                    "from_name": "threat_characterization",
                    "to_name": "text",
                    "type": "choices",
                    "value": {"choices": ["genuine"]},
                }
            ],
        )
        ls_client.ml.train(id=backend_id)

    tasks = list(ls_client.tasks.list(project=result.project_id, fields="all", page_size=500))
    assert len(tasks) == len(sample_tasks)
    for stored in tasks:
        predictions = [p for p in stored.predictions if p.model_version == version]
        assert len(predictions) == 1, f"task {stored.id} has {len(stored.predictions)} predictions"
        labels = results_to_labels(schema, predictions[0].result, stored.data)
        for dim in schema.of_kind("single"):
            assert labels.get(dim.name) in dim.values
        assert 0 < predictions[0].score < 0.9

    recorded = {}
    for path in sorted(record_dir.glob("*.json")):
        route = path.stem.split("-", 1)[1]
        body = json.loads(path.read_text(encoding="utf-8"))
        key = route if route != "webhook" else f"webhook-{body.get('action')}"
        recorded.setdefault(key, body)
    assert {"setup", "predict", "webhook-ANNOTATION_CREATED", "webhook-START_TRAINING"} <= set(recorded)
    if os.environ.get("WORKBENCH_UPDATE_FIXTURES"):
        shutil.rmtree(FIXTURES, ignore_errors=True)
        FIXTURES.mkdir(parents=True)
        for key, body in recorded.items():
            if key == "predict":
                body["tasks"] = body["tasks"][:3]  # enough to replay; keeps the fixture small
            (FIXTURES / f"{key}.json").write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", "utf-8")
    for key, body in recorded.items():
        fixture = FIXTURES / f"{key}.json"
        if fixture.exists():
            kept = json.loads(fixture.read_text(encoding="utf-8"))
            if key == "predict":
                body = {**body, "tasks": body["tasks"][:1]}
                kept = {**kept, "tasks": kept["tasks"][:1]}
            assert _same_shape(_shape(body), _shape(kept)), f"Label Studio's {key} request changed shape; refresh"
