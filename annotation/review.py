"""The review queue: flagged items with their comments and labels, resolved by a manager or sent back."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Page, Paginator
from django.db.models import Prefetch, QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from annotation import actions
from annotation.models import Annotation, Comment, Flag
from annotation.stats import label_display, labels_by_key
from labelhub.errors import ActionError
from projects.access import AuthenticatedHttpRequest, get_project_for_user
from projects.models import Project, Role

PAGE_SIZE = 25


def open_flag_count(project: Project) -> int:
    return Flag.objects.filter(example__project=project, resolved_at__isnull=True).count()


def _with_item(flags: QuerySet[Flag]) -> QuerySet[Flag]:
    return flags.select_related("example", "raised_by", "resolved_by").prefetch_related(
        Prefetch("example__comments", queryset=Comment.objects.select_related("author")),
        Prefetch("example__annotations",
                 queryset=Annotation.objects.select_related("annotator", "taxonomy_version")
                 .order_by("-created_at", "-id")),
    )


def _attach_labels(project: Project, flags: list[Flag]) -> list[Flag]:
    """Give each shown annotation its labels as they read now (names, colours, retired or not)."""
    annotations = [a for flag in flags for a in flag.example.annotations.all()]
    labels = labels_by_key(project, project.current_taxonomy(), also={k for a in annotations for k in a.label_keys})
    for annotation in annotations:
        annotation.labels_shown = [label_display(labels.get(k), k) for k in annotation.label_keys]  # type: ignore[attr-defined]
    return flags


def _page(project: Project, *, show_resolved: bool, number: Any) -> Page:
    flags = Flag.objects.filter(example__project=project, resolved_at__isnull=not show_resolved)
    flags = flags.order_by("-resolved_at", "-id") if show_resolved else flags.order_by("-created_at", "-id")
    page = Paginator(_with_item(flags), PAGE_SIZE).get_page(number)
    page.object_list = _attach_labels(project, list(page.object_list))
    return page


@require_GET
@login_required
@vary_on_headers("HX-Request")
def review_queue(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Open flags newest first (`?show=resolved` for the resolved ones); also serves the nav's count badge."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    target = request.htmx.target if request.htmx else None
    if target == "review-count":
        return render(request, "annotation/partials/review-count.html",
                      {"project": project, "open_count": open_flag_count(project)})
    show_resolved = request.GET.get("show") == "resolved"
    context = {
        "project": project, "show_resolved": show_resolved, "open_count": open_flag_count(project),
        "page": _page(project, show_resolved=show_resolved, number=request.GET.get("page")),
    }
    if target == "review-list":
        return render(request, "annotation/partials/review-list.html", context)
    return render(request, "annotation/review.html", context)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def resolve(request: AuthenticatedHttpRequest, pk: int, flag_pk: int) -> HttpResponse:
    """Close a flag with an optional note; `relabel=1` also sends its item back for re-labelling."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    flag = get_object_or_404(Flag, pk=flag_pk, example__project=project)
    relabel = request.POST.get("relabel") == "1"
    note = request.POST.get("resolution", "").strip()
    if relabel:
        # A flag has no field for it: the resolution keeps the record of what was done.
        note = f"Sent back for re-labelling: {note}" if note else "Sent back for re-labelling"
    error = notice = ""
    try:
        actions.resolve_flag(flag, user=request.user, resolution=note, relabel=relabel)
    except ActionError as exc:
        # Most often: another manager resolved it a moment ago.
        error = str(exc)
    else:
        notice = "Resolved and sent back for re-labelling." if relabel else "Resolved."
    if not request.htmx:
        if error:
            messages.error(request, error)
        else:
            messages.success(request, f"Flag on “{flag.example.text[:60]}”: {notice}")
        return redirect(reverse("annotation:review", args=[project.pk]))
    fresh = _attach_labels(project, list(_with_item(Flag.objects.filter(pk=flag.pk))))[0]
    response = render(request, "annotation/partials/review-flag.html",
                      {"project": project, "flag": fresh, "error": error, "notice": notice})
    response["HX-Trigger"] = "flags-changed"
    return response
