"""Project-scoped API keys: creation, hashing, DRF authentication, scopes and per-key rate limits.

A key looks like ``lh_<prefix>_<secret>``. The prefix finds the row (unique, indexed);
only the sha256 of the whole key is stored, compared in constant time. A request
authenticated by a key carries no user (``request.user`` is anonymous, so every
user-only endpoint refuses it) and reaches exactly one project, through
`projects.access.get_project_for_api` (a key is a `ProjectCredential`), with the
scopes the manager gave the key; the per-key rate limit is there too.
"""
from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, TypeVar

from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import Model, QuerySet
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from labelhub.credentials import hash_key, new_key, presented_key
from labelhub.errors import ActionError
from projects.models import Project, Team
from serving.models import ApiKey
from serving.prepared import Prepared

KEYWORD = "Api-Key"
SCOPES = [value for value, _ in ApiKey.SCOPES]
# Writing last_used_at on every request would turn each prediction into two writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@transaction.atomic
def create_api_key(project: Project, *, name: str, scopes: list[str], user: Any) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the key itself, which is never stored and shown only now."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ActionError(f"Scopes must be some of {', '.join(SCOPES)}.")
    name = name.strip()
    if not name:
        raise ActionError("Give the key a name (who or what uses it).")
    prefix, key = new_key("lh")
    row = ApiKey.objects.create(project=project, name=name[:100], prefix=prefix, hashed_key=hash_key(key),
                                scopes=sorted(set(scopes)), created_by=user)
    return row, key


# The key with its project and team (what select_related("project__team") would fetch), as one row.
_MODELS: tuple[tuple[type[Model], str], ...] = ((ApiKey, ""), (Project, "project__"), (Team, "project__team__"))


def _key_query(prefix: str) -> QuerySet[ApiKey]:
    columns = [path + f.attname for model, path in _MODELS for f in model._meta.concrete_fields]
    return ApiKey.objects.filter(prefix=prefix).order_by().values_list(*columns)[:1]


M = TypeVar("M", bound=Model)


def _instance(model: type[M], values: Iterator[Any]) -> M:
    """The next columns of a `_key_query` row as a `model` instance, as the ORM's select_related builds it."""
    names = [f.attname for f in model._meta.concrete_fields]
    return model.from_db("default", names, [next(values) for _ in names])


# Run on every request with a key: compiled once per process (serving/prepared.py says why).
_KEY = Prepared(_key_query, kinds=(str,))


def find_key(key: str) -> ApiKey | None:
    """The active or revoked row of a presented key (its project and team loaded), or None when it does not match
    one."""
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "lh" or not parts[1]:
        return None
    found = _KEY.first(parts[1])
    if found is None:
        return None
    values = iter(found)
    row = _instance(ApiKey, values)
    project = _instance(Project, values)
    team = _instance(Team, values)
    if not hmac.compare_digest(row.hashed_key, hash_key(key)):
        return None
    project.team = team
    row.project = project
    return row


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <key>`."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ApiKey] | None:
        presented = presented_key(request, KEYWORD, what="API key")
        if presented is None:
            return None
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
    target_class = "serving.keys.ApiKeyAuthentication"
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "Project API key: `Api-Key <key>` (created by a project manager)."}


def request_key(request: Any) -> ApiKey | None:
    """The API key that authenticated this request, if one did."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiKey) else None
