"""REST API of the learning app."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from learning.serializers import ModelSummarySerializer
from learning.views import learning_summary
from projects.access import accepts_api_keys, get_project_for_api


@extend_schema(responses=ModelSummarySerializer, summary="Live model quality, learning curve and training runs")
@api_view(["GET"])
@accepts_api_keys
def model_summary(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    summary = learning_summary(project)
    latest, newest = summary["latest"], summary["newest"]
    data = {
        "version": latest["number"] if latest else None,
        "newest_version": newest["number"] if newest else None,
        "n_labels": latest["n_labels"] if latest else None,
        "metrics": latest["metrics"] if latest else None,
        "learning_curve": summary["curve"],
        "runs": summary["runs"],
        "embedding": summary["embedding"],
        "labelled": summary["labelled"],
        "examples": summary["examples"],
    }
    return Response(ModelSummarySerializer(data).data)


