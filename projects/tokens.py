"""Personal API tokens: creation, hashing, DRF authentication and the per-user request rate.

A token looks like ``lhp_<prefix>_<secret>`` and is sent as ``Authorization: Token <key>``, the
header DRF's own tokens used, so integrators' scripts keep working with a new key. Only the sha256 of
the whole key is stored (the row is found by it: the key has 256 random bits, so the hash leaks
nothing worth timing); the key is shown once, at creation. A token can expire and be revoked.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from redis.exceptions import RedisError
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from labelhub.credentials import hash_key, new_key, presented_key
from labelhub.errors import ActionError
from projects.models import PersonalToken
from projects.throttling import AtomicSlidingWindow

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # rest_framework.views imports this module through its settings
    from rest_framework.views import APIView

KEYWORD = "Token"
# Writing last_used_at on every request would turn each call into two writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Choices offered on the token page; None never expires.
EXPIRY_DAYS = [30, 90, 365, None]


@transaction.atomic
def create_personal_token(user: Any, *, name: str,
                          expires_in_days: int | None) -> tuple[PersonalToken, str]:
    """Create a token; returns the row and the key itself, which is never stored and shown only now."""
    name = name.strip()
    if not name:
        raise ActionError("Give the token a name (which script or machine uses it).")
    if expires_in_days is not None and expires_in_days <= 0:
        raise ActionError("A token must last at least one day.")
    prefix, key = new_key("lhp")
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    row = PersonalToken.objects.create(user=user, name=name[:100], prefix=prefix, hashed_key=hash_key(key),
                                       expires_at=expires_at)
    return row, key


class PersonalTokenAuthentication(BaseAuthentication):
    """`Authorization: Token <key>`: the request acts as the token's user."""

    def authenticate(self, request: Request) -> tuple[Any, PersonalToken] | None:
        presented = presented_key(request, KEYWORD, what="token")
        if presented is None:
            return None
        row = PersonalToken.objects.select_related("user").filter(hashed_key=hash_key(presented)).first()
        if row is None or not row.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if row.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This token was revoked.")
        if row.is_expired:
            raise exceptions.AuthenticationFailed("This token has expired.")
        now = timezone.now()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            PersonalToken.objects.filter(pk=row.pk).update(last_used_at=now)
        return row.user, row

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


class PersonalTokenSchema(OpenApiAuthenticationExtension):
    target_class = "projects.tokens.PersonalTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "Personal token: `Token <key>` (created on the API token page); acts as you."}


class UserApiThrottle(AtomicSlidingWindow):
    """LABELHUB_USER_API_RATE requests per user, whether by personal token or by session.

    Project API keys are left to their own per-key limit (projects.access.CredentialRateThrottle);
    anonymous requests are refused before a throttle runs. Counted exactly in Redis
    (projects.throttling); with Redis down it lets requests through rather than refusing every
    person's script.
    """

    scope = "user"

    def get_rate(self) -> str:
        return str(settings.USER_API_RATE)

    def allow_request(self, request: Request, view: APIView) -> bool:
        # Read per request so a settings change (and the tests) take effect at once.
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            logger.warning("Per-user API rate limit unavailable, request let through: %r", exc)
            return True

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if not (request.user and request.user.is_authenticated):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}
