"""The one access check every page and endpoint goes through.

A user outside a project's team gets 404 (not 403): we don't confirm that a
project exists to someone who may not know of it. A member whose role is too low
for the action gets 403.

Machines reach the API with a *project credential* (the serving app's API keys):
DRF's authentication classes, configured in settings, put it in `request.auth`.
This module only needs what `ProjectCredential` says of it, so the ground floor
checks access for every layer without importing the layer that issues keys.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, cast

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.utils.connection import ConnectionProxy
from django_htmx.middleware import HtmxDetails
from redis.exceptions import RedisError
from rest_framework.exceptions import APIException
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.settings import api_settings

from projects.models import ROLE_RANK, Project, Role, Team
from projects.throttling import AtomicSlidingWindow

logger = logging.getLogger(__name__)


class HtmxHttpRequest(HttpRequest):
    """A request that went through django-htmx's middleware (every page's)."""

    htmx: HtmxDetails


class AuthenticatedHttpRequest(HtmxHttpRequest):
    """A page request behind `login_required`."""

    user: Any  # the AUTH_USER_MODEL instance; `Any` keeps the custom-user door open


@dataclass(frozen=True)
class ProjectAccess:
    """Who may do what in one project: the answer of `get_access`."""

    project: Project
    role: str | None  # None for a machine (project credential)

    @property
    def is_manager(self) -> bool:
        return self.role == Role.MANAGER

    @property
    def can_label(self) -> bool:
        return self.role in {Role.MANAGER, Role.ANNOTATOR}


def get_access(request: Any, pk: int | str, *, role: str = Role.VIEWER) -> ProjectAccess:
    """request.user's access to project `pk` with at least `role`; 404 or 403 otherwise."""
    user = request.user
    try:
        project = Project.objects.visible_to(user).select_related("team").distinct().get(pk=int(pk))
    except (Project.DoesNotExist, ValueError, TypeError):
        raise Http404("No such project.") from None
    actual = project.role_of(user)
    if actual is None:
        raise Http404("No such project.")
    if ROLE_RANK[actual] < ROLE_RANK[role]:
        raise PermissionDenied(f"This needs the {Role(role).label.lower()} role in team {project.team}.")
    project.user_role = actual
    return ProjectAccess(project=project, role=actual)


def get_project_for_user(request: Any, pk: int | str, *, role: str = Role.VIEWER) -> Project:
    """The project `pk` if request.user may act on it with at least `role`; 404 or 403 otherwise."""
    return get_access(request, pk, role=role).project


def managed_teams(user: Any) -> QuerySet[Team]:
    """Teams in which the (logged-in) user may create projects."""
    if getattr(user, "is_superuser", False):
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user, memberships__role=Role.MANAGER)


# --- Machines: project credentials (API keys) -------------------------------------------------------------------


class ProjectCredential(Protocol):
    """What an API request's `request.auth` offers when it is a project-scoped key."""

    # A marker rather than an isinstance() check: a runtime Protocol check would touch
    # `project` and `created_by`, two foreign keys, on every request.
    is_project_credential: bool
    pk: Any
    project_id: int
    project: Project
    created_by: Any

    def has_scope(self, scope: str) -> bool: ...


def request_credential(request: Any) -> ProjectCredential | None:
    auth = getattr(request, "auth", None)
    return cast(ProjectCredential, auth) if getattr(auth, "is_project_credential", False) is True else None


def get_project_for_api(request: Any, pk: int | str, *, scope: str, role: str = Role.VIEWER) -> Project:
    """`get_project_for_user` for endpoints that also take project credentials: a credential reaches only
    its project (404 for any other) and only with the scope the endpoint needs (403)."""
    credential = request_credential(request)
    if credential is None:
        return get_project_for_user(request, pk, role=role)
    try:
        same = int(pk) == credential.project_id
    except (TypeError, ValueError):
        same = False
    if not same:
        raise Http404("No such project.")
    if not credential.has_scope(scope):
        raise PermissionDenied(f"This API key lacks the “{scope}” scope.")
    project = credential.project
    project.user_role = None
    return project


def acting_user(request: Any) -> Any:
    """Who a write is attributed to: the user, or the manager who created the credential."""
    credential = request_credential(request)
    return credential.created_by if credential is not None else request.user


class IsUserOrCredential(BasePermission):
    """A logged-in user (token or session) or a project credential; the view checks project and scope."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated) or request_credential(request) is not None


class RateLimitUnavailable(APIException):
    status_code = 503
    default_detail = "The rate limiter is unavailable; try again shortly."
    default_code = "rate_limit_unavailable"


class CredentialRateThrottle(AtomicSlidingWindow):
    """Requests per project credential (LABELHUB_API_KEY_RATE), counted in Redis so every web
    process on every machine sees the same count, exactly under concurrent requests
    (projects.throttling). User tokens are not limited here."""

    scope = "api_key"
    cache_alias = "throttle"

    def get_rate(self) -> str:
        return str(settings.API_KEY_RATE)

    # Its own cache alias: the default one ignores Redis errors (a missed progress bar is
    # fine), a rate limit must not. Resolved per use, so settings overrides apply.
    cache = cast(BaseCache, ConnectionProxy(caches, "throttle"))

    def allow_request(self, request: Request, view: Any) -> bool:
        # The rate is read per request so a settings change (and the tests) take effect at once.
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            # Fail closed: without the shared count a key could exceed its rate unseen.
            logger.warning("API key rate limit unavailable: %r", exc)
            raise RateLimitUnavailable() from exc

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        credential = request_credential(request)
        return None if credential is None else f"labelhub:throttle:api-key:{credential.pk}"


def accepts_api_keys(func: Any) -> Any:
    """Put under `@api_view`: the endpoint takes project credentials (checked by `get_project_for_api`)
    beside user tokens, rate-limited per credential."""
    func.permission_classes = [IsUserOrCredential]
    # The per-user limit of every other endpoint (DEFAULT_THROTTLE_CLASSES) still applies to tokens.
    func.throttle_classes = [CredentialRateThrottle, *api_settings.DEFAULT_THROTTLE_CLASSES]
    return func
