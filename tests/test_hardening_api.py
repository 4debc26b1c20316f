"""Bad input to the API answers 4xx and changes nothing; who may route predictions to the annotation queue;
comment redirects stay on this site."""
from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.models import ExampleScore
from projects.models import Dataset, DatasetStatus, Example, Membership, Role
from serving import keys, served

pytestmark = pytest.mark.django_db

DEEP = "[" * 100_000 + "]" * 100_000


def raw_post(client: APIClient, url: str, body: str | bytes) -> Any:
    return client.post(url, data=body, content_type="application/json")


# --- Bulk pushes ---------------------------------------------------------------------------------------------------

BAD_PUSHES = [
    pytest.param('{"examples": [{"text": "fine"}, {"text": "b", "metadata": {"a\\u0000b": 1}}]}', id="nul-in-key"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"k": "x\\u0000y"}}]}', id="nul-in-value"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"k": ["\\ud800"]}}]}', id="lone-surrogate-in-value"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"\\udc00": 1}}]}', id="lone-surrogate-in-key"),
    pytest.param('{"examples": [{"text": "bad \\ud800 text"}]}', id="lone-surrogate-in-text"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"score": 1e999}}]}', id="1e999"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"score": -1e999}}]}', id="minus-1e999"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"score": NaN}}]}', id="nan-literal"),
    pytest.param('{"examples": [{"text": "b", "label": "\\u0000"}]}', id="nul-label"),
    pytest.param('{"examples": [{"text": "b", "external_id": "' + "x" * 300 + '"}]}', id="long-external-id"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"m": ' + "[" * 60 + "]" * 60 + "}}]}",
                 id="nested-60-deep"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"m": ' + "[" * 900 + "]" * 900 + "}}]}",
                 id="nested-900-deep"),
    pytest.param('{"examples": [{"text": "b", "metadata": {"m": ' + DEEP + "}}]}", id="nested-100000-deep"),
    pytest.param(DEEP, id="body-nested-100000-deep"),
]


@pytest.mark.parametrize("body", BAD_PUSHES)
def test_a_bad_bulk_push_is_a_400_that_changes_nothing(project, alice, api_client, body):
    response = raw_post(api_client(alice), reverse("api-bulk-import", args=[project.pk]), body)
    assert response.status_code == 400, response.content
    assert Example.objects.count() == 0
    assert not Dataset.objects.exclude(status__in=[DatasetStatus.DONE, DatasetStatus.FAILED]).exists()
    json.dumps(response.json()).encode("utf-8")  # the answer itself is valid JSON text


def test_a_bad_push_names_the_row_and_the_problem(project, alice, api_client):
    body = '{"examples": [{"text": "fine"}, {"text": "second", "metadata": {"score": 1e999}}]}'
    response = raw_post(api_client(alice), reverse("api-bulk-import", args=[project.pk]), body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors[0]["row"] == 2 and "score" in errors[0]["reason"] and "1e999" in errors[0]["reason"]


# --- Predict -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [DEEP, '{"texts": ' + DEEP + "}", '{"texts": ["a"], "route": ' + DEEP + "}"])
def test_a_predict_body_nested_100000_deep_is_a_400(project, alice, api_client, body):
    response = raw_post(api_client(alice), reverse("api-predict", args=[project.pk]), body)
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]


@pytest.fixture
def viewer(team: Any) -> User:
    user = User.objects.create_user(username="victor", password="victor-password-123")
    Membership.objects.create(team=team, user=user, role=Role.VIEWER)
    return user


@pytest.fixture
def all_uncertain(trained: Any) -> Any:
    served.set_threshold(trained, mode="confidence", confidence_threshold=1.0)
    return trained


def _predict(client: APIClient, project: Any, body: dict[str, Any]) -> Any:
    return raw_post(client, reverse("api-predict", args=[project.pk]), json.dumps(body))


def test_a_viewer_cannot_route_predictions_into_the_queue(all_uncertain, viewer, api_client):
    project = all_uncertain
    examples, routed = Example.objects.count(), ExampleScore.objects.filter(is_routed=True).count()
    client = api_client(viewer)
    refused = _predict(client, project, {"texts": ["a brand new case"], "route": True})
    assert refused.status_code == 403 and "route" in refused.json()["detail"]
    # Without `route`, a viewer gets predictions and nothing is routed.
    answered = _predict(client, project, {"texts": ["a brand new case"]})
    assert answered.status_code == 200
    prediction = answered.json()["predictions"][0]
    assert prediction["is_uncertain"] and not prediction["is_routed"] and prediction["example_id"] is None
    assert _predict(client, project, {"texts": ["a brand new case"], "route": False}).status_code == 200
    assert Example.objects.count() == examples
    assert ExampleScore.objects.filter(is_routed=True).count() == routed


def test_annotators_and_predict_keys_route(all_uncertain, alice, bob, api_client):
    project = all_uncertain
    by_bob = _predict(api_client(bob), project, {"texts": ["routed by bob"], "route": True})
    assert by_bob.status_code == 200 and by_bob.json()["predictions"][0]["is_routed"]
    key = keys.create_api_key(project, name="router", scopes=["predict"], user=alice)[1]
    machine = APIClient()
    machine.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    by_key = _predict(machine, project, {"texts": ["routed by a key"]})
    assert by_key.status_code == 200 and by_key.json()["predictions"][0]["is_routed"]
    assert Example.objects.filter(text__in=["routed by bob", "routed by a key"]).count() == 2


def test_the_schema_states_the_routing_rule(alice, login):
    schema = login(alice).get(reverse("api-schema"), {"format": "json"})
    assert schema.status_code == 200
    assert b"A viewer's request predicts but routes nothing" in schema.content


# --- Comments ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["javascript:alert(1)", "https://evil.example/", "//evil.example/x",
                                    "JaVaScRiPt:alert(document.domain)"])
def test_a_comment_never_redirects_off_site(project, bob, login, target):
    example = Example.objects.create(project=project, text="a text", content_hash="h")
    response = login(bob).post(reverse("annotation:comments", args=[project.pk, example.pk]),
                               {"body": "looks wrong", "next": target})
    assert response.status_code == 302
    assert response["Location"] == reverse("annotation:label", args=[project.pk])
    assert example.comments.count() == 1
