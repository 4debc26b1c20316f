"""Pages of the learning app: the model panel (live quality, learning curve, training runs)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from annotation.models import Annotation
from learning.actions import embedding_progress, embedding_state, model_status_key
from learning.models import Metrics, ModelVersion, TrainingRun
from projects.access import AuthenticatedHttpRequest, get_project_for_user
from projects.models import Example, Project

# The labelling header's model line: exact to within this many seconds.
STATUS_SECONDS = 20


def learning_summary(project: Project) -> dict[str, Any]:
    """What the model panel and the metrics endpoint show: latest quality, the curve, recent runs.

    ``latest`` is the newest version whose quality report is in (the figures shown are its own);
    ``newest`` the newest version, which may already serve with its predecessor's calibration
    while its report is computed (``learning.actions.report_project``).
    """
    versions = list(ModelVersion.objects.filter(project=project).order_by("number")
                    .values("number", "n_labels", "metrics", "created_at", "strategy", "report_at"))
    newest = versions[-1] if versions else None
    versions = [v for v in versions if v["report_at"] is not None]
    latest = versions[-1] if versions else None
    names = dict(project.current_taxonomy().labels.values_list("key", "name"))
    curve = [
        {
            "version": v["number"], "n_labels": v["n_labels"], "created_at": v["created_at"].isoformat(),
            **Metrics(v["metrics"] or {}).curve_point(),
        }
        for v in versions
    ]
    runs = list(TrainingRun.objects.filter(project=project)[:8])
    return {
        "latest": latest,
        "newest": newest,
        "curve": curve,
        "runs": runs,
        "label_names": names,
        "embedding": embedding_progress(project),
        "labelled": Annotation.objects.in_project(project).labelled_count(),
        "examples": Example.objects.in_project(project).count(),
    }


@require_GET
@login_required
@vary_on_headers("HX-Request")
def model_panel(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk)
    context = {"project": project, **learning_summary(project)}
    if request.htmx:
        return render(request, "learning/partials/project-model.html", context)
    return render(request, "learning/model.html", context)


def model_status(project: Project) -> dict[str, Any]:
    """The newest model version and how many labels ago it was trained, cached a few seconds."""
    key = model_status_key(project.pk)
    status = cache.get(key)
    if status is None:
        latest = (ModelVersion.objects.filter(project=project).order_by("-number")
                  .values("number", "n_labels", "created_at").first())
        labelled = Annotation.objects.in_project(project).labelled_count() if latest else 0
        status = {"model": latest,
                  "labels_since_model": max(labelled - latest["n_labels"], 0) if latest else None}
        cache.set(key, status, STATUS_SECONDS)
    return status


@require_GET
@login_required
def model_status_badge(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The labelling page header's model line (loaded by htmx after each item)."""
    project = get_project_for_user(request, pk)
    # Progress is read fresh (one cache read): the line polls itself every 2 s while embedding runs.
    return render(request, "learning/partials/model-status.html",
                  {"project": project, "embedding": embedding_progress(project), **model_status(project)})


@require_GET
@login_required
def embedding_status(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """"Embedding 2,048 / 5,381 — suggestions start after it" while a project's examples are encoded (every 2 s);
    while nothing is embedding, a hidden element that asks again every 10 s, so an import finishing later shows."""
    project = get_project_for_user(request, pk)
    embedding = embedding_state(project)
    response = render(request, "learning/partials/embedding-status.html", {"project": project, "embedding": embedding})
    if embedding is None and request.GET.get("active"):
        # It just finished: regions that show the model or the counts refresh (the model trains now).
        response["HX-Trigger"] = "embedding-finished"
    return response
