"""Small helpers for the security settings: django-axes' client address, and the password-reset limit."""
from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.views import PasswordResetView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

logger = logging.getLogger(__name__)
PASSWORD_RESET_WINDOW_SECONDS = 3600


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


def _count(key: str) -> int:
    """One more request counted under `key` in a window of PASSWORD_RESET_WINDOW_SECONDS from its first one."""
    cache.add(key, 0, timeout=PASSWORD_RESET_WINDOW_SECONDS)
    try:
        return int(cache.incr(key) or 0)
    except ValueError:  # expired between the two calls, or the cache is down: let it through
        return 0


class PasswordResetLimitedView(PasswordResetView):
    """Django's password reset, with at most LABELHUB_PASSWORD_RESET_LIMIT requests an hour from one address
    and for one e-mail address: each request sends a mail, so an unlimited form lets anyone flood an inbox
    (or the mail server) from outside. Over the limit it answers 429 and sends nothing; the page is the same
    whether the address belongs to an account or not."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        limit = settings.PASSWORD_RESET_LIMIT
        email = str(request.POST.get("email", "")).strip().lower()
        keys = [f"labelhub:password-reset:ip:{client_ip(request)}"]
        if email:
            keys.append(f"labelhub:password-reset:email:{hashlib.sha256(email.encode()).hexdigest()}")
        counts = [_count(key) for key in keys]
        if limit and max(counts) > limit:
            logger.warning("password reset refused: over %s an hour (address %s)", limit, client_ip(request))
            return render(request, "registration/password_reset_limited.html",
                          {"limit": limit, "minutes": PASSWORD_RESET_WINDOW_SECONDS // 60}, status=429)
        return super().post(request, *args, **kwargs)
