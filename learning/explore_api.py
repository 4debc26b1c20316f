"""REST API of the Explore view (rare-class discovery): the pool's clusters, and a manager's actions from one.

The same checks as the Explore page (``learning.explore_views``): managers only, 403 for annotators and viewers,
404 outside the team, no anonymous access; and no project API key, as the review API: the answers show the whole
pool and the actions change the taxonomy and the labelling queue, which a machine's credential is not given to do.
Bad input is a 4xx with the reason and changes nothing (the label and the queue change together or not at all).
"""
from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer

from annotation.stats import label_display, labels_by_key
from labelhub.errors import ActionError
from learning import explore
from learning.serializers import (
    ExploreErrorSerializer,
    ExploreLabelAddedSerializer,
    ExploreLabelInputSerializer,
    ExploreQueuedSerializer,
    ExploreQueueInputSerializer,
    ExploreSerializer,
)
from projects.access import get_project_for_user
from projects.models import Project, Role

NOTHING: dict[str, Any] = {"key": None, "model_version": None, "encoder": None, "n": 0, "k": 0, "labelled": 0,
                           "unexplored": 0, "computed_at": None, "clusters": []}


def clusters_data(project: Project) -> dict[str, Any]:
    """The project's clustering as it is now, in the shape of ``ExploreSerializer``."""
    result = explore.current(project)
    progress = explore.progress(project)
    if result is None:
        return {"status": "running" if progress else "none", "progress": progress, **NOTHING}
    keys = {d["key"] for row in result["clusters"] for d in row["distribution"]}
    labels = labels_by_key(project, project.current_taxonomy(), also=keys)
    clusters = [{
        **{name: row[name] for name in ("index", "size", "labelled", "unexplored", "radius", "nearest_labelled",
                                        "representatives", "mean_bald")},
        "distribution": [{"key": d["key"], "name": label_display(labels.get(d["key"]), d["key"])["name"],
                          "share": d["share"]} for d in row["distribution"]],
    } for row in result["clusters"]]
    return {"status": "ready", "progress": None,
            **{name: result[name] for name in NOTHING if name != "clusters"}, "clusters": clusters}


def _invalid(form: Serializer) -> Response:
    detail = "; ".join(f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items())
    return Response({"detail": detail}, status=status.HTTP_400_BAD_REQUEST)


@extend_schema(
    methods=["GET"], responses={200: ExploreSerializer},
    summary="The pool's clusters: size, representative texts, the model's labels, mean BALD, unexplored",
    description="The Explore view's clustering of every embedded item, as computed last (`status` ready), on its "
    "way (running, with `progress`), or not yet for the project as it is now (none: POST to cluster). Managers "
    "(personal token) only.",
)
@extend_schema(
    methods=["POST"], request=None,
    responses={200: ExploreSerializer, 202: ExploreSerializer, 400: ExploreErrorSerializer},
    summary="Cluster the pool now",
    description=f"Pools of up to {explore.INLINE_LIMIT} items are clustered in the request (200, the clusters); "
    "larger ones by a background job (202, `status` running; GET until ready). 400 when too few items have "
    "embeddings. Managers (personal token) only.",
)
@api_view(["GET", "POST"])
def clusters(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    if request.method == "POST":
        try:
            how = explore.start(project)
        except ActionError as exc:
            return Response({"detail": str(exc)}, status=exc.status)
        data = clusters_data(project)
        return Response(ExploreSerializer(data).data,
                        status=status.HTTP_200_OK if how == "done" else status.HTTP_202_ACCEPTED)
    return Response(ExploreSerializer(clusters_data(project)).data)


@extend_schema(
    request=ExploreQueueInputSerializer,
    responses={200: ExploreQueuedSerializer, 400: ExploreErrorSerializer, 409: ExploreErrorSerializer},
    summary="Label a cluster's items first: send them to the front of the labelling queue",
    description="The cluster's unlabelled items go before the model's picks, nearest its centre first, and stay "
    "there until labelled. 409 when the clustering `key` is no longer current (new labels, model or data: cluster "
    "again); 400 for an unknown cluster or one whose items are all labelled. Managers (personal token) only.",
)
@api_view(["POST"])
def queue_cluster(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = ExploreQueueInputSerializer(data=request.data)
    if not form.is_valid():
        return _invalid(form)
    values = form.validated_data
    try:
        sent = explore.send_to_front(project, key=values["key"], cluster=values["cluster"])
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=exc.status)
    return Response(ExploreQueuedSerializer({"cluster": values["cluster"], "sent": sent}).data)


@extend_schema(
    request=ExploreLabelInputSerializer,
    responses={201: ExploreLabelAddedSerializer, 400: ExploreErrorSerializer,
               409: OpenApiResponse(ExploreErrorSerializer, description="The clustering or the taxonomy changed.")},
    summary="Add a label from a cluster (and queue its items first)",
    description="Adds `name` to the taxonomy (a new version; the model retrains with it) and, unless `queue` is "
    "false, sends the cluster's unlabelled items to the front of the labelling queue: both or neither. 409 when "
    "the clustering `key` is no longer current or `taxonomy_version` is not the current one; 400 for a name the "
    "taxonomy refuses (empty, taken), an unknown cluster, or queueing a cluster with nothing left to label. "
    "Managers (personal token) only.",
)
@api_view(["POST"])
def label_cluster(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = ExploreLabelInputSerializer(data=request.data)
    if not form.is_valid():
        return _invalid(form)
    values = form.validated_data
    name = values["name"].strip()
    try:
        version, sent = explore.add_label_from_cluster(
            project, key=values["key"], cluster=values["cluster"], name=name,
            description=values["description"].strip(), user=request.user,
            expected_number=values["taxonomy_version"], queue=values["queue"])
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=exc.status)
    label = version.labels.get(name=name)
    return Response(ExploreLabelAddedSerializer({"cluster": values["cluster"], "sent": sent,
                                                 "label": {"key": label.key, "name": label.name},
                                                 "taxonomy_version": version.number}).data,
                    status=status.HTTP_201_CREATED)


urlpatterns = [
    path("projects/<int:pk>/explore/", clusters, name="api-explore"),
    path("projects/<int:pk>/explore/queue/", queue_cluster, name="api-explore-queue"),
    path("projects/<int:pk>/explore/label/", label_cluster, name="api-explore-label"),
]
