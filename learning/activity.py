"""Recent activity on the project page: labels, comments, flags, taxonomy changes, model versions and imports.

In the learning layer because the timeline holds model versions beside the
annotation layer's events; the project page loads it as a panel.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models.fields.json import KT
from django.db.models.functions import Substr
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from annotation.models import Annotation, AnnotationSource, Comment, Flag
from annotation.stats import label_display, labels_by_key
from learning.models import ModelVersion
from projects.access import AuthenticatedHttpRequest, get_access
from projects.models import DatasetStatus, Project

SNIPPET = 90


@dataclass
class Activity:
    at: datetime
    kind: str
    actor: str
    action: str
    subject: str = ""
    detail: str = ""
    url: str = ""
    count: int = 1


def _name(user: Any) -> str:
    return user.get_username() if user is not None else "someone"


# Labels are fetched further back than other events and folded into one line per annotator
# between other events, so a busy labelling session does not push everything else out.
LABELS_FETCHED = 300


def recent_activity(project: Project, *, limit: int = 15, is_manager: bool = False) -> list[Activity]:
    """The latest labels, comments, flags, taxonomy changes, model versions and imports, newest first."""
    taxonomy = project.current_taxonomy()
    items: list[Activity] = []
    annotations = list(Annotation.objects.in_project(project).exclude(source=AnnotationSource.IMPORT)
                       .select_related("annotator").annotate(snippet=Substr("example__text", 1, SNIPPET))
                       .order_by("-created_at", "-id")[:LABELS_FETCHED])
    labels = labels_by_key(project, taxonomy, also={k for a in annotations for k in a.label_keys})
    for a in annotations:
        names = ", ".join(label_display(labels.get(k), k)["name"] for k in a.label_keys)
        via = " (API)" if a.source == AnnotationSource.API else ""
        items.append(Activity(a.created_at, "label", _name(a.annotator), f"labelled{via}", a.snippet,
                              names))
    for c in (Comment.objects.filter(example__project=project).select_related("author")
              .annotate(snippet=Substr("example__text", 1, SNIPPET)).order_by("-created_at", "-id")[:limit]):
        items.append(Activity(c.created_at, "comment", _name(c.author), "commented on", c.snippet,
                              c.body[:200]))
    review = reverse("annotation:review", args=[project.pk]) if is_manager else ""
    flags = Flag.objects.filter(example__project=project).annotate(snippet=Substr("example__text", 1, SNIPPET))
    for f in flags.select_related("raised_by").order_by("-created_at", "-id")[:limit]:
        items.append(Activity(f.created_at, "flag", _name(f.raised_by), "flagged", f.snippet,
                              f.reason, review))
    for f in (flags.filter(resolved_at__isnull=False).select_related("resolved_by")
              .order_by("-resolved_at", "-id")[:limit]):
        assert f.resolved_at is not None
        items.append(Activity(f.resolved_at, "resolve", _name(f.resolved_by), "resolved a flag on",
                              f.snippet, f.resolution, review))
    settings_url = reverse("projects:settings", args=[project.pk]) if is_manager else ""
    for v in project.taxonomy_versions.select_related("created_by").order_by("-number")[:limit]:
        items.append(Activity(v.created_at, "taxonomy", _name(v.created_by), f"made taxonomy v{v.number}",
                              detail=" ".join(v.changelog), url=settings_url))
    model_url = reverse("learning:model", args=[project.pk])
    for m in (ModelVersion.objects.filter(project=project).order_by("-number")
              .values("number", "n_labels", "created_at", f1=KT("metrics__macro_f1__value"))[:limit]):
        f1 = f"macro-F1 {float(m['f1']):.2f}" if m["f1"] is not None else ""
        items.append(Activity(m["created_at"], "model", "The model", f"was retrained (v{m['number']}) on "
                              f"{m['n_labels']:,} labels", detail=f1, url=model_url))
    for d in project.datasets.select_related("created_by").defer("errors", "columns").order_by("-created_at")[:limit]:
        if d.status == DatasetStatus.DONE:
            action, detail = "imported", f"{d.imported_count:,} examples, {d.labelled_count:,} labelled"
        elif d.status == DatasetStatus.FAILED:
            action, detail = "tried to import", f"{d.error_count:,} errors, nothing imported"
        else:
            action, detail = "started importing", d.get_status_display().lower()
        items.append(Activity(d.finished_at or d.created_at, "import", _name(d.created_by), action, d.name, detail,
                              d.get_absolute_url()))
    if len(annotations) == LABELS_FETCHED:
        # Older than the labels fetched, the timeline would silently miss labels: stop there.
        horizon = annotations[-1].created_at
        items = [item for item in items if item.at >= horizon]
    items.sort(key=lambda item: item.at, reverse=True)
    return _fold_label_runs(items)[:limit]


def _fold_label_runs(items: list[Activity]) -> list[Activity]:
    """Between two other events, one line per annotator for their labels: 'labelled 12 items — Yes ×7, No ×5'."""
    groups: list[list[Activity]] = []
    open_runs: dict[str, list[Activity]] = {}
    for item in items:
        if item.kind != "label":
            open_runs = {}
            groups.append([item])
        elif item.actor in open_runs:
            open_runs[item.actor].append(item)
        else:
            open_runs[item.actor] = [item]
            groups.append(open_runs[item.actor])
    return [group[0] if len(group) == 1 else Activity(
        group[0].at, "label", group[0].actor, f"labelled {len(group)} items", count=len(group),
        detail=", ".join(f"{name} ×{n}" for name, n in Counter(item.detail for item in group).most_common()),
    ) for group in groups]


@require_GET
@login_required
def activity_panel(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The project page's "Recent activity" region (loaded and refreshed by htmx)."""
    access = get_access(request, pk)
    return render(request, "learning/partials/project-activity.html", {
        "project": access.project, "activity": recent_activity(access.project, is_manager=access.is_manager)})
