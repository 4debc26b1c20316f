"""The fine-tuning region of the Versions page: progress of the running fine-tune, the candidate beside the current
model, the button, cancel, and the fine-tuned encoder's download (learning.finetuning does the work)."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from labelhub.errors import ActionError
from learning import finetuning
from learning.models import FinetuneRun
from projects.access import AuthenticatedHttpRequest, ProjectAccess, accepts_api_keys, get_access, get_project_for_api
from projects.models import Project, Role


def panel_context(access: ProjectAccess, *, error: str = "") -> dict[str, Any]:
    project = access.project
    runs = finetuning.project_runs(project)
    active = next((run for run in runs if run.is_active), None)
    compared = next((run for run in runs if run.comparison), None)
    in_use = finetuning.active_encoder_run(project)
    return {
        "project": project, "is_manager": access.is_manager, "runs": runs, "active": active, "compared": compared,
        "in_use": in_use, "error": error, "labelled": finetuning.labelled_count(project),
        "min_labels": finetuning.settings.FINETUNE_MIN_LABELS, "auto": finetuning.settings.FINETUNE_AUTO,
        "growth": finetuning.settings.FINETUNE_GROWTH,
    }


def _render(request: AuthenticatedHttpRequest, access: ProjectAccess, *, error: str = "", status: int = 200
            ) -> HttpResponse:
    context = panel_context(access, error=error)
    template = "learning/partials/finetune-panel.html" if request.htmx else "learning/finetune.html"
    return render(request, template, context, status=status)


@require_GET
@login_required
@vary_on_headers("HX-Request")
def finetune_panel(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The region (loaded into the Versions page; polls itself every 2 s while a fine-tune runs), or a page of its
    own for a plain GET."""
    return _render(request, get_access(request, pk))


def _back(request: AuthenticatedHttpRequest, project: Project) -> HttpResponse:
    nxt = request.POST.get("next", "")
    return redirect(nxt if nxt in {reverse("serving:versions", args=[project.pk]),
                                   reverse("learning:finetune", args=[project.pk])}
                    else reverse("serving:versions", args=[project.pk]))


@require_POST
@login_required
def finetune_start(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """"Fine-tune now" (managers): queue a fine-tune; a refusal (too few labels, one already running) is a 4xx page
    saying why, with nothing changed."""
    access = get_access(request, pk, role=Role.MANAGER)
    try:
        run = finetuning.request_finetune(access.project, user=request.user,
                                          reason=f"Fine-tune now, by {request.user.get_username()}")
    except ActionError as exc:
        return _render(request, access, error=exc.message, status=exc.status)
    messages.success(request, f"Fine-tune {run.number} is queued; the current model keeps serving meanwhile.")
    return _back(request, access.project)


@require_POST
@login_required
def finetune_cancel(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Cancel the queued or running fine-tune (managers)."""
    access = get_access(request, pk, role=Role.MANAGER)
    try:
        run = finetuning.cancel_finetune(access.project, user=request.user)
    except ActionError as exc:
        return _render(request, access, error=exc.message, status=exc.status)
    messages.success(request, f"Fine-tune {run.number} is cancelled" + (
        "." if run.status == "cancelled" else "; it stops after its current step."))
    return _back(request, access.project)


@require_GET
@login_required
def finetune_download(request: AuthenticatedHttpRequest, pk: int, number: int) -> FileResponse:
    """The fine-tuned encoder as a zip of a Hugging Face folder with its model card (managers)."""
    access = get_access(request, pk, role=Role.MANAGER)
    run = (FinetuneRun.objects.filter(project=access.project, number=number)
           .select_related("project", "candidate_version").first())
    if run is None:
        raise Http404(f"This project has no fine-tune {number}.")
    try:
        archive = finetuning.encoder_archive(run)
    except ActionError as exc:
        raise Http404(exc.message) from exc
    response = FileResponse(archive, as_attachment=True, content_type="application/zip",
                            filename=f"finetuned-encoder-{access.project.pk}-v{number}.zip")
    response["X-Content-Type-Options"] = "nosniff"
    return response


@extend_schema(summary="Fine-tunes of the project's encoder: progress, candidate against current on held-out labels",
               responses={200: OpenApiTypes.OBJECT})
@api_view(["GET"])
@accepts_api_keys
def finetune_runs_api(request: Request, pk: int) -> Response:
    """`{"active": run | null, "encoder": fine-tune number in use | null, "runs": [run, …]}`, newest first."""
    project = get_project_for_api(request, pk, scope="read")
    runs = finetuning.project_runs(project)
    in_use = finetuning.active_encoder_run(project)
    described = [finetuning.describe(run) for run in runs]
    return Response({
        "active": next((d for d, run in zip(described, runs, strict=True) if run.is_active), None),
        "encoder_finetune": in_use.number if in_use else None,
        "runs": described,
    })
