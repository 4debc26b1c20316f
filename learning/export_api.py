"""REST API of exports: a project's data (streamed), its taxonomy history, a model version."""
from __future__ import annotations

from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.decorators import api_view
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response

from labelhub.errors import ActionError
from learning import exports
from learning.export_views import model_response, streamed, taxonomy_history_response
from projects.access import accepts_api_keys, get_project_for_api, get_project_for_user
from projects.models import Role


class FormatIsNotARenderer(DefaultContentNegotiation):
    """`?format=` names the export format here, not one of DRF's renderers (its URL_FORMAT_OVERRIDE)."""

    def select_renderer(self, request: Any, renderers: Any, format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


def format_is_not_a_renderer(func: Any) -> Any:
    """Put under `@api_view`."""
    func.content_negotiation_class = FormatIsNotARenderer
    return func


def _error(exc: ActionError) -> Response:
    return Response({"detail": exc.message}, status=exc.status)


EXPORT_PARAMETERS = [
    OpenApiParameter("format", str, required=True, enum=list(exports.FORMATS),
                     description="Classification projects: " + "; ".join(
                         f"`{f.name}`: {f.description}" for f in exports.FORMATS.values()
                         if f.tasks == exports.CLASSIFICATION_TASKS)
                     + ". Span projects: " + "; ".join(
                         f"`{f.name}`: {f.description}" for f in exports.FORMATS.values()
                         if f.tasks == exports.SPAN_TASKS)
                     + ". A format of the other task type is a 400 that names the formats that fit."),
    OpenApiParameter("labelled_only", bool, description="Only examples with a label (default false: all)."),
    OpenApiParameter("annotations", str, enum=list(exports.ANNOTATION_MODES),
                     description="; ".join(f"`{k}`: {v}" for k, v in exports.ANNOTATION_MODES.items())
                     + ". Span projects: " + "; ".join(f"`{k}`: {v}" for k, v in exports.SPAN_MODES.items())),
    OpenApiParameter("metadata", str, description="`all` (default), `none`, or metadata keys separated by commas."),
    OpenApiParameter("taxonomy_version", int, description="Give labels by their names in this taxonomy version "
                     "(default: the current one). Labels the version lacks or has deprecated are left out."),
    OpenApiParameter("predictions", bool, description="Add the model's current suggestion, its confidence and "
                     "model version (items still in the queue; labelled items have none)."),
]


def _export_content_type(content_type: str) -> str:
    return content_type.split(";")[0]


@extend_schema(
    summary="Export the project's examples and labels (streamed)",
    description="The whole project as one download, written while it is read: memory stays flat however many "
    "examples there are (except `spacy`, built in memory). Managers only; personal tokens only.",
    parameters=EXPORT_PARAMETERS,
    responses={
        **{(200, _export_content_type(f.content_type)): OpenApiResponse(OpenApiTypes.BINARY, description=f.title)
           for f in exports.FORMATS.values()},
        400: OpenApiResponse(description="Unknown format, option or taxonomy version (the reason is in `detail`)"),
    },
)
@api_view(["GET"])
@format_is_not_a_renderer
def export(request: Request, pk: int) -> Response | StreamingHttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    try:
        plan = exports.plan_export(project, exports.parse_options(request.query_params,
                                                                  getlist=request.query_params.getlist))
    except ActionError as exc:
        return _error(exc)
    return streamed(plan)


@extend_schema(
    summary="Every taxonomy version with its changelog (JSON download)",
    responses={(200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description=(
        "{project, versions: [{number, created_at, created_by, changelog, labels, changes}]}, oldest first"))},
)
@api_view(["GET"])
@accepts_api_keys
def taxonomy_history(request: Request, pk: int) -> HttpResponse:
    return taxonomy_history_response(get_project_for_api(request, pk, scope="read"))


@extend_schema(
    summary="Download model version n: posterior.npz and model.json in a zip",
    description="model.json names the encoder to embed texts with, the labels in output order, the taxonomy "
    "version, the metrics. Managers only; personal tokens only.",
    responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="the model"),
               404: OpenApiResponse(description="No such project or version")},
)
@api_view(["GET"])
def model_download(request: Request, pk: int, number: int) -> HttpResponse:
    return model_response(get_project_for_user(request, pk, role=Role.MANAGER), number)
