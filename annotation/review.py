"""The review queue: the model's data-quality candidates (likely mislabels, low-precision classes, ambiguous
items: ``annotation.review_queue``), worked by keyboard, and the items annotators flagged, resolved by a
manager or sent back. Conflicts between annotators have their own page (adjudication), linked from here."""
from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Page, Paginator
from django.db.models import Prefetch, QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from annotation import actions, progress, review_queue
from annotation.models import Annotation, Comment, Flag, ReviewKind
from annotation.stats import label_display, labels_by_key
from labelhub.errors import ActionError
from projects.access import AuthenticatedHttpRequest, get_access, get_project_for_user
from projects.models import Project, Role

PAGE_SIZE = 25
QUEUE_PAGE_SIZE = 20
FLAGS = "flags"
TABS = (*review_queue.QUEUE_KINDS, FLAGS)
TAB_TITLES = {ReviewKind.MISLABEL: "Likely mislabels", ReviewKind.LOW_PRECISION: "Low-precision classes",
              ReviewKind.AMBIGUOUS: "Ambiguous", FLAGS: "Flags"}


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


def adjudication_url(project: Project) -> str | None:
    """The adjudication page's address, where annotator conflicts are resolved (None until it exists)."""
    try:
        return reverse("annotation:adjudication", args=[project.pk])
    except NoReverseMatch:
        return None


def tabs_of(project: Project) -> tuple[str, ...]:
    """The queue's tabs: span projects get likely mislabels (their spans) and flags only."""
    return (ReviewKind.MISLABEL, FLAGS) if project.is_span else TABS


def _tabs(project: Project, current: str) -> list[dict[str, Any]]:
    found = review_queue.counts(project)
    found[FLAGS] = open_flag_count(project)
    base = reverse("annotation:review", args=[project.pk])
    return [{"kind": tab, "title": TAB_TITLES[tab], "count": found[tab], "url": f"{base}?tab={tab}",
             "current": tab == current} for tab in tabs_of(project)]


def queue_context(project: Project, kind: str, *, number: Any = None, notice: str = "",
                  error: str = "") -> dict[str, Any]:
    """One tab of the model's candidates: a page of rows, the tab counts, the label keys."""
    page = Paginator(review_queue.with_items(review_queue.open_candidates(project, kind)),
                     QUEUE_PAGE_SIZE).get_page(number)
    page.object_list = review_queue.rows(project, list(page.object_list))  # type: ignore[assignment]
    taxonomy = project.current_taxonomy()
    labels = [label for label in progress.labels_of(taxonomy) if not label.is_deprecated]
    return {
        "project": project, "tab": kind, "tabs": _tabs(project, kind), "page": page, "labels": labels,
        "is_span": project.is_span, "span_action_keys": SPAN_ACTION_KEYS,
        "taxonomy": taxonomy, "action_keys": ACTION_KEYS, "notice": notice, "error": error,
        "adjudication_url": adjudication_url(project),
    }


# The queue's own keys; a label whose shortcut is one of them is chosen by click there.
ACTION_KEYS = "krc"
# Span items also take a (accept the model's reading under the cursor), A (all of them) and x (no entity).
SPAN_ACTION_KEYS = "krcaAx"


@require_GET
@login_required
@vary_on_headers("HX-Request")
def review_queue_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The review queue: `?tab=mislabel|low_precision|ambiguous` for the model's candidates, else the flags
    (open newest first, `?show=resolved` for the resolved ones); also serves the nav's count badge."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    target = request.htmx.target if request.htmx else None
    if target == "review-count":
        return render(request, "annotation/partials/review-count.html",
                      {"project": project, "open_count": open_flag_count(project)})
    tab = request.GET.get("tab", FLAGS)
    if tab in review_queue.QUEUE_KINDS:
        context = queue_context(project, tab, number=request.GET.get("page"))
        if target == "review-queue":
            return render(request, "annotation/partials/review-queue.html", context)
        return render(request, "annotation/review.html", context)
    show_resolved = request.GET.get("show") == "resolved"
    context = {
        "project": project, "show_resolved": show_resolved, "open_count": open_flag_count(project),
        "page": _page(project, show_resolved=show_resolved, number=request.GET.get("page")),
        "tab": FLAGS, "tabs": _tabs(project, FLAGS), "adjudication_url": adjudication_url(project),
    }
    if target == "review-list":
        return render(request, "annotation/partials/review-list.html", context)
    return render(request, "annotation/review.html", context)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def decide(request: AuthenticatedHttpRequest, pk: int, candidate_pk: int) -> HttpResponse:
    """Keep, change (label keys), send back for relabelling, or comment on one candidate; htmx gets the tab
    again without it (a comment leaves it in place), a plain post is redirected to the tab."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    tab = request.POST.get("tab", "")
    if tab not in review_queue.QUEUE_KINDS:
        tab = str(ReviewKind.MISLABEL)
    version = request.POST.get("taxonomy_version", "")
    error = notice = ""
    try:
        spans, accept = _span_answer(request) if project.is_span else (None, None)
        decision = review_queue.decide(
            project, candidate_pk, user=request.user, action=request.POST.get("action", ""),
            label_keys=request.POST.getlist("label"), note=request.POST.get("note", ""),
            taxonomy_number=int(version) if version.isdigit() else None, spans=spans, accept=accept)
    except ActionError as exc:
        error = str(exc)
    else:
        notice = DECISION_NOTICES[decision.action]
    if not request.htmx:
        if error:
            messages.error(request, error)
        else:
            messages.success(request, notice)
        page = request.POST.get("page", "")
        return redirect(f"{reverse('annotation:review', args=[project.pk])}?tab={tab}"
                        + (f"&page={page}" if page.isdigit() else ""))
    # htmx swaps only 2xx answers: the refusal is shown in the list itself.
    context = queue_context(project, tab, number=request.POST.get("page"), notice=notice, error=error)
    return render(request, "annotation/partials/review-queue.html", context)


def _span_answer(request: AuthenticatedHttpRequest) -> tuple[Any, list[int] | str | None]:
    """A span correction from the form: ``spans`` (the sentence's span list as JSON, what span-review.js sends) or
    ``accept`` (positions of the spans in question whose model reading is taken; ``all`` for every one)."""
    raw = request.POST.get("spans", "")
    if raw:
        if len(raw) > 200_000:
            raise ActionError("The spans sent are too long; reload the page.")
        try:
            return json.loads(raw), None
        except ValueError:
            raise ActionError("The spans were not readable JSON; reload the page and try again.") from None
    accept = request.POST.getlist("accept")
    if not accept:
        return None, None
    if accept == ["all"]:
        return None, review_queue.ACCEPT_ALL
    if not all(a.isdigit() for a in accept):
        raise ActionError("Choose the spans to accept by their position in the list.")
    return None, [int(a) for a in accept]


DECISION_NOTICES = {
    "keep": "Kept the label.",
    "change": "Label changed; the model retrains with it.",
    "relabel": "Sent back: someone labels it again from the labelling page.",
    "comment": "Comment added; the item stays in the queue.",
}


@require_GET
@login_required
def review_summary(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The dashboard's data-quality counts (likely mislabels, ambiguous items, conflicts), each linking to its
    queue for managers."""
    access = get_access(request, pk)
    project = access.project
    found = review_queue.counts(project)
    base = reverse("annotation:review", args=[project.pk])
    context = {
        "project": project, "is_manager": access.is_manager, "adjudication_url": adjudication_url(project),
        "is_span": project.is_span,
        "items": [
            {"title": "Likely mislabels", "count": found[ReviewKind.MISLABEL], "url": f"{base}?tab=mislabel"},
            # Span projects have likely mislabels only (learning.review_candidates).
            *([] if project.is_span else [{"title": "Ambiguous items", "count": found[ReviewKind.AMBIGUOUS],
                                          "url": f"{base}?tab=ambiguous"}]),
        ],
        "conflicts": review_queue.conflict_count(project),
    }
    return render(request, "annotation/partials/review-summary.html", context)


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
