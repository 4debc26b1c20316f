"""Project-scoped API keys: creation, hashing, DRF authentication, scopes and per-key rate limits.

A key looks like ``lh_<prefix>_<secret>``. The prefix finds the row (unique, indexed);
only the sha256 of the whole key is stored, compared in constant time. A request
authenticated by a key carries no user (``request.user`` is anonymous, so every
user-only endpoint refuses it) and reaches exactly one project, through
`get_project_for_api`, with the scopes the manager gave the key.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from learning.models import ApiKey
from projects.access import get_project_for_user
from projects.models import Project, Role

KEYWORD = "Api-Key"
SCOPES = [value for value, _ in ApiKey.SCOPES]
# Writing last_used_at on every request would turn each prediction into two writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    # Keys carry 256 random bits: a fast hash is enough (no dictionary to attack), and it keeps
    # authentication well under a millisecond.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@transaction.atomic
def create_api_key(project: Project, *, name: str, scopes: list[str], user: Any) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the key itself, which is never stored and shown only now."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"Scopes must be some of {', '.join(SCOPES)}.")
    name = name.strip()
    if not name:
        raise ValueError("Give the key a name (who or what uses it).")
    prefix = secrets.token_hex(4)
    key = f"lh_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey.objects.create(project=project, name=name[:100], prefix=prefix, hashed_key=hash_key(key),
                                scopes=sorted(set(scopes)), created_by=user)
    return row, key


def find_key(key: str) -> ApiKey | None:
    """The active or revoked row of a presented key, or None when it does not match one."""
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "lh":
        return None
    row = ApiKey.objects.select_related("project__team").filter(prefix=parts[1]).first()
    if row is None or not hmac.compare_digest(row.hashed_key, hash_key(key)):
        return None
    return row


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <key>`."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != KEYWORD.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid Api-Key header: give `Api-Key <key>`.")
        try:
            presented = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        row = find_key(presented)
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if not row.is_active:
            raise exceptions.AuthenticationFailed("This API key was revoked.")
        now = timezone.now()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=row.pk).update(last_used_at=now)
        return AnonymousUser(), row

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


class ApiKeySchema(OpenApiAuthenticationExtension):
    target_class = "learning.keys.ApiKeyAuthentication"
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "Project API key: `Api-Key <key>` (created by a project manager)."}


def request_key(request: Any) -> ApiKey | None:
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiKey) else None


class IsUserOrApiKey(BasePermission):
    """A logged-in user (token or session) or a project API key; the view checks project and scope."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated) or request_key(request) is not None


def get_project_for_api(request: Any, pk: int | str, *, scope: str, role: str = Role.VIEWER) -> Project:
    """`get_project_for_user` for endpoints that also take API keys: a key reaches only its project
    (404 for any other) and only with the scope the endpoint needs (403)."""
    key = request_key(request)
    if key is None:
        return get_project_for_user(request, pk, role=role)
    try:
        same = int(pk) == key.project_id
    except (TypeError, ValueError):
        same = False
    if not same:
        raise Http404("No such project.")
    if not key.has_scope(scope):
        raise PermissionDenied(f"This API key lacks the “{scope}” scope.")
    project = key.project
    project.user_role = None  # type: ignore[attr-defined]
    return project


def acting_user(request: Any) -> Any:
    """Who a write is attributed to: the user, or the manager who created the API key."""
    key = request_key(request)
    return key.created_by if key is not None else request.user


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Requests per API key (LABELHUB_API_KEY_RATE), counted in the shared cache so every web
    process on every machine sees the same count. User tokens are not limited here."""

    scope = "api_key"

    def get_rate(self) -> str:
        return settings.API_KEY_RATE

    def allow_request(self, request: Request, view: Any) -> bool:
        # The rate is read per request so a settings change (and the tests) take effect at once.
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        key = request_key(request)
        return None if key is None else f"labelhub:throttle:api-key:{key.pk}"


def accepts_api_keys(func: Any) -> Any:
    """Put under `@api_view`: the endpoint takes project API keys (checked by `get_project_for_api`)
    beside user tokens, rate-limited per key."""
    func.permission_classes = [IsUserOrApiKey]
    func.throttle_classes = [ApiKeyRateThrottle]
    return func
