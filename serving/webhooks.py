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

SSRF: a manager chooses the URL, the server sends the request, so webhooks reach public
addresses only. Registration refuses obviously internal URLs (private, loopback,
link-local, reserved IPs; localhost, single-label and *.internal/*.local names). Every
attempt resolves the host once, refuses the attempt if any address it resolves to is
not public, and connects to that checked address (Host header and TLS SNI/certificate
still name the host), so DNS cannot change the answer between check and connect.
Redirects are never followed. A refused attempt is logged with one generic message and
no status code, so the delivery log is no port scanner. Hosts listed in
LABELHUB_WEBHOOK_ALLOWED_HOSTS are exempt (receivers on an internal network).
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

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


# --- Where webhooks may go (SSRF) --------------------------------------------------------------------------------

REFUSED_TARGET = "Not delivered: the URL's address is not allowed for webhooks."
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan", ".intranet")
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedTargetError(Exception):
    """The URL resolves to an address webhooks may not reach (private, loopback, link-local, metadata...)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked IP the request connects to


def _is_public(ip: _IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 reaches the IPv4 host.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not _is_public(embedded):
            return False
    # is_global excludes private, loopback, link-local (169.254.169.254, the cloud metadata address),
    # shared (100.64/10), reserved and unspecified ranges.
    return ip.is_global and not ip.is_multicast


def _literal_ip(host: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # The legacy forms the resolver also accepts: 2130706433, 0x7f.1, 127.1 are all 127.0.0.1.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_allowed_host(host: str) -> bool:
    return host.lower() in settings.WEBHOOK_ALLOWED_HOSTS


def _internal_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or "." not in host or host.endswith(_INTERNAL_SUFFIXES)


def _split(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ActionError("The URL is not valid (check the host and the port).") from None
    if parts.scheme not in {"http", "https"}:
        raise ActionError("The URL must start with http:// or https://.")
    if not parts.hostname:
        raise ActionError("The URL has no host.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def check_url(url: str) -> None:
    """Refuse a URL that is obviously internal, without asking DNS (the resolved address is checked at send time)."""
    _, host, _, _ = _split(url)
    if _is_allowed_host(host):
        return
    ip = _literal_ip(host)
    if (ip is not None and not _is_public(ip)) or (ip is None and _internal_name(host)):
        raise ActionError(
            f"Webhooks go to public addresses only; {host} is a private, loopback, link-local or internal address. "
            "An administrator can allow an internal receiver with LABELHUB_WEBHOOK_ALLOWED_HOSTS.")


def resolve_target(url: str) -> Target:
    """Resolve the URL's host once and check every address; the one to connect to. Raises RefusedTargetError."""
    try:
        scheme, host, port, path = _split(url)
    except ActionError as exc:
        raise RefusedTargetError(str(exc)) from None
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise OSError(f"{host} has no address")
    if not _is_allowed_host(host):
        if _literal_ip(host) is None and _internal_name(host):
            raise RefusedTargetError(host)
        # All of them, not only the first: a name that resolves to a public and a private address
        # must not be a way in.
        if any(not _is_public(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses):
            raise RefusedTargetError(host)
    return Target(scheme=scheme, host=host, port=port, path=path, address=addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address; the Host header still names the URL's host."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to the checked address; SNI and the certificate check use the URL's host."""

    def __init__(self, target: Target, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._tls)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


@transaction.atomic
def register_endpoint(project: Project, *, url: str, events: list[str], user: Any) -> WebhookEndpoint:
    """Register a URL for events; the signing secret is generated here."""
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise ActionError(f"Events must be some of {', '.join(EVENTS)}.")
    if not url.startswith(("http://", "https://")):
        raise ActionError("The URL must start with http:// or https://.")
    check_url(url)
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
    """One POST to the checked address of `url`; its status code. A redirect is an answer we report, not one
    we follow (http.client never follows)."""
    target = resolve_target(url)
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(target, timeout)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        return int(connection.getresponse().status)
    finally:
        connection.close()


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
    refused = False
    try:
        code = _post(endpoint.url, body, headers, settings.WEBHOOK_TIMEOUT_SECONDS)
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except RefusedTargetError:
        # One message whatever the address, and no retries: nothing was sent, nothing to learn.
        logger.warning("webhook delivery %s refused: %s is not a public address", delivery.pk, endpoint.url)
        error, refused = REFUSED_TARGET, True
    except TimeoutError:
        error = f"Timed out after {settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
    except (http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        error = f"{type(reason).__name__}: {reason}" if "timed out" not in str(reason) else (
            f"Timed out after {settings.WEBHOOK_TIMEOUT_SECONDS:g} s")
    now = timezone.now()
    delivery.last_status_code = code
    delivery.last_error = error[:1000]
    delays = settings.WEBHOOK_RETRY_DELAYS
    if not error:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = DeliveryStatus.SUCCEEDED, now, None
    elif delivery.attempts <= len(delays) and not refused:
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
    # Queued at once: the attempt's outcome is already saved; never hold the retry for a transaction.
    enqueue("serving.jobs.deliver_webhook", delivery_id, queue="default", delay=delay, after_commit=False)


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
