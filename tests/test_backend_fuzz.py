"""Generated bad payloads against every route: the backend answers 2xx or 4xx, never 5xx."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.app import create_app
from backend.settings import Settings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
task_data = st.dictionaries(st.sampled_from(["text", "title", "publication", "date", "x"]), json_values, max_size=4)
tasks = st.lists(st.fixed_dictionaries({"data": task_data}, optional={"id": json_values}), max_size=4)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({"tasks": tasks}, optional={"project": json_values, "params": json_values}),
    st.fixed_dictionaries(
        {"action": st.text(max_size=20) | st.sampled_from(["START_TRAINING", "ANNOTATION_CREATED"])},
        optional={"project": json_values, "annotation": json_values},
    ),  # fmt: skip
    st.fixed_dictionaries(
        {"schema": st.text(max_size=60) | st.just("<View><Text name='text' value='$text'/></View>")},
        optional={"project": json_values, "access_token": json_values},
    ),  # fmt: skip
)
raw_bodies = st.binary(max_size=200)


@pytest.fixture(scope="module")
def client(tmp_path_factory, cold_start_predictor):
    app = create_app(
        Settings(models_dir=tmp_path_factory.mktemp("models"), max_tasks=3, max_text_chars=50),
        predictors=(lambda: cold_start_predictor, None),
        registry=(lambda project: None, lambda project: []),
    )
    with TestClient(app) as test_client:
        yield test_client


ROUTES = ["/predict", "/setup", "/webhook"]


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from(ROUTES), payload=payloads)
def test_generated_json_never_gives_5xx(client, route, payload):
    response = client.post(route, json=payload)
    assert response.status_code < 500, (route, payload, response.text)
    assert "Traceback" not in response.text


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from(ROUTES + ["/health", "/versions", "/metrics", "/"]), body=raw_bodies,
       method=st.sampled_from(["post", "get", "put", "delete"]))  # fmt: skip
def test_raw_bytes_and_other_methods_never_give_5xx(client, route, body, method):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if method in ("post", "put") else {}
    response = getattr(client, method)(route, **kwargs)
    assert response.status_code < 500, (route, method, body, response.text)
