"""Schemathesis over the API's own OpenAPI schema: no server error, no undocumented status.

Every operation gets `LETHE_FUZZ_EXAMPLES` generated cases (5 in the default run; `make fuzz`
asks for more), sent in-process with an admin key that holds every scope, on a database seeded
like tests/test_api.py's, on SQLite and on Postgres.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance
from test_api import seed_models

from app.cli import keys_create
from app.main import create_app
from app.security import SCOPES
from app.settings import Settings

EXAMPLES = int(os.environ.get("LETHE_FUZZ_EXAMPLES", "5"))


@pytest.fixture
def fuzzed(backend_settings: Settings, fake_queue: object) -> Iterator[tuple[TestClient, str]]:
    """The app on a seeded database (SQLite, then Postgres), and a key with every scope."""
    with TestClient(create_app(backend_settings)) as client:
        seed_models(backend_settings)
        yield client, keys_create("fuzz", list(SCOPES), backend_settings)


def test_no_server_error_and_no_undocumented_status(fuzzed: tuple[TestClient, str]) -> None:
    client, key = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures: dict[str, str] = {}
    seen: set[int] = set()
    operations = 0
    for found in schema.get_all_operations():
        operations += 1
        operation = found.ok()

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                headers={"X-API-Key": key}, checks=[not_a_server_error, status_code_conformance]
            )
            seen.add(response.status_code)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # run every operation, list all failures
            failures[operation.label] = str(exc)[:2000]
    assert failures == {}
    # not vacuous: every operation ran, and some cases got past validation
    documented = sum(len(methods) for methods in client.app.openapi()["paths"].values())
    assert operations == documented and seen & {200, 201, 202} and seen & {404, 409, 422}
