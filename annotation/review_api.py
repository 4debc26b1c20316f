"""REST API of the data-quality review queue: the model's candidates by kind, and the decisions on them.

Managers only, with a personal token (as the export and model-promotion endpoints): a review decision
changes labels, which a project API key (a machine's credential) is not given to do.
"""
from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotation import review_queue
from annotation.models import ReviewAction, ReviewDecision, ReviewKind
from labelhub.errors import ActionError
from projects.access import get_project_for_user
from projects.models import Role

MAX_LIMIT = 200


class ReviewErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class GivenLabelSerializer(serializers.Serializer):
    annotator = serializers.CharField(help_text="Who gave the label (username; 'someone' once the account is gone).")
    label_keys = serializers.ListField(child=serializers.CharField())
    label_names = serializers.ListField(child=serializers.CharField())
    source = serializers.CharField(help_text="Labelling page, Import or REST API.")  # type: ignore[assignment]
    created_at = serializers.DateTimeField()


class SpanQuestionSerializer(serializers.Serializer):
    start = serializers.IntegerField(help_text="Character offset where the span starts.")
    end = serializers.IntegerField(help_text="Character offset where it ends (exclusive).")
    label = serializers.CharField(allow_null=True,  # type: ignore[assignment]
                                  help_text="The given label key; null for an entity nobody tagged.")
    model_label = serializers.CharField(allow_null=True,
                                        help_text="The model's label key; null when the model says it is no entity.")
    confidence = serializers.FloatField(help_text="The model's probability of its reading (out of fold).")
    problem = serializers.ChoiceField(choices=["wrong_type", "missed", "not_entity"],
                                      help_text="wrong_type: the model types the span differently; missed: a "
                                      "confident entity nobody tagged; not_entity: the model says it is no entity.")


class ReviewSpanSerializer(serializers.Serializer):
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    label = serializers.CharField(max_length=64)  # type: ignore[assignment]


class CandidateSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The candidate to post a decision on.")
    example_id = serializers.IntegerField()
    external_id = serializers.CharField(allow_blank=True)
    text = serializers.CharField()
    kind = serializers.ChoiceField(choices=ReviewKind.choices)
    score = serializers.FloatField(help_text="Rank within the kind, higher first.")
    reason = serializers.CharField(help_text="Why the item was put before a person, in words.")
    given = GivenLabelSerializer(many=True, help_text="Every annotation of the item, newest first.")
    current_keys = serializers.ListField(child=serializers.CharField(),
                                         help_text="The newest annotation's label keys (what a decision changes).")
    model_keys = serializers.ListField(child=serializers.CharField(), help_text="The model's label(s).")
    model_confidence = serializers.FloatField(allow_null=True, help_text="The model's probability of them.")
    model_version = serializers.IntegerField(allow_null=True)
    spans = SpanQuestionSerializer(many=True, help_text="Span projects: the spans in question, strongest first "
                                   "(empty for classification projects).")
    current_spans = ReviewSpanSerializer(many=True, help_text="Span projects: the newest annotation's spans (what a "
                                   "decision changes).")
    created_at = serializers.DateTimeField()


class CandidatePageSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ReviewKind.choices)
    count = serializers.IntegerField(help_text="Open candidates of this kind.")
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Open candidates of every kind.")
    results = CandidateSerializer(many=True)


class DecisionInputSerializer(serializers.Serializer):
    candidate = serializers.IntegerField(min_value=1, max_value=2**62, help_text="A candidate's id (from the list).")
    action = serializers.ChoiceField(
        choices=ReviewAction.choices,
        help_text="keep the label; change it to `label_keys` (a new annotation by you; the model retrains); "
        "relabel: send the item back for someone to label again; comment: add `note` to its thread (the item "
        "stays in the queue). `adjudicate` belongs to the adjudication page and is refused here.")
    label_keys = serializers.ListField(child=serializers.CharField(max_length=64), required=False, default=list,
                                       max_length=200, help_text="For `change`: the new label key(s).")
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000,
                                 help_text="The comment (required for `comment`), or a note with the decision.")
    spans = ReviewSpanSerializer(many=True, required=False, default=None,
                           help_text="Span projects, for `change`: the sentence's corrected spans (all of them; an "
                           "empty list says it has no entity).")
    accept = serializers.ListField(child=serializers.IntegerField(min_value=0, max_value=10000), required=False,
                                   default=None, max_length=1000,
                                   help_text="Span projects, for `change` instead of `spans`: positions in the "
                                   "candidate's `spans` whose model reading to take (the given spans stand "
                                   "otherwise).")


class DecisionSerializer(serializers.ModelSerializer):
    decided_by = serializers.CharField(source="decided_by.get_username", allow_null=True, default=None)

    class Meta:
        model = ReviewDecision
        fields = ["id", "example", "kind", "action", "previous_keys", "new_keys", "previous_spans", "new_spans", "note",
                  "decided_by", "decided_at"]


def _candidate_data(project: Any, rows: list[review_queue.Row]) -> list[dict[str, Any]]:
    return [{
        "id": row.candidate.pk, "example_id": row.candidate.example_id, "external_id": row.example.external_id or "",
        "text": row.example.text, "kind": row.candidate.kind, "score": row.candidate.score,
        "reason": row.candidate.reason,
        "given": [{"annotator": g["annotator"], "label_keys": [label["key"] for label in g["labels"]],
                   "label_names": [label["name"] for label in g["labels"]], "source": g["source"],
                   "created_at": g["created_at"]} for g in row.given],
        "current_keys": row.current_keys, "model_keys": row.candidate.model_keys,
        "model_confidence": row.candidate.model_confidence, "model_version": row.candidate.model_version_number,
        "spans": row.candidate.spans, "current_spans": row.current_spans, "created_at": row.candidate.created_at,
    } for row in rows]


def _int(value: str | None, default: int, *, name: str, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise ActionError(f"`{name}` must be a whole number from {low} to {high}.")
    return int(value)


@extend_schema(
    summary="Review candidates of one kind, best first",
    description="Likely mislabels, items of low-precision classes, or ambiguous items, as the review queue shows "
    "them (items labelled or decided on since the last quality report are left out). Span projects have likely "
    "mislabels only: one per sentence, with the spans in question (`spans`) and the given ones (`current_spans`). "
    "Managers (personal token) only.",
    parameters=[
        OpenApiParameter("kind", str, enum=list(review_queue.QUEUE_KINDS), required=True),
        OpenApiParameter("limit", int, description=f"At most this many (1-{MAX_LIMIT}, default 50)."),
        OpenApiParameter("offset", int, description="Skip this many first."),
    ],
    responses={200: CandidatePageSerializer, 400: ReviewErrorSerializer},
)
@api_view(["GET"])
def candidate_list(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    kind = request.query_params.get("kind", "")
    try:
        if kind not in review_queue.QUEUE_KINDS:
            raise ActionError(f"`kind` must be one of {', '.join(review_queue.QUEUE_KINDS)}.")
        limit = _int(request.query_params.get("limit"), 50, name="limit", low=1, high=MAX_LIMIT)
        offset = _int(request.query_params.get("offset"), 0, name="offset", low=0, high=10**9)
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    counts = review_queue.counts(project)
    page = list(review_queue.with_items(review_queue.open_candidates(project, kind))[offset:offset + limit])
    data = {"kind": kind, "count": counts[kind], "counts": counts,
            "results": _candidate_data(project, review_queue.rows(project, page))}
    return Response(CandidatePageSerializer(data).data)


@extend_schema(
    methods=["POST"], request=DecisionInputSerializer,
    responses={201: DecisionSerializer, 400: ReviewErrorSerializer, 409: ReviewErrorSerializer},
    summary="Decide on a review candidate",
    description="Records who decided what, when, and the labels (span projects: spans) before and after. `change` "
    "(span projects: with `spans` or `accept`) adds your annotation "
    "and retrains the model; keep, change and relabel take the item out of the queue. 409 when the candidate is "
    "gone (decided on or labelled meanwhile). Managers (personal token) only.",
)
@extend_schema(methods=["GET"], responses={200: DecisionSerializer(many=True)},
               summary="The latest review decisions (audit trail), newest first",
               parameters=[OpenApiParameter("limit", int, description=f"At most this many (1-{MAX_LIMIT}, "
                                                                      "default 50).")])
@api_view(["GET", "POST"])
def decisions(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    if request.method == "GET":
        try:
            limit = _int(request.query_params.get("limit"), 50, name="limit", low=1, high=MAX_LIMIT)
        except ActionError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        recent = ReviewDecision.objects.filter(project=project).select_related("decided_by")[:limit]
        return Response(DecisionSerializer(recent, many=True).data)
    form = DecisionInputSerializer(data=request.data)
    if not form.is_valid():
        detail = "; ".join(f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items())
        return Response({"detail": detail}, status=status.HTTP_400_BAD_REQUEST)
    values = form.validated_data
    if values["action"] == ReviewAction.CHANGE and project.is_span:
        if values["spans"] is None and values["accept"] is None:
            return Response({"detail": "spans: a change of a span project needs the corrected `spans` or the "
                             "positions to `accept`."}, status=status.HTTP_400_BAD_REQUEST)
    elif values["action"] == ReviewAction.CHANGE and not values["label_keys"]:
        return Response({"detail": "label_keys: a change needs the new label key(s)."},
                        status=status.HTTP_400_BAD_REQUEST)
    spans = None if values["spans"] is None else [dict(span) for span in values["spans"]]
    try:
        decision = review_queue.decide(project, values["candidate"], user=request.user, action=values["action"],
                                       label_keys=values["label_keys"], note=values["note"], spans=spans,
                                       accept=values["accept"])
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=exc.status)
    return Response(DecisionSerializer(decision).data, status=status.HTTP_201_CREATED)


urlpatterns = [
    path("projects/<int:pk>/review/candidates/", candidate_list, name="api-review-candidates"),
    path("projects/<int:pk>/review/decisions/", decisions, name="api-review-decisions"),
]
