"""REST API of agreement and adjudication: the agreement figures, the open disagreements, a final label.

Agreement is read by any member (and by a project API key with the read scope, like the model summary);
conflicts and adjudications are a manager's, with a personal token: a final label changes what the model
trains on, which a machine's key is not given to do.
"""
from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotation import adjudication, stats
from annotation.agreement import Estimate
from annotation.models import ReviewDecision
from labelhub.errors import ActionError
from projects.access import accepts_api_keys, get_project_for_api, get_project_for_user
from projects.models import Role

MAX_LIMIT = 500


class EstimateSerializer(serializers.Serializer):
    value = serializers.FloatField(allow_null=True, help_text="Null where undefined (one label only).")
    low = serializers.FloatField(allow_null=True, help_text="95% percentile-bootstrap interval over items.")
    high = serializers.FloatField(allow_null=True)
    items = serializers.IntegerField()


class LabelAgreementSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    items = serializers.IntegerField(help_text="Items on which at least one annotator gave this label.")
    fleiss_kappa = EstimateSerializer()
    krippendorff_alpha = EstimateSerializer()


class PairAgreementSerializer(serializers.Serializer):
    a = serializers.CharField()
    b = serializers.CharField()
    items = serializers.IntegerField(help_text="Items both labelled.")
    observed = serializers.FloatField(help_text="Share of those on which they gave the same labels.")
    cohen_kappa = EstimateSerializer()


class AnnotatorAgreementSerializer(serializers.Serializer):
    annotator = serializers.CharField()
    items = serializers.IntegerField(help_text="Items this annotator labelled that have a final label.")
    adjudicated = serializers.IntegerField(help_text="Of those, items a manager adjudicated.")
    observed = serializers.FloatField(help_text="Share on which the annotator's answer is the final label.")
    cohen_kappa = EstimateSerializer()


class AgreementSerializer(serializers.Serializer):
    items = serializers.IntegerField(help_text="Items labelled by two or more people.")
    ratings = serializers.IntegerField()
    observed = serializers.FloatField(help_text="Share of agreeing annotator pairs, averaged over items.")
    fleiss_kappa = EstimateSerializer()
    krippendorff_alpha = EstimateSerializer()
    per_label = LabelAgreementSerializer(many=True)
    pairs = PairAgreementSerializer(many=True)
    annotators = AnnotatorAgreementSerializer(many=True)


def _estimate(e: Estimate) -> dict[str, Any]:
    return {"value": e.value, "low": e.low, "high": e.high, "items": e.items}


@extend_schema(responses={200: AgreementSerializer, 204: None}, summary="Agreement between annotators",
               description="Cohen's kappa per annotator pair, Fleiss' kappa and Krippendorff's alpha (nominal) overall "
               "and per label (one against the rest), each annotator against the final label (adjudicated, else "
               "unanimous, else majority), with 95% bootstrap intervals over items. 204 when no item has two "
               "annotators yet.")
@api_view(["GET"])
@accepts_api_keys
def agreement(request: Request, pk: int) -> Response:
    project = get_project_for_api(request, pk, scope="read")
    details = stats.agreement_details(project)
    if details is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    report = details["report"]
    data = {
        "items": report.items, "ratings": report.ratings, "observed": report.observed,
        "fleiss_kappa": _estimate(report.fleiss), "krippendorff_alpha": _estimate(report.alpha),
        "per_label": [{"key": row["row"].key, "name": row["label"]["name"], "items": row["row"].items,
                       "fleiss_kappa": _estimate(row["row"].fleiss), "krippendorff_alpha": _estimate(row["row"].alpha)}
                      for row in details["per_label"]],
        "pairs": [{"a": p["a"], "b": p["b"], "items": p["row"].items, "observed": p["row"].observed,
                   "cohen_kappa": _estimate(p["row"].kappa)} for p in details["pairs"]],
        "annotators": [{"annotator": a["name"], "items": a["row"].items, "adjudicated": a["row"].adjudicated,
                        "observed": a["row"].observed, "cohen_kappa": _estimate(a["row"].kappa)}
                       for a in details["annotators"]],
    }
    return Response(AgreementSerializer(data).data)


class AnswerSerializer(serializers.Serializer):
    annotator = serializers.CharField(help_text="Username ('imported' for answers without an annotator).")
    label_keys = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()


class ConflictSerializer(serializers.Serializer):
    example_id = serializers.IntegerField()
    external_id = serializers.CharField(allow_blank=True)
    text = serializers.CharField()
    answers = AnswerSerializer(many=True, help_text="Each annotator's newest answer.")
    is_tie = serializers.BooleanField(help_text="No label set has more votes than every other: left out of training.")
    training_keys = serializers.ListField(child=serializers.CharField(), allow_null=True,
                                          help_text="What the model trains on now (the majority); null for a tie.")
    votes = serializers.IntegerField()
    support = serializers.IntegerField(help_text="Annotators who gave `training_keys`.")


class ConflictPageSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Open disagreements (unadjudicated).")
    ties = serializers.IntegerField(help_text="Of those, ties left out of training.")
    results = ConflictSerializer(many=True)


class AdjudicationErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


@extend_schema(responses={200: ConflictPageSerializer}, summary="Disagreements waiting for adjudication",
               parameters=[OpenApiParameter("limit", int, description=f"At most this many results (1-{MAX_LIMIT}, "
                                                                       "default 100); ties first.")])
@api_view(["GET"])
def conflicts(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    raw = request.query_params.get("limit", "100")
    try:
        limit = int(raw)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        return Response({"detail": f"limit must be a whole number from 1 to {MAX_LIMIT}; got “{raw[:40]}”."},
                        status=status.HTTP_400_BAD_REQUEST)
    found = adjudication.conflicts(project)
    results = [{
        "example_id": c.example.pk, "external_id": c.example.external_id or "", "text": c.example.text,
        "answers": [{"annotator": a.username, "label_keys": list(a.keys), "created_at": a.created_at}
                    for a in c.answers],
        "is_tie": c.is_tie, "training_keys": list(c.resolution.keys) if c.resolution.keys is not None else None,
        "votes": c.resolution.votes, "support": c.resolution.support,
    } for c in found[:limit]]
    return Response(ConflictPageSerializer({"count": len(found), "ties": sum(1 for c in found if c.is_tie),
                                            "results": results}).data)


class AdjudicationInputSerializer(serializers.Serializer):
    example_id = serializers.IntegerField(min_value=1, max_value=2**62)
    label_keys = serializers.ListField(child=serializers.CharField(max_length=64), min_length=1, max_length=200,
                                       help_text="The final label key(s): one for a single-label project.")
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class AdjudicationDecisionSerializer(serializers.ModelSerializer):
    decided_by = serializers.CharField(source="decided_by.get_username", allow_null=True, default=None)

    class Meta:
        model = ReviewDecision
        fields = ["id", "example", "kind", "action", "previous_keys", "new_keys", "note", "decided_by", "decided_at"]


@extend_schema(request=AdjudicationInputSerializer,
               responses={201: AdjudicationDecisionSerializer, 400: AdjudicationErrorSerializer,
                          404: AdjudicationErrorSerializer},
               summary="Choose the final label of an item several people labelled",
               description="Becomes the item's training target (the model retrains) and is recorded as a review "
               "decision (action `adjudicate`) with the previous training target.")
@api_view(["POST"])
def adjudicate(request: Request, pk: int) -> Response:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    given = AdjudicationInputSerializer(data=request.data)
    given.is_valid(raise_exception=True)
    try:
        adjudication.adjudicate(project, example_id=given.validated_data["example_id"], user=request.user,
                                label_keys=given.validated_data["label_keys"], note=given.validated_data["note"])
    except ActionError as exc:
        return Response({"detail": str(exc)}, status=exc.status)
    decision = (ReviewDecision.objects.filter(project=project, example_id=given.validated_data["example_id"])
                .select_related("decided_by").order_by("-decided_at", "-id").first())
    return Response(AdjudicationDecisionSerializer(decision).data, status=status.HTTP_201_CREATED)
