"""Shared fixtures: a real Label Studio server for the session, the sample schema and tasks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from annotation_config.schema import Schema, load_schema
from studio.provision import DEFAULT_TASKS_PATH, connect, read_tasks
from workbench.services import LabelStudioServer, free_port

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def schema() -> Schema:
    return load_schema()


@pytest.fixture(scope="session")
def sample_tasks(schema: Schema) -> list[dict]:
    return read_tasks(DEFAULT_TASKS_PATH, schema)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio 1.23 on SQLite in a temporary data folder, with a headless admin and token."""
    server = LabelStudioServer(
        data_dir=tmp_path_factory.mktemp("label-studio"),
        port=free_port(),
        username="admin@example.com",
        password=secrets.token_urlsafe(12),
        token=secrets.token_hex(20),
        allow_local_backends=True,  # the backends under test listen on 127.0.0.1
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer):
    return connect(label_studio.url, label_studio.token)


@pytest.fixture(scope="session")
def cold_start_predictor(schema: Schema):
    """The real cold-start predictor on the real all-MiniLM-L6-v2 weights, loaded once per session."""
    from backend.cold_start.embedder import SentenceEmbedder
    from training.cold_start import ColdStartPredictor

    return ColdStartPredictor(schema, SentenceEmbedder())
