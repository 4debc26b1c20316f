"""Property-based API test: schemathesis generates requests from the published OpenAPI schema
(`/api/schema/`) and sends them to the Django app (WSGI, in process); no answer may be a 5xx.

Runs twice over every operation: as alice (a manager's token, so writes are reached too) and with a
project API key holding every scope. Path ids point at alice's trained project half of the time, so
the generated bodies reach real code paths rather than stopping at a 404.
"""
from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from projects import tokens
from serving import keys, served

pytestmark = pytest.mark.django_db

EXAMPLES = 12


# Loaded once at collection: the schema endpoint needs no database. (schemathesis' lazy
# `from_fixture` loader does not work with pytest 9.)
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture
def api_context(trained: Any, alice: Any, settings: Any, give_curve: Any) -> Iterator[Any]:
    # As Django's test client does: a finished request must not close the test's database connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    settings.API_KEY_RATE = "100000/min"
    settings.USER_API_RATE = "100000/min"
    give_curve(trained.model_versions.get())
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.9)
    context = SimpleNamespace(
        project_id=trained.pk, token=tokens.create_personal_token(alice, name="fuzz", expires_in_days=None)[1],
        api_key=keys.create_api_key(trained, name="fuzz", scopes=["predict", "import", "read"], user=alice)[1],
    )
    try:
        yield context
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def _aim_at_project(case: Any, project_id: int) -> None:
    # Alternate between the real project and whatever id was generated (usually a 404).
    if case.path_parameters and "id" in case.path_parameters and hash(repr(case.body)) % 2 == 0:
        case.path_parameters["id"] = project_id


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error_as_a_manager(case: Any, api_context: Any) -> None:
    _aim_at_project(case, api_context.project_id)
    response = case.call(headers={"Authorization": f"Token {api_context.token}"})
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error_with_an_api_key(case: Any, api_context: Any) -> None:
    _aim_at_project(case, api_context.project_id)
    response = case.call(headers={"Authorization": f"Api-Key {api_context.api_key}"})
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
