"""The Export page and its downloads: data (streamed), taxonomy history, model versions."""
from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from labelhub.errors import ActionError
from learning import exports
from learning.models import ModelVersion
from projects.access import AuthenticatedHttpRequest, get_access, get_project_for_user
from projects.models import Project, Role


def attachment(response: HttpResponse | StreamingHttpResponse, filename: str) -> Any:
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


def streamed(plan: exports.ExportPlan) -> StreamingHttpResponse:
    """The export as a download, written while the rows are read (nothing held in memory but a chunk)."""
    response = StreamingHttpResponse(exports.stream_export(plan), content_type=plan.format.content_type)
    return attachment(response, plan.filename())


def taxonomy_history_response(project: Project) -> HttpResponse:
    body = json.dumps(exports.taxonomy_history(project), indent=2, ensure_ascii=False)
    return attachment(HttpResponse(body, content_type="application/json"), f"taxonomy-history-{project.pk}.json")


def model_response(project: Project, number: int) -> HttpResponse:
    version = (ModelVersion.objects.filter(project=project, number=number)
               .select_related("project", "taxonomy_version").first()) if number <= exports.MAX_NUMBER else None
    if version is None:
        raise Http404(f"This project has no model version {number}.")
    return attachment(HttpResponse(exports.model_archive(version), content_type="application/zip"),
                      f"model-{project.pk}-v{number}.zip")


def _page(request: AuthenticatedHttpRequest, project: Project, *, error: str = "", status: int = 200) -> HttpResponse:
    chosen = request.GET
    formats = exports.formats_for(project)
    return render(request, "learning/export.html", {
        "project": project,
        "formats": formats,
        "modes": exports.modes_for(project).items(),
        "script_format": formats[0].name,
        "metadata_keys": exports.metadata_keys(project),
        "taxonomy_versions": project.taxonomy_versions.order_by("-number").values_list("number", flat=True),
        "model_versions": ModelVersion.objects.filter(project=project).order_by("-number")
        .values("number", "created_at", "n_labels"),
        "chosen": {"format": chosen.get("format", formats[0].name), "annotations": chosen.get("annotations", "latest"),
                   "labelled_only": chosen.get("labelled_only", "") in exports.TRUE,
                   "predictions": chosen.get("predictions", "") in exports.TRUE,
                   "taxonomy_version": chosen.get("taxonomy_version", ""),
                   "metadata": set(chosen.getlist("metadata")) if "metadata" in chosen else None},
        "error": error,
    }, status=status)


@require_GET
@login_required
def export_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The format and options form (managers)."""
    project = get_access(request, pk, role=Role.MANAGER).project
    return _page(request, project)


@require_GET
@login_required
def export_download(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse | StreamingHttpResponse:
    """The export the form asked for, streamed; a bad choice shows the form again with the reason."""
    project = get_access(request, pk, role=Role.MANAGER).project
    try:
        plan = exports.plan_export(project, exports.parse_options(request.GET, getlist=request.GET.getlist))
    except ActionError as exc:
        return _page(request, project, error=exc.message, status=exc.status)
    return streamed(plan)


@require_GET
@login_required
def taxonomy_history(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Every taxonomy version with its changelog, as JSON (anyone in the project: the taxonomy API is viewer's)."""
    return taxonomy_history_response(get_project_for_user(request, pk))


@require_GET
@login_required
def model_download(request: AuthenticatedHttpRequest, pk: int, number: int) -> HttpResponse:
    """Model version `number` as a zip: posterior.npz and model.json (managers)."""
    return model_response(get_project_for_user(request, pk, role=Role.MANAGER), number)
