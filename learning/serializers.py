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




# --- Explore (rare-class discovery) -------------------------------------------------------------------------------


class ExploreShareSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="The label's stable key.")
    name = serializers.CharField(help_text="Its current name ('unknown label …' for a key no longer in any version).")
    share = serializers.FloatField(help_text="Share of the cluster's items the model gives this label (0-1).")


class ExploreTextSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The example's id.")
    text = serializers.CharField()


class ExploreClusterSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The cluster's number in this clustering: pass it to the actions.")
    size = serializers.IntegerField(help_text="Items in the cluster.")
    labelled = serializers.IntegerField(help_text="Of them, labelled.")
    unexplored = serializers.BooleanField(
        help_text="No labelled item lies within the cluster's radius: where a class nobody thought of may hide.")
    radius = serializers.FloatField(help_text="Distance from the centre within which half of its items lie "
                                    "(Euclidean between unit vectors: 0 same direction, 2 opposite).")
    nearest_labelled = serializers.FloatField(allow_null=True, help_text="Distance from the centre to the nearest "
                                              "labelled item (null: nothing labelled).")
    representatives = ExploreTextSerializer(many=True, help_text="The items nearest the centre, nearest first.")
    distribution = ExploreShareSerializer(many=True, help_text="The model's labels over the cluster, largest "
                                          "share first (empty before the first model on these vectors).")
    mean_bald = serializers.FloatField(allow_null=True, help_text="Mean BALD (the model's own uncertainty) over the "
                                       "cluster's items; null without a model.")


class ExploreProgressSerializer(serializers.Serializer):
    stage = serializers.CharField()
    step = serializers.IntegerField()
    steps = serializers.IntegerField()


class ExploreSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=["ready", "running", "none"],
        help_text="ready: `clusters` describe the project as it is now; running: a clustering job is on its way "
        "(`progress`); none: nothing clustered since the last change (POST to cluster).")
    progress = ExploreProgressSerializer(allow_null=True)
    key = serializers.CharField(allow_null=True, help_text="Names this clustering; the actions need it, and refuse "
                                "it (409) once new labels, a new model or new data changed the clusters.")
    model_version = serializers.IntegerField(allow_null=True, help_text="The model version whose labels and BALD "
                                             "are shown.")
    encoder = serializers.CharField(allow_null=True)
    n = serializers.IntegerField(help_text="Items clustered (every item with an embedding).")
    k = serializers.IntegerField(help_text="Clusters asked for (the square root of n over 2, from 2 to 50).")
    labelled = serializers.IntegerField(help_text="Labelled items among them.")
    unexplored = serializers.IntegerField(help_text="Unexplored clusters.")
    computed_at = serializers.DateTimeField(allow_null=True)
    clusters = ExploreClusterSerializer(many=True, help_text="Unexplored clusters first, then the largest.")


class ExploreQueueInputSerializer(serializers.Serializer):
    key = serializers.CharField(max_length=200, help_text="The clustering's `key` (from GET).")
    cluster = serializers.IntegerField(min_value=0, max_value=10_000, help_text="The cluster's `index`.")


class ExploreLabelInputSerializer(ExploreQueueInputSerializer):
    name = serializers.CharField(max_length=100, help_text="The new label's name (unique in the taxonomy).")
    description = serializers.CharField(max_length=500, required=False, allow_blank=True, default="",
                                        help_text="What the label means (annotators see it).")
    taxonomy_version = serializers.IntegerField(
        min_value=1, max_value=2**31 - 1, required=False, allow_null=True, default=None,
        help_text="The taxonomy version you saw; 409 if someone changed it since (omit to add to whatever is "
        "current).")
    queue = serializers.BooleanField(required=False, default=True, help_text="Also send the cluster's unlabelled "
                                     "items to the front of the labelling queue (default).")


class ExploreQueuedSerializer(serializers.Serializer):
    cluster = serializers.IntegerField()
    sent = serializers.IntegerField(help_text="Unlabelled items now at the front of the queue, nearest the "
                                    "cluster's centre first.")


class ExploreNewLabelSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="The new label's stable key.")
    name = serializers.CharField()


class ExploreLabelAddedSerializer(ExploreQueuedSerializer):
    label = ExploreNewLabelSerializer()  # type: ignore[assignment]
    taxonomy_version = serializers.IntegerField(help_text="The taxonomy version that added it.")


class ExploreErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
