"""schemathesis against the backend's own OpenAPI schema: every route, generated cases, zero 5xx, and every
response conforms to the schema it documents (status codes, content types, bodies).

Driven through schemathesis' Python API (operation strategies + hypothesis): its pytest plugin does not work
with the pytest version used here. For a longer run: WORKBENCH_SCHEMATHESIS_CASES=2000 pytest -k schemathesis.
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from backend.app import create_app
from backend.settings import Settings

# Only the three operations with a body vary (the GETs have one possible request): 3 x 350 > 1,000 cases.
CASES_PER_ROUTE = int(os.environ.get("WORKBENCH_SCHEMATHESIS_CASES", "350"))


def test_every_route_conforms_and_never_fails(tmp_path, cold_start_predictor):
    app = create_app(
        Settings(models_dir=tmp_path / "models", max_tasks=8, max_text_chars=400),
        predictors=(lambda: cold_start_predictor, None),
        registry=(lambda project: None, lambda project: []),
    )
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    calls: dict[str, int] = {}
    for result in api.get_all_operations():
        run_operation(result.ok(), calls)
    assert set(calls) == {
        "GET /health",
        "POST /setup",
        "POST /predict",
        "POST /webhook",
        "GET /versions",
        "GET /metrics",
    }
    print("schemathesis cases per operation:", calls, "total", sum(calls.values()))
    assert sum(calls.values()) >= 3 * CASES_PER_ROUTE, calls


def run_operation(operation, calls: dict[str, int]) -> None:
    """Generate cases for one operation and validate every response against the schema."""

    @settings(
        max_examples=CASES_PER_ROUTE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def check(case):
        # Excluded: "schema-valid request accepted". The OpenAPI schema cannot express the label schema, so a
        # task without its text field or an unparseable labeling config is schema-valid yet rightly a 422.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])
        calls[operation.label] = calls.get(operation.label, 0) + 1

    check()
