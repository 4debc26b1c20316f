"""Small helpers for the security settings (django-axes' client address)."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The address login failures are counted against.

    Behind the HTTPS proxy (BEHIND_HTTPS_PROXY=1) every request comes from the proxy, so the client is
    the last X-Forwarded-For entry: the one the proxy itself appended. Entries before it are whatever
    the client sent, and would let a guesser pick a fresh address for every try.
    """
    if settings.SECURE_PROXY_SSL_HEADER:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if forwarded[-1]:
            return forwarded[-1]
    return request.META.get("REMOTE_ADDR")
