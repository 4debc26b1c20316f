"""Webhooks reach public addresses only (SSRF): internal URLs are refused at registration, every attempt
checks the address it connects to, and a refused attempt leaves a generic line in the log.

No test sends traffic anywhere but loopback: public-looking names are answered by a stubbed resolver."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.urls import reverse

from labelhub.errors import ActionError
from serving import webhooks
from serving.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


class Receiver:
    """A local HTTP server that records what reaches it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def resolver(monkeypatch: Any) -> dict[str, list[str]]:
    """Names the tests make up resolve to the addresses put here; everything else resolves as usual."""
    answers: dict[str, list[str]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            lookups.append(host)
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    answers["__lookups__"] = lookups  # type: ignore[assignment]
    return answers


@pytest.fixture
def quick(settings: Any) -> None:
    settings.WEBHOOK_RETRY_DELAYS = [0, 0]
    settings.WEBHOOK_TIMEOUT_SECONDS = 2


INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://10.0.0.5/hook",
    "http://192.168.1.1/hook",
    "http://172.16.3.4/hook",
    "http://100.64.0.1/hook",
    "http://localhost:8000/hook",
    "http://[::1]/hook",
    "http://127.0.0.1:6379/",
    "http://0.0.0.0/hook",
    "http://2130706433/hook",
    "http://0x7f.1/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fe80::1]/hook",
    "http://redis:6379/",
    "https://printer.local/hook",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_registering_an_internal_url_is_refused_with_a_form_error(project, alice, login, url):
    with pytest.raises(ActionError, match="public addresses only"):
        webhooks.register_endpoint(project, url=url, events=["import.finished"], user=alice)
    response = login(alice).post(reverse("serving:webhooks", args=[project.pk]),
                                 {"url": url, "events": ["import.finished"]})
    if response.status_code == 400 and b"public addresses only" not in response.content:
        assert b"valid URL" in response.content  # the form's own URL check got there first (e.g. 0x7f.1)
    else:
        assert response.status_code == 400 and b"public addresses only" in response.content
    assert not WebhookEndpoint.objects.exists()


def test_an_ftp_url_is_a_form_error_not_a_server_error(project, alice, login):
    response = login(alice).post(reverse("serving:webhooks", args=[project.pk]),
                                 {"url": "ftp://example.com/hook", "events": ["import.finished"]})
    assert response.status_code == 400 and b"http:// or https://" in response.content
    assert not WebhookEndpoint.objects.exists()


def test_public_urls_and_allowed_internal_hosts_can_be_registered(project, alice, settings):
    webhooks.register_endpoint(project, url="https://hooks.example.com/labelhub", events=["import.finished"],
                               user=alice)
    settings.WEBHOOK_ALLOWED_HOSTS = ["receiver.internal", "10.0.0.5"]
    webhooks.register_endpoint(project, url="http://receiver.internal:8080/h", events=["import.finished"], user=alice)
    webhooks.register_endpoint(project, url="http://10.0.0.5/h", events=["import.finished"], user=alice)
    assert WebhookEndpoint.objects.count() == 3


def _register_unchecked(project: Any, alice: Any, url: str) -> WebhookEndpoint:
    # As an endpoint registered before the policy, or a name that resolved elsewhere then.
    return WebhookEndpoint.objects.create(project=project, url=url, events=["import.finished"], secret="s",
                                          created_by=alice)


@pytest.mark.parametrize("addresses", [["127.0.0.1"], ["93.184.216.34", "127.0.0.1"], ["169.254.169.254"],
                                       ["::1"], ["::ffff:10.0.0.1"]])
def test_a_name_that_resolves_to_an_internal_address_is_refused_at_send_time(
        project, alice, receiver, resolver, run_jobs, quick, addresses):
    resolver["hooks.example.com"] = addresses
    _register_unchecked(project, alice, f"http://hooks.example.com:{receiver.port}/hook")
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {})
    delivery = WebhookDelivery.objects.get()
    assert receiver.requests == []
    # Generic, final, no status code: the log says nothing about what listens where.
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
    assert delivery.last_status_code is None and delivery.last_error == webhooks.REFUSED_TARGET


def test_a_stored_internal_ip_url_gets_the_same_generic_line_whether_a_port_is_open_or_not(
        project, alice, receiver, run_jobs, quick, login):
    _register_unchecked(project, alice, f"http://127.0.0.1:{receiver.port}/open")
    _register_unchecked(project, alice, "http://127.0.0.1:9/closed")
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {})
    assert receiver.requests == []
    assert {(d.status, d.last_status_code, d.last_error) for d in WebhookDelivery.objects.all()} == {
        (DeliveryStatus.FAILED, None, webhooks.REFUSED_TARGET)}
    page = login(alice).get(reverse("serving:webhooks", args=[project.pk]))
    assert page.status_code == 200 and b"not allowed for webhooks" in page.content
    assert b"ConnectionRefused" not in page.content and b"HTTP 200" not in page.content


def test_it_resolves_once_and_connects_to_the_checked_address_with_the_real_host_header(
        project, alice, receiver, resolver, run_jobs, quick, settings, monkeypatch):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.test"]
    resolver["hooks.test"] = ["127.0.0.1"]
    connected: list[tuple[str, int]] = []
    real_connect = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        connected.append(address)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    webhooks.register_endpoint(project, url=f"http://hooks.test:{receiver.port}/hook?x=1",
                               events=["import.finished"], user=alice)
    with run_jobs():
        webhooks.emit(project.pk, "import.finished", {})
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.SUCCEEDED, delivery.last_error
    assert resolver["__lookups__"] == ["hooks.test"]  # one lookup: nothing to rebind between check and connect
    assert ("127.0.0.1", receiver.port) in connected
    assert receiver.requests[0]["host"] == f"hooks.test:{receiver.port}"


def test_a_redirect_is_reported_not_followed(project, alice, resolver, run_jobs, quick, settings):
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
        settings.WEBHOOK_RETRY_DELAYS = []
        webhooks.register_endpoint(project, url=f"http://127.0.0.1:{server.server_address[1]}/",
                                   events=["import.finished"], user=alice)
        with run_jobs():
            webhooks.emit(project.pk, "import.finished", {})
    finally:
        server.shutdown()
        server.server_close()
    delivery = WebhookDelivery.objects.get()
    assert delivery.last_status_code == 302 and delivery.status == DeliveryStatus.FAILED
