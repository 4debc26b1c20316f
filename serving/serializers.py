"""Serializers of the learning REST API."""
from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

# --- Prediction API ---------------------------------------------------------------------------------------------


class StrictTextField(serializers.CharField):
    """A non-empty JSON string: numbers, booleans and objects are refused, not turned into text."""

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            raise serializers.ValidationError("Text is not valid Unicode (lone surrogate).") from None
        return super().to_internal_value(data)


class PredictRequestSerializer(serializers.Serializer):
    texts = serializers.ListField(
        child=StrictTextField(allow_blank=False, trim_whitespace=False),
        allow_empty=False,
        help_text="The texts to classify: 1 to LABELHUB_PREDICT_BATCH_LIMIT (default 100) non-empty strings, "
        "each at most LABELHUB_MAX_TEXT_CHARS (default 20,000) characters.",
    )
    route = serializers.BooleanField(
        default=True, help_text="Send inputs below the confidence threshold to the annotation queue (default true). "
        "Needs an API key with the predict scope or the annotator/manager role: for a viewer it defaults to false, "
        "and true is refused (403).")

    def validate_texts(self, texts: list[str]) -> list[str]:
        limit = settings.PREDICT_BATCH_LIMIT
        if len(texts) > limit:
            raise serializers.ValidationError(f"At most {limit} texts per request; got {len(texts)}.")
        # Keyed by the text's index, as a string: it is a JSON object key on the wire anyway.
        errors: dict[str, list[str]] = {}
        for i, text in enumerate(texts):
            if not text.strip():
                errors[str(i)] = ["Empty text."]
            elif len(text) > settings.MAX_TEXT_CHARS:
                errors[str(i)] = [f"Longer than {settings.MAX_TEXT_CHARS} characters."]
        if errors:
            raise serializers.ValidationError(errors)
        return texts


class SpanSerializer(serializers.Serializer):
    start = serializers.IntegerField(help_text="Character offset of the span's first character.")
    end = serializers.IntegerField(help_text="Character offset just after the span (end exclusive).")
    text = serializers.CharField(help_text="The text's characters start to end.")
    label = serializers.CharField(help_text="The entity label's name.")  # type: ignore[assignment]
    label_key = serializers.CharField(help_text="The label's stable key.")
    confidence = serializers.FloatField(required=False, help_text=(
        "Probability that exactly this span (start, end and label) is right (model spans only)."))


class HumanSpanSerializer(SpanSerializer):
    confidence = None  # type: ignore[assignment]  # a person's span has none


class HumanLabelSerializer(serializers.Serializer):
    # `label` is an API field, not Field.label: DRF's metaclass moves declared fields off the class.
    label = serializers.CharField(  # type: ignore[assignment]
        allow_null=True, help_text="The label's name (single-label), else null.")
    labels = serializers.ListField(child=serializers.CharField())
    label_keys = serializers.ListField(child=serializers.CharField())
    labelled_at = serializers.DateTimeField()
    spans = HumanSpanSerializer(many=True, required=False, help_text=(
        "Span projects: the person's spans ([] means they found no entity)."))


class PredictionSerializer(serializers.Serializer):
    prediction_id = serializers.UUIDField()
    spans = SpanSerializer(many=True, required=False, help_text=(
        "Span projects only: the predicted entities, in text order (empty when the model finds none). "
        "`label` is then null and `probabilities` empty; `labels` are the distinct entity labels."))
    token_confidence = serializers.FloatField(required=False, allow_null=True, help_text=(
        "Span projects only: the least sure token's probability of its most probable tag (low when an "
        "entity may have been missed). `confidence` is the lowest of it and the spans' confidences."))
    label = serializers.CharField(  # type: ignore[assignment]  # an API field, as above
        allow_null=True, help_text="The predicted label's name (single-label projects), else null.")
    labels = serializers.ListField(
        child=serializers.CharField(),
        help_text="Predicted label names (one for single-label; any number for multi-label).")
    label_keys = serializers.ListField(child=serializers.CharField(), help_text="Stable keys of the predicted labels.")
    probabilities = serializers.DictField(child=serializers.FloatField(),
                                          help_text="Calibrated probability of every label, by name.")
    confidence = serializers.FloatField(help_text="Probability that the whole prediction is right.")
    threshold = serializers.FloatField(help_text="The confidence threshold in force when it was made.")
    is_uncertain = serializers.BooleanField(help_text="Confidence below the threshold.")
    is_routed = serializers.BooleanField(help_text="Sent to the annotation queue for a person to label.")
    example_id = serializers.IntegerField(allow_null=True, help_text="The project example a routed input became.")
    model_version = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class PredictionDetailSerializer(PredictionSerializer):
    human = HumanLabelSerializer(allow_null=True, help_text="The person's label once a routed input is labelled.")


class PredictResponseSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    threshold = serializers.FloatField()
    predictions = PredictionSerializer(many=True)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class ModelVersionSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    n_labels = serializers.IntegerField()
    encoder = serializers.CharField()
    strategy = serializers.CharField()
    accuracy = serializers.FloatField(allow_null=True)
    macro_f1 = serializers.FloatField(allow_null=True)
    ece = serializers.FloatField(allow_null=True)
    is_serving = serializers.BooleanField()
    has_accuracy_coverage = serializers.BooleanField()


class CoveragePointSerializer(serializers.Serializer):
    threshold = serializers.FloatField()
    coverage = serializers.FloatField()
    accuracy = serializers.FloatField(allow_null=True)


class ServingSerializer(serializers.Serializer):
    model_version = serializers.IntegerField(allow_null=True, help_text="The version that serves, null before any.")
    auto_promote = serializers.BooleanField()
    threshold_mode = serializers.ChoiceField(choices=["confidence", "target"])
    target_accuracy = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True, help_text="The confidence threshold in force.")
    expected_automation_rate = serializers.FloatField(
        allow_null=True, help_text="Share of inputs answered without a person at this threshold (cross-validated).")
    expected_accuracy = serializers.FloatField(allow_null=True,
                                               help_text="Accuracy of the automated answers (cross-validated).")
    note = serializers.CharField(allow_blank=True)
    accuracy_coverage = CoveragePointSerializer(many=True)


class PromoteResponseSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    auto_promote = serializers.BooleanField()
