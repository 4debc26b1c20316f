"""Model versions (promote, roll back, served without a restart or a load per request), thresholds, pages."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
from django.urls import reverse

from learning import bayes
from learning.models import ModelVersion
from serving import keys, served
from serving.models import DriftReference, ModelPromotion, Prediction, PromotionKind

pytestmark = pytest.mark.django_db


def predict(client, project, texts=("we overrule case 1",)) -> dict:
    response = client.post(reverse("api-predict", args=[project.pk]), data=json.dumps({"texts": list(texts)}),
                           content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def retrain_with_more_labels(add_examples, label_examples, train) -> Callable[..., ModelVersion]:
    """`retrain_with_more_labels(project, alice)`: five more labelled examples, then a training run."""

    def retrain_with_more_labels(project, alice) -> ModelVersion:
        round_ = ModelVersion.objects.filter(project=project).count()
        more = add_examples(project, [f"we overrule again {round_}-{i}" for i in range(5)])
        label_examples(project, alice, more, ["Yes"] * 5)
        return train(project)

    return retrain_with_more_labels


def test_new_versions_serve_automatically_until_a_rollback_pins_one(
        trained, alice, api_client, retrain_with_more_labels):
    client = api_client(alice)
    assert predict(client, trained)["model_version"] == 1
    v2 = retrain_with_more_labels(trained, alice)
    assert v2.number == 2
    assert predict(client, trained)["model_version"] == 2
    assert ModelPromotion.objects.get(version=v2).kind == PromotionKind.AUTO
    response = client.post(reverse("api-model-version-rollback", args=[trained.pk]))
    assert response.status_code == 200 and response.json() == {"model_version": 1, "auto_promote": False}
    assert predict(client, trained)["model_version"] == 1
    v3 = retrain_with_more_labels(trained, alice)  # pinned: v3 is recorded but v1 keeps serving
    assert predict(client, trained)["model_version"] == 1
    response = client.post(reverse("api-model-version-promote", args=[trained.pk, v3.number]))
    assert response.json() == {"model_version": 3, "auto_promote": True}
    assert predict(client, trained)["model_version"] == 3
    versions = client.get(reverse("api-model-version-list", args=[trained.pk])).json()
    assert [(v["number"], v["is_serving"]) for v in versions] == [(3, True), (2, False), (1, False)]


def test_promotion_is_for_managers_and_rollback_needs_an_earlier_version(trained, alice, bob, charlie, api_client):
    assert api_client(bob).post(reverse("api-model-version-promote", args=[trained.pk, 1])).status_code == 403
    assert api_client(charlie).post(reverse("api-model-version-promote", args=[trained.pk, 1])).status_code == 404
    assert api_client(alice).post(reverse("api-model-version-promote", args=[trained.pk, 9])).status_code == 404
    response = api_client(alice).post(reverse("api-model-version-rollback", args=[trained.pk]))
    assert response.status_code == 409 and "no earlier" in response.json()["detail"]


def test_the_model_is_loaded_once_per_version_not_per_request(
        trained, alice, monkeypatch, api_client, retrain_with_more_labels):
    loads = []
    original = bayes.Posterior.from_bytes.__func__

    def counting(cls, data):
        loads.append(1)
        return original(cls, data)

    monkeypatch.setattr(bayes.Posterior, "from_bytes", classmethod(counting))
    served.forget()
    client = api_client(alice)
    for _ in range(5):
        predict(client, trained)
    assert len(loads) == 1
    retrain_with_more_labels(trained, alice)  # v2 promoted (by the "worker")
    loads.clear()
    for _ in range(3):
        assert predict(client, trained)["model_version"] == 2
    assert len(loads) == 1


@pytest.mark.django_db(transaction=True)
def test_promotion_and_rollback_while_requests_are_being_served(
        team, alice, project, fake_encoder, add_examples, api_client, label_examples, retrain_with_more_labels, train):
    texts = [f"we overrule case {i}" for i in range(15)] + [f"we affirm case {i}" for i in range(15)]
    examples = add_examples(project, texts)
    label_examples(project, alice, examples, ["Yes"] * 15 + ["No"] * 15)
    train(project)
    retrain_with_more_labels(project, alice)
    key = keys.create_api_key(project, name="load", scopes=["predict"], user=alice)[1]
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        from django.db import connection
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        try:
            while not stop.is_set():
                response = client.post(reverse("api-predict", args=[project.pk]),
                                       data=json.dumps({"texts": ["we overrule it"]}),
                                       content_type="application/json")
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.content[:200]!r}")
                else:
                    seen.append(response.json()["model_version"])
        finally:
            connection.close()

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    v1, v2 = ModelVersion.objects.get(project=project, number=1), ModelVersion.objects.get(project=project, number=2)
    try:
        for _ in range(5):
            served.rollback(project, user=alice)
            served.promote_version(project, version=v2, user=alice)
        served.promote_version(project, version=v1, user=alice)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors[:3]
    assert set(seen) <= {1, 2} and len(seen) > 0
    # Once the last promotion committed, every process serves v1.
    response = api_client(alice).post(reverse("api-predict", args=[project.pk]),
                                      data=json.dumps({"texts": ["we affirm"]}), content_type="application/json")
    assert response.json()["model_version"] == 1


def test_the_threshold_comes_from_a_target_accuracy(trained, alice, api_client, give_curve):
    version = ModelVersion.objects.get(project=trained)
    give_curve(version)
    served.set_threshold(trained, mode="target", target_accuracy=0.95)
    summary = served.serving_summary(trained)
    assert summary["threshold"] == 0.8  # the lowest threshold whose automated answers reach 95 %
    assert summary["expected_automation_rate"] == 0.6 and summary["expected_accuracy"] == 0.96
    body = predict(api_client(alice), trained)
    assert body["threshold"] == 0.8
    served.set_threshold(trained, mode="target", target_accuracy=0.999)
    summary = served.serving_summary(trained)
    assert summary["expected_automation_rate"] == 0.0 and "every input goes to a person" in summary["note"]
    assert predict(api_client(alice), trained)["predictions"][0]["is_uncertain"]


def test_a_version_without_the_curve_falls_back_to_the_confidence_threshold(
        trained, alice, api_client, drop_curve, login):
    drop_curve(ModelVersion.objects.get(project=trained))
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.7)
    served.set_threshold(trained, mode="target", target_accuracy=0.95)
    summary = served.serving_summary(trained)
    assert summary["threshold"] == 0.7 and "retrain to get the curve" in summary["note"]
    response = login(alice).get(reverse("serving:serving", args=[trained.pk]))
    assert response.status_code == 200 and b"retrain to get the curve" in response.content
    assert predict(api_client(alice), trained)["threshold"] == 0.7


def test_the_serving_page_shows_the_curve_and_saves_a_target(trained, alice, bob, charlie, give_curve, htmx, login):
    give_curve(ModelVersion.objects.get(project=trained))
    url = reverse("serving:serving", args=[trained.pk])
    page = login(alice).get(url)
    assert page.status_code == 200 and b'data-chart="accuracy-coverage"' in page.content
    assert b"accuracy-coverage-data" in page.content
    response = login(alice).post(url, {"threshold_mode": "target", "target_accuracy": "95"}, **htmx)
    assert response.status_code == 200 and b'id="serving-threshold"' in response.content
    assert b"<html" not in response.content
    assert b"60%" in response.content  # the expected automation rate at that target
    assert served.serving_config(trained).target_accuracy == 0.95
    response = login(alice).post(url, {"threshold_mode": "confidence", "confidence_threshold": "0.9"})
    assert response.status_code == 302
    assert served.serving_config(trained).confidence_threshold == 0.9
    response = login(alice).post(url, {"threshold_mode": "target", "target_accuracy": ""})
    assert response.status_code == 400 and b"Give a target accuracy" in response.content
    assert login(bob).get(url).status_code == 200
    assert login(bob).post(url, {"threshold_mode": "confidence", "confidence_threshold": "0.1"}).status_code == 403
    assert login(charlie).get(url).status_code == 404


def test_the_versions_page_compares_promotes_and_rolls_back(
        trained, alice, bob, charlie, drop_curve, htmx, login, retrain_with_more_labels):
    retrain_with_more_labels(trained, alice)
    drop_curve(ModelVersion.objects.get(project=trained, number=1))
    url = reverse("serving:versions", args=[trained.pk])
    page = login(alice).get(url + "?a=1&b=2")
    assert page.status_code == 200 and b"Compare" in page.content and b"v1" in page.content and b"v2" in page.content
    assert b"retrain to get the curve" in page.content
    partial = login(alice).get(url, **htmx)
    assert b'id="model-versions"' in partial.content and b"<html" not in partial.content
    response = login(alice).post(reverse("serving:version-rollback", args=[trained.pk]), **htmx)
    assert b"Rolled back" in response.content
    assert served.serving_state(trained.pk).version_id == ModelVersion.objects.get(project=trained, number=1).pk
    response = login(alice).post(reverse("serving:version-promote", args=[trained.pk, 2]))
    assert response.status_code == 302
    assert served.serving_state(trained.pk).auto_promote
    response = login(alice).post(reverse("serving:version-auto-promote", args=[trained.pk]), **htmx)
    assert not served.serving_state(trained.pk).auto_promote
    assert login(bob).get(url).status_code == 200
    assert b">Promote<" not in login(bob).get(url).content
    assert login(bob).post(reverse("serving:version-rollback", args=[trained.pk])).status_code == 403
    assert login(charlie).get(url).status_code == 404


def test_pages_and_tabs_follow_roles(trained, alice, bob, charlie, login):
    for name in ("serving", "versions", "monitoring", "api-keys", "webhooks"):
        url = reverse(f"serving:{name}", args=[trained.pk])
        assert login(alice).get(url).status_code == 200, name
        assert login(charlie).get(url).status_code == 404, name
        assert login(bob).get(url).status_code == (403 if name in {"api-keys", "webhooks"} else 200), name
    # One "Serving & API" tab; its pages share a row of their own.
    nav = login(bob).get(reverse("learning:model", args=[trained.pk])).content.decode()
    assert "Serving &amp; API" in nav and "Monitoring" not in nav
    nav = login(bob).get(reverse("serving:serving", args=[trained.pk])).content.decode()
    assert "Monitoring" in nav and "API keys" not in nav
    nav = login(alice).get(reverse("serving:monitoring", args=[trained.pk])).content.decode()
    assert "API keys" in nav and "Webhooks" in nav


def test_the_api_keys_page_shows_a_new_key_once_and_revokes(trained, alice, htmx, login):
    url = reverse("serving:api-keys", args=[trained.pk])
    response = login(alice).post(url, {"name": "router", "scopes": ["predict", "read"]}, **htmx)
    assert response.status_code == 200 and b'id="new-api-key"' in response.content
    key = response.content.decode().split('id="new-api-key">')[1].split("<")[0]
    row = keys.find_key(key)
    assert row is not None and row.scopes == ["predict", "read"]
    again = login(alice).get(url).content.decode()
    assert key not in again and f"lh_{row.prefix}_" in again
    assert login(alice).post(url, {"name": "", "scopes": []}).status_code == 400
    response = login(alice).post(reverse("serving:api-key-revoke", args=[trained.pk, row.pk]), **htmx)
    assert b"Revoked" in response.content
    row.refresh_from_db()
    assert not row.is_active


def test_monitoring_shows_volume_automation_confidence_and_drift(trained, alice, api_client, htmx, login):
    assert DriftReference.objects.filter(model_version__project=trained).exists()
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.9)
    client = api_client(alice)
    predict(client, trained, [f"we overrule matter {i}" for i in range(15)] + [f"zebra stripes {i}" for i in range(15)])
    url = reverse("serving:monitoring", args=[trained.pk])
    page = login(alice).get(url)
    assert page.status_code == 200
    assert b'data-chart="prediction-volume"' in page.content and b'data-chart="confidence-over-time"' in page.content
    from serving import monitoring

    timeline = monitoring.timeline(trained, days=1)
    assert timeline["total"] == 30 == Prediction.objects.count()
    assert sum(timeline["confidence_bins"]) == 30
    drift = monitoring.drift(trained, version_id=served.serving_state(trained.pk).version_id)
    assert drift["n_recent"] == 30 and 0 <= drift["outside"] <= 1
    partial = login(alice).get(url + "?days=1", **htmx)
    assert b'id="monitoring"' in partial.content and b"<html" not in partial.content
