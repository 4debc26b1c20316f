"""Webhooks: HMAC signatures, delivery by jobs to a local receiver, retries with backoff, the log page."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.urls import reverse

from labelhub.errors import ActionError
from learning.models import ModelVersion
from projects import imports as project_imports
from projects import jobs as project_jobs
from serving import keys, served, webhooks
from serving.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


class Receiver:
    """A local HTTP server that answers with the queued status codes (200 once they run out)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.codes: list[int] = []
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                # Header names are case-insensitive (urllib sends "X-labelhub-event").
                receiver.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if receiver.delay:
                    time.sleep(receiver.delay)
                code = receiver.codes.pop(0) if receiver.codes else 200
                try:
                    self.send_response(code)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    # Webhooks refuse loopback (SSRF) unless the host is allowed, as an internal receiver would be.
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def quick_retries(settings: Any) -> None:
    settings.WEBHOOK_RETRY_DELAYS = [0, 0]
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5


def test_signatures_verify_and_refuse_tampering_and_replays():
    body = b'{"event":"model.promoted"}'
    header = webhooks.sign("s3cret", body, 1_700_000_000)
    assert webhooks.verify_signature("s3cret", body, header, now=1_700_000_010)
    assert not webhooks.verify_signature("s3cret", body + b" ", header, now=1_700_000_010)
    assert not webhooks.verify_signature("other", body, header, now=1_700_000_010)
    assert not webhooks.verify_signature("s3cret", body, header, now=1_700_009_999)  # too old
    assert not webhooks.verify_signature("s3cret", body, "garbage")


def test_it_delivers_a_signed_event_to_a_local_receiver(project, alice, receiver, run_jobs, quick_retries):
    endpoint = webhooks.register_endpoint(project, url=receiver.url, events=["import.finished"], user=alice)
    with run_jobs():
        assert webhooks.emit(project.pk, "import.finished", {"dataset_id": 1}) == 1
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert webhooks.verify_signature(endpoint.secret, request["body"], request["headers"]["x-labelhub-signature"])
    payload = json.loads(request["body"])
    assert payload["event"] == "import.finished" and payload["data"] == {"dataset_id": 1}
    assert request["headers"]["x-labelhub-event"] == "import.finished"
    delivery = WebhookDelivery.objects.get()
    assert payload["id"] == str(delivery.pk) == request["headers"]["x-labelhub-delivery"]
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == 1 and delivery.last_status_code == 200


def test_it_only_sends_subscribed_events_to_active_endpoints(project, alice, receiver, run_jobs):
    webhooks.register_endpoint(project, url=receiver.url, events=["model.promoted"], user=alice)
    paused = webhooks.register_endpoint(project, url=receiver.url, events=["import.finished"], user=alice)
    WebhookEndpoint.objects.filter(pk=paused.pk).update(is_active=False)
    with run_jobs():
        assert webhooks.emit(project.pk, "import.finished", {}) == 0
    assert receiver.requests == []
    with pytest.raises(ActionError):
        webhooks.register_endpoint(project, url=receiver.url, events=["everything"], user=alice)
    with pytest.raises(ActionError):
        webhooks.register_endpoint(project, url="ftp://example.com", events=["model.promoted"], user=alice)


def test_it_retries_errors_then_succeeds(project, alice, receiver, run_jobs, quick_retries):
    receiver.codes = [500, 503]
    webhooks.register_endpoint(project, url=receiver.url, events=["import.finished"], user=alice)
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {})
    delivery = WebhookDelivery.objects.get()
    assert len(receiver.requests) == 3
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == 3
    # Every attempt is signed afresh, with the same delivery id.
    assert len({r["headers"]["x-labelhub-delivery"] for r in receiver.requests}) == 1


def test_it_marks_a_delivery_failed_after_the_last_retry(project, alice, receiver, run_jobs, quick_retries):
    receiver.codes = [500, 500, 500, 500]
    webhooks.register_endpoint(project, url=receiver.url, events=["import.finished"], user=alice)
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {})
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3
    assert delivery.last_status_code == 500 and delivery.last_error == "HTTP 500"


def test_a_receiver_that_times_out_is_retried_then_failed(project, alice, receiver, run_jobs, settings):
    settings.WEBHOOK_RETRY_DELAYS = [0]
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    receiver.delay = 1.0
    webhooks.register_endpoint(project, url=receiver.url, events=["import.finished"], user=alice)
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {})
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 2
    assert "Timed out" in delivery.last_error


def test_a_closed_port_is_a_failed_attempt_not_a_crash(project, alice, run_jobs, quick_retries, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    webhooks.register_endpoint(project, url="http://127.0.0.1:9/nothing", events=["import.finished"], user=alice)
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {})
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and delivery.last_error


def test_retries_wait_with_backoff(project, alice, receiver, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_RETRY_DELAYS = [30, 120]
    receiver.codes = [500]
    webhooks.register_endpoint(project, url=receiver.url, events=["import.finished"], user=alice)
    with django_capture_on_commit_callbacks(execute=False):
        webhooks.emit(project.pk, "import.finished", {})
    delivery = WebhookDelivery.objects.get()
    scheduled: list[tuple[str, float]] = []
    import serving.webhooks as module

    original = module.schedule_retry
    module.schedule_retry = lambda delivery_id, delay: scheduled.append((delivery_id, delay))
    try:
        webhooks.deliver(str(delivery.pk))
    finally:
        module.schedule_retry = original
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.RETRYING and scheduled == [(str(delivery.pk), 30)]
    assert 25 < (delivery.next_attempt_at - delivery.created_at).total_seconds() < 40
    if settings.REDIS_URL:
        import django_rq

        webhooks.schedule_retry(str(delivery.pk), 30)
        assert django_rq.get_queue("default").scheduled_job_registry.count == 1
    # A duplicate job for an attempt already made does nothing.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.SUCCEEDED)
    assert webhooks.deliver(str(delivery.pk)).status == DeliveryStatus.SUCCEEDED
    assert len(receiver.requests) == 1


def test_the_prediction_api_never_waits_for_a_webhook(trained, alice, receiver, django_capture_on_commit_callbacks):
    receiver.delay = 3.0
    served.set_threshold(trained, mode="confidence", confidence_threshold=1.0)
    webhooks.register_endpoint(trained, url=receiver.url, events=["prediction.routed"], user=alice)
    key = keys.create_api_key(trained, name="t", scopes=["predict"], user=alice)[1]
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    started = time.perf_counter()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("api-predict", args=[trained.pk]), {"texts": ["an unseen case"]}, format="json")
    assert response.status_code == 200 and time.perf_counter() - started < 2.5
    delivery = WebhookDelivery.objects.get(event="prediction.routed")
    assert delivery.attempts == 0 or delivery.status != DeliveryStatus.SUCCEEDED  # queued, not sent inline
    routed = delivery.payload["data"]["predictions"][0]
    assert routed["is_routed"] and routed["prediction_id"] == response.json()["predictions"][0]["prediction_id"]


def test_promotion_and_finished_imports_send_events(
        trained, alice, receiver, run_jobs, quick_retries, tmp_path, add_examples, label_examples, train):
    webhooks.register_endpoint(trained, url=receiver.url, events=["model.promoted", "import.finished"], user=alice)
    v1 = ModelVersion.objects.get(project=trained)
    more = add_examples(trained, [f"we affirm more {i}" for i in range(4)])
    label_examples(trained, alice, more, ["No"] * 4)
    with run_jobs():
        train(trained)  # v2, promoted automatically
        served.rollback(trained, user=alice)
    events = [json.loads(r["body"]) for r in receiver.requests]
    assert [(e["event"], e["data"]["model_version"], e["data"]["kind"]) for e in events] == [
        ("model.promoted", 2, "auto"), ("model.promoted", 1, "rollback")]
    assert v1.number == 1
    receiver.requests.clear()
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("more.csv", b"text,label\nwe overrule the lot,Yes\n", content_type="text/csv")
    dataset = project_imports.create_dataset_from_upload(trained, upload=upload, user=alice)
    project_imports.configure_import(dataset, text_column="text", label_column="label")
    with run_jobs():
        project_jobs.import_dataset(dataset.pk)  # what start_import queues
    with run_jobs():
        project_jobs.import_dataset(dataset.pk)  # run again: an import already done reports nothing new
    events = [json.loads(r["body"]) for r in receiver.requests]
    finished = [e for e in events if e["event"] == "import.finished"]
    assert len(finished) == 1 and finished[0]["data"]["status"] == "done" and finished[0]["data"]["imported"] == 1

    # A JSON push over the API is an import too.
    receiver.requests.clear()
    with run_jobs():
        project_imports.import_records(trained, records=[{"text": "we overrule it all again", "label": "Yes"}],
                                       user=alice)
    pushed = [json.loads(r["body"]) for r in receiver.requests]
    assert [e["data"]["source"] for e in pushed if e["event"] == "import.finished"] == ["api"]


def test_the_webhooks_page_registers_and_logs_deliveries(project, alice, bob, charlie, receiver, run_jobs,
                                                        quick_retries, htmx, login):
    url = reverse("serving:webhooks", args=[project.pk])
    response = login(alice).post(url, {"url": receiver.url, "events": ["import.finished"]}, **htmx)
    assert response.status_code == 200 and b'id="webhooks"' in response.content
    assert receiver.url.encode() in response.content
    endpoint = WebhookEndpoint.objects.get()
    receiver.codes = [500, 500, 500]
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {"dataset_id": 5})
    page = login(alice).get(url)
    assert page.status_code == 200 and b"Failed" in page.content and b"HTTP 500" in page.content
    delivery = WebhookDelivery.objects.get()
    with run_jobs():
        response = login(alice).post(reverse("serving:webhook-redeliver", args=[project.pk, delivery.pk]),
                                     **htmx)
    assert b'id="webhook-deliveries"' in response.content
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    log = login(alice).get(url, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="webhook-deliveries")
    assert b'id="webhook-deliveries"' in log.content and b"Delivered" in log.content
    response = login(alice).post(reverse("serving:webhook-change", args=[project.pk, endpoint.pk]),
                                 {"action": "pause"})
    assert response.status_code == 302 and not WebhookEndpoint.objects.get().is_active
    assert login(alice).post(url, {"url": "not a url", "events": []}).status_code == 400
    assert login(bob).get(url).status_code == 403
    assert login(bob).post(url, {"url": receiver.url, "events": ["import.finished"]}).status_code == 403
    assert login(charlie).get(url).status_code == 404
    assert WebhookEndpoint.objects.count() == 1
