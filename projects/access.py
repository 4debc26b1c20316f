"""The one access check every page and endpoint goes through.

A user outside a project's team gets 404 (not 403): we don't confirm that a
project exists to someone who may not know of it. A member whose role is too low
for the action gets 403.
"""
from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404

from projects.models import ROLE_RANK, Project, Role, Team


def get_project_for_user(request: Any, pk: int | str, *, role: str = Role.VIEWER) -> Project:
    """The project `pk` if request.user may act on it with at least `role`; 404 or 403 otherwise."""
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
    project.user_role = actual  # type: ignore[attr-defined]
    return project


def managed_teams(user: Any) -> Any:
    """Teams in which the user may create projects."""
    if user.is_superuser:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user, memberships__role=Role.MANAGER)
