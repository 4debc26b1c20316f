"""Webhooks: signed event deliveries, sent by background jobs with retries and backoff.

`emit` records one delivery per subscribed endpoint and queues it on commit, so the
request that caused the event never waits for the receiver. A delivery job makes one
HTTP attempt (LABELHUB_WEBHOOK_TIMEOUT_SECONDS); a timeout, a connection error or a
non-2xx answer schedules the next attempt after the next delay of
LABELHUB_WEBHOOK_RETRY_DELAYS, and after the last one the delivery is marked failed.
With Redis the retries are RQ scheduled jobs (workers run with `--with-scheduler`);
without Redis a timer in the web process queues them (lost if it stops, like every
embedded job).

Signature: header ``X-LabelHub-Signature: t=<unix time>,v1=<hex>`` where hex is
HMAC-SHA256(endpoint secret, "<t>.<raw body>"); see `verify_signature`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from labelhub.errors import ActionError
from labelhub.jobs import enqueue
from projects.models import Dataset, Project
from serving.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent

logger = logging.getLogger(__name__)

EVENTS = [value for value, _ in WebhookEvent.choices]
SIGNATURE_HEADER = "X-LabelHub-Signature"
USER_AGENT = "LabelHub-Webhooks/1"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: int = 300,
                     now: float | None = None) -> bool:
    """What a receiver does: recompute the HMAC and refuse old timestamps (replays)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


@transaction.atomic
def register_endpoint(project: Project, *, url: str, events: list[str], user: Any) -> WebhookEndpoint:
    """Register a URL for events; the signing secret is generated here."""
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise ActionError(f"Events must be some of {', '.join(EVENTS)}.")
    if not url.startswith(("http://", "https://")):
        raise ActionError("The URL must start with http:// or https://.")
    return WebhookEndpoint.objects.create(project=project, url=url, events=sorted(set(events)),
                                          secret=secrets.token_hex(32), created_by=user)


def change_endpoint(endpoint: WebhookEndpoint, *, action: str) -> None:
    """Pause, resume or delete an endpoint (its delivery log goes with it on delete)."""
    if action == "delete":
        endpoint.delete()
    elif action in {"pause", "resume"}:
        endpoint.is_active = action == "resume"
        endpoint.save(update_fields=["is_active"])
    else:
        raise ActionError(f"Unknown webhook action {action!r}: pause, resume or delete.")


def emit(project_id: int, event: str, data: dict[str, Any]) -> int:
    """Record a delivery of `event` for each active endpoint that wants it; sent after commit. Returns how many."""
    assert event in EVENTS, event
    endpoints = [e for e in WebhookEndpoint.objects.filter(project_id=project_id, is_active=True).only("id", "events")
                 if event in e.events]
    if not endpoints:
        return 0
    now = timezone.now()
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(id=uuid.uuid4(), endpoint=endpoint, event=event, created_at=now,
                        payload=json.loads(json.dumps({"event": event, "project": project_id,
                                                       "created_at": now.isoformat(), "data": data},
                                                      cls=DjangoJSONEncoder)))
        for endpoint in endpoints)
    for delivery in deliveries:
        enqueue("serving.jobs.deliver_webhook", str(delivery.id), queue="default")
    return len(deliveries)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # a redirect is an answer we report, not one we follow with the signed body

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def deliver(delivery_id: str) -> WebhookDelivery | None:
    """Make one attempt at a delivery and record it; schedules the retry. Safe to run twice."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status not in {DeliveryStatus.PENDING, DeliveryStatus.RETRYING}:
        return delivery
    # Claim this attempt: a duplicate job (or a retry racing a late one) finds the count moved on.
    claimed = WebhookDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts,
                                             status=delivery.status).update(attempts=F("attempts") + 1)
    if not claimed:
        return None
    delivery.attempts += 1
    endpoint = delivery.endpoint
    body = json.dumps({"id": str(delivery.id), **delivery.payload}, separators=(",", ":")).encode("utf-8")
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json", "User-Agent": USER_AGENT,
        "X-LabelHub-Event": delivery.event, "X-LabelHub-Delivery": str(delivery.id),
        SIGNATURE_HEADER: sign(endpoint.secret, body, timestamp),
    }
    code: int | None = None
    error = ""
    try:
        code = _post(endpoint.url, body, headers, settings.WEBHOOK_TIMEOUT_SECONDS)
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except TimeoutError:
        error = f"Timed out after {settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        error = f"{type(reason).__name__}: {reason}" if "timed out" not in str(reason) else (
            f"Timed out after {settings.WEBHOOK_TIMEOUT_SECONDS:g} s")
    now = timezone.now()
    delivery.last_status_code = code
    delivery.last_error = error[:1000]
    delays = settings.WEBHOOK_RETRY_DELAYS
    if not error:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.SUCCEEDED, now, None
    elif delivery.attempts <= len(delays):
        delay = delays[delivery.attempts - 1]
        delivery.status, delivery.next_attempt_at = DeliveryStatus.RETRYING, now + timedelta(seconds=delay)
    else:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.FAILED, now, None
    delivery.save(update_fields=["status", "last_status_code", "last_error", "next_attempt_at", "finished_at"])
    if delivery.status == DeliveryStatus.RETRYING:
        schedule_retry(str(delivery.id), delays[delivery.attempts - 1])
    return delivery


def schedule_retry(delivery_id: str, delay: float) -> None:
    # With RQ the retry waits in the scheduler (workers run --with-scheduler); without, in a timer.
    enqueue("serving.jobs.deliver_webhook", delivery_id, queue="default", delay=delay)


def retry_now(delivery: WebhookDelivery) -> None:
    """A manager's "send again" on a failed delivery: one more round of attempts."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.PENDING, attempts=0,
                                                          finished_at=None, next_attempt_at=None)
    enqueue("serving.jobs.deliver_webhook", str(delivery.pk), queue="default")


def import_finished(dataset: Dataset) -> None:
    """The `import.finished` event for a dataset whose background import ended (done or failed)."""
    if dataset.status not in {"done", "failed"}:
        return
    emit(dataset.project_id, "import.finished", {
        "dataset_id": dataset.pk, "name": dataset.name, "status": dataset.status, "source": dataset.source,
        "imported": dataset.imported_count, "duplicates": dataset.duplicate_count,
        "labelled": dataset.labelled_count, "errors": dataset.error_count,
    })
