"""Pages of the learning app: the model panel (live quality, learning curve, training runs)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from annotation import progress
from annotation.models import Annotation
from learning.actions import embedding_progress, embedding_state, model_status_key
from learning.models import Metrics, ModelVersion, RunStatus, TrainingRun
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
    # The panel says why there is no model yet: embeddings still being made (or stalled), a first
    # training under way, a failed one, or too few labels.
    context["embedding"] = embedding_state(project, examples=context["examples"])
    context["waiting"] = why_no_model(project) if context["newest"] is None else None
    if request.htmx:
        return render(request, "learning/partials/project-model.html", context)
    return render(request, "learning/model.html", context)


def model_status(project: Project) -> dict[str, Any]:
    """The newest model version and how many labels ago it was trained; without one, why there is none yet.

    The version is cached (dropped when a new one lands); the labelled count is the labelling header's
    own (annotation.progress), true after every label.
    """
    key = model_status_key(project.pk)
    status = cache.get(key)
    if status is None:
        status = {"model": ModelVersion.objects.filter(project=project).order_by("-number")
                  .values("number", "n_labels", "created_at").first()}
        cache.set(key, status, STATUS_SECONDS)
    model = status["model"]
    if model is None:
        return {"model": None, "labels_since_model": None, "waiting": why_no_model(project)}
    labelled = progress.project_counts(project)["labelled"]
    return {"model": model, "labels_since_model": max(labelled - model["n_labels"], 0)}


# How many annotations are read to tell which labels were given before the first model (it is early days).
_EARLY_LABELS = 5000


def why_no_model(project: Project) -> dict[str, Any]:
    """{'reason': 'training' | 'labels' | 'failed' | 'next-label', ...}: what the first model waits for."""
    run = (TrainingRun.objects.filter(project=project).order_by("-requested_at", "-id")
           .values("status", "error").first())
    if run is not None and run["status"] in (RunStatus.QUEUED, RunStatus.RUNNING):
        return {"reason": "training", "running": run["status"] == RunStatus.RUNNING}
    if project.is_span:
        # A span model learns from two labelled examples if at least one entity is tagged among them.
        answers = Annotation.objects.in_project(project)
        labelled_examples = answers.labelled_count()
        if labelled_examples < 2 or not answers.exclude(spans=[]).exists():
            return {"reason": "span-labels", "labelled": labelled_examples}
        if run is not None and run["status"] == RunStatus.FAILED:
            return {"reason": "failed", "error": run["error"]}
        return {"reason": "next-label"}
    given: set[str] = set()
    labelled = 0
    for keys in Annotation.objects.in_project(project).values_list("label_keys", flat=True)[:_EARLY_LABELS]:
        given.update(keys)
        labelled += 1
    needed = 1 if project.is_multi_label else 2
    if len(given) < needed or labelled < 2:
        names = dict(project.current_taxonomy().labels.values_list("key", "name"))
        return {"reason": "labels", "labelled": labelled, "needed": needed,
                "given": sorted(names.get(k, k) for k in given)}
    if run is not None and run["status"] == RunStatus.FAILED:
        return {"reason": "failed", "error": run["error"]}
    return {"reason": "next-label"}


@require_GET
@login_required
def model_status_badge(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The labelling page header's model line (loaded by htmx after each item)."""
    project = get_project_for_user(request, pk)
    # Progress is read fresh (a cache read; the database at most every 30 s, when no job reports progress, to
    # tell a lost embedding job): the line polls itself while embedding runs.
    return render(request, "learning/partials/model-status.html",
                  {"project": project, "embedding": embedding_state(project), **model_status(project)})


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
