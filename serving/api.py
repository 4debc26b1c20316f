"""REST API of the serving app: predictions, their log, the serving model version, promotion."""
from __future__ import annotations

import uuid

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.request import Request
from rest_framework.response import Response

from labelhub.errors import ActionError
from labelhub.parsers import JSONParser
from learning.models import ModelVersion
from projects.access import accepts_api_keys, get_project_for_api, get_project_for_user
from projects.models import ROLE_RANK, Project, Role
from serving import predictions
from serving import served as serving
from serving.keys import request_key
from serving.models import Prediction
from serving.serializers import (
    ErrorSerializer,
    ModelVersionSerializer,
    PredictionDetailSerializer,
    PredictionSerializer,
    PredictRequestSerializer,
    PredictResponseSerializer,
    PromoteResponseSerializer,
    ServingSerializer,
)

# --- Prediction API ---------------------------------------------------------------------------------------------


def _may_route(request: Request, project: Project) -> bool:
    """An API key reached predict with its `predict` scope; a person needs a role that labels."""
    if request_key(request) is not None:
        return True
    return project.user_role is not None and ROLE_RANK[project.user_role] >= ROLE_RANK[Role.ANNOTATOR]


@extend_schema(
    request=PredictRequestSerializer,
    responses={200: PredictResponseSerializer, 400: OpenApiResponse(description="Invalid input"),
               409: ErrorSerializer},
    summary="Predict labels for texts (human fallback below the threshold)",
    description="Classifies 1 to LABELHUB_PREDICT_BATCH_LIMIT (default 100) texts with the project's promoted "
    "model version. Each answer has the label(s), the calibrated probability of every label, the confidence, "
    "whether it is below the project's threshold (`is_uncertain`) and whether it was routed to the annotation "
    "queue for a person (`is_routed`), the model version and a prediction id for `GET …/predictions/{id}/`. "
    "409 while the project has no model yet. Needs an API key with the `predict` scope, or a member's token.\n\n"
    "Routing puts inputs at the head of the annotation queue, so it needs an API key with the `predict` scope "
    "or a personal token of an annotator or manager. A viewer's request predicts but routes nothing: `route` "
    "defaults to false for viewers, and an explicit `\"route\": true` from a viewer is refused with 403.\n\n"
    "Span (NER) projects: each answer has `spans` (`start`, `end` character offsets, `text`, `label`, "
    "`confidence`, the probability that exactly this span is right) in text order, empty when the model finds "
    "no entity. The text is split with the project language's tokenizer and every span lies on its tokens. An "
    "input is routed when any span's confidence, or `token_confidence` (its least sure token: a possibly missed "
    "entity), is below the threshold; with a target accuracy the threshold is the lowest whose cross-validated "
    "predicted spans reach that precision (the model version's span precision-vs-coverage curve). The person's "
    "spans come back on `GET …/predictions/{id}/` under `human.spans` and in the `prediction.labelled` webhook.",
)
@api_view(["POST"])
@accepts_api_keys
@parser_classes([JSONParser])
def predict(request: Request, pk: int) -> Response:
    return _predict(request, pk)


@extend_schema(exclude=True)  # documented once, as above
@api_view(["POST"])
@accepts_api_keys
@parser_classes([JSONParser])
def predict_with_slash(request: Request, pk: int) -> Response:
    """`POST …/predict/`: every other endpoint ends in a slash, so clients write one here too."""
    return _predict(request, pk)


def _predict(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="predict")
    serializer = PredictRequestSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    route = serializer.validated_data["route"]
    if route and not _may_route(request, project):
        if "route" in request.data:
            raise PermissionDenied("Routing inputs to the annotation queue needs the annotator or manager role "
                                   "(or an API key with the predict scope); send \"route\": false to predict only.")
        route = False
    try:
        outcome = predictions.predict(project, texts=serializer.validated_data["texts"],
                                      api_key=request_key(request), route=route)
    except serving.NoModelError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    names = outcome.model.names
    return Response({
        "model_version": outcome.model.number,
        "threshold": min(outcome.model.threshold.value, 1.0),
        "predictions": [predictions.describe(p, names) for p in outcome.predictions],
    })


@extend_schema(responses={200: PredictionDetailSerializer}, summary="One prediction, with the human label once given",
               description="Needs the `predict` or `read` scope.")
@api_view(["GET"])
@accepts_api_keys
def prediction_detail(request: Request, pk: int, prediction_id: uuid.UUID) -> Response:
    key = request_key(request)
    scope = "predict" if key is not None and key.has_scope("predict") else "read"
    project = get_project_for_api(request, pk, scope=scope)
    prediction = get_object_or_404(Prediction, pk=prediction_id, project=project)
    names = predictions.label_names(project)
    return Response({**predictions.describe(prediction, names), "human": predictions.human_label(prediction, names)})


@extend_schema(
    parameters=[OpenApiParameter("limit", int, description="How many (1–500, default 100)."),
                OpenApiParameter("routed", bool, description="Only predictions routed to a person.")],
    responses={200: PredictionSerializer(many=True)}, summary="The prediction log, newest first",
    description="Needs the `read` scope.",
)
@api_view(["GET"])
@accepts_api_keys
def prediction_list(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    try:
        limit = min(max(int(request.query_params.get("limit", 100)), 1), 500)
    except ValueError:
        return Response({"detail": "limit must be a number."}, status=status.HTTP_400_BAD_REQUEST)
    rows = Prediction.objects.filter(project=project).defer("embedding")
    if request.query_params.get("routed", "").lower() in {"1", "true", "yes"}:
        rows = rows.filter(is_routed=True)
    names = predictions.label_names(project)
    return Response([predictions.describe(p, names) for p in rows[:limit]])


@extend_schema(responses={200: ServingSerializer}, summary="Serving model version, threshold, expected automation rate",
               description="Needs the `read` scope.")
@api_view(["GET"])
@accepts_api_keys
def serving_detail(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    return Response(ServingSerializer(serving.serving_summary(project)).data)


@extend_schema(responses={200: ModelVersionSerializer(many=True)}, summary="Model versions, newest first",
               description="Needs the `read` scope.")
@api_view(["GET"])
@accepts_api_keys
def model_version_list(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    return Response(ModelVersionSerializer(serving.version_rows(project), many=True).data)


@extend_schema(request=None, responses={200: PromoteResponseSerializer},
               summary="Promote a model version (it serves from the next request)",
               description="Managers (personal token) only. Promoting an older version pins it: new versions stop "
               "being promoted automatically until the newest is promoted again.")
@api_view(["POST"])
def model_version_promote(request: Request, pk: int, number: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    serving.promote_version(project, version=version, user=request.user)
    state = serving.serving_state(project.pk)
    return Response({"model_version": version.number, "auto_promote": state.auto_promote})


@extend_schema(request=None, responses={200: PromoteResponseSerializer, 409: ErrorSerializer},
               summary="Roll back to the version that served before",
               description="Managers (personal token) only. Pins the earlier version.")
@api_view(["POST"])
def model_version_rollback(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    try:
        promotion = serving.rollback(project, user=request.user)
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=exc.status)
    return Response({"model_version": promotion.version.number, "auto_promote": False})
