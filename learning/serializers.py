"""Serializers of the learning REST API."""
from __future__ import annotations

from rest_framework import serializers

from learning.models import TrainingRun


class TrainingRunSerializer(serializers.ModelSerializer):
    model_version = serializers.IntegerField(source="model_version.number", allow_null=True, default=None)

    class Meta:
        model = TrainingRun
        fields = ["id", "status", "reason", "requested_at", "started_at", "finished_at", "n_labels", "error",
                  "timings", "model_version"]


class CurvePointSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    n_labels = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    accuracy = serializers.FloatField(allow_null=True)
    accuracy_low = serializers.FloatField(allow_null=True)
    accuracy_high = serializers.FloatField(allow_null=True)
    macro_f1 = serializers.FloatField(allow_null=True)
    macro_f1_low = serializers.FloatField(allow_null=True)
    macro_f1_high = serializers.FloatField(allow_null=True)
    ece = serializers.FloatField(allow_null=True)


class ModelSummarySerializer(serializers.Serializer):
    version = serializers.IntegerField(
        allow_null=True,
        help_text="The model version that `metrics` describe: the newest one whose quality report is in (null "
        "before any).",
    )
    newest_version = serializers.IntegerField(
        allow_null=True,
        help_text="The newest model version (null before any). Newer than `version` while its report is computed; "
        "it suggests and predicts meanwhile with the previous version's calibration.",
    )
    n_labels = serializers.IntegerField(allow_null=True)
    metrics = serializers.DictField(
        allow_null=True,
        help_text="Cross-validated quality of the latest model: accuracy and macro_f1 ({value, low, high}: 95% "
        "bootstrap interval), ece, per_class, confusion, reliability.",
    )
    learning_curve = CurvePointSerializer(many=True)
    runs = TrainingRunSerializer(many=True)
    embedding = serializers.DictField(allow_null=True, help_text="{done, total} while embeddings are computed.")
    labelled = serializers.IntegerField()
    examples = serializers.IntegerField()


