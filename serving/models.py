"""The serving product's rows: promotion, predictions, API keys, webhooks, drift references.

The tables keep their first names (`learning_*`): they were carved out of the
learning app without moving data (see migrations/0001_initial.py).
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from learning.models import ModelVersion
from projects.models import Example, Project


class ThresholdMode(models.TextChoices):
    CONFIDENCE = "confidence", "A confidence threshold"
    TARGET = "target", "A target accuracy for automated predictions"


class ServingConfig(models.Model):
    """How a project serves predictions: which model version and where the human fallback starts."""

    project = models.OneToOneField(Project, primary_key=True, on_delete=models.CASCADE, related_name="serving")
    # Null until the first promotion: the newest version serves.
    promoted_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="+")
    # New versions are promoted as they are trained, unless a manager rolled back (which pins a version).
    auto_promote = models.BooleanField(default=True)
    threshold_mode = models.CharField(max_length=12, choices=ThresholdMode.choices, default=ThresholdMode.CONFIDENCE)
    confidence_threshold = models.FloatField(default=0.8)
    target_accuracy = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)


    class Meta:
        db_table = "learning_servingconfig"

    def __str__(self) -> str:
        return f"serving of {self.project_id}"


class PromotionKind(models.TextChoices):
    AUTO = "auto", "Promoted automatically after training"
    PROMOTE = "promote", "Promoted by a manager"
    ROLLBACK = "rollback", "Rolled back by a manager"


class ModelPromotion(models.Model):
    """One change of the serving model version (the history the versions page shows)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="promotions")
    previous = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    kind = models.CharField(max_length=10, choices=PromotionKind.choices)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "learning_modelpromotion"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"], name="model_promotion_recent")]


class DriftReference(models.Model):
    """A sample of a version's training embeddings, what recent inputs are compared with for drift."""

    model_version = models.OneToOneField(ModelVersion, primary_key=True, on_delete=models.CASCADE,
                                         related_name="drift_reference")
    encoder = models.CharField(max_length=200)
    dim = models.PositiveIntegerField()
    count = models.PositiveIntegerField()
    vectors = models.BinaryField()
    # The 95th percentile of a training example's distance to its nearest other training example:
    # an input farther than this from every training example is "unlike the training data".
    radius = models.FloatField()
    created_at = models.DateTimeField(default=timezone.now)


    class Meta:
        db_table = "learning_driftreference"

    def vectors_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.vectors), dtype=np.float16).reshape(self.count, self.dim).astype(np.float32)


class ApiKey(models.Model):
    """A project-scoped key for machines. Only a hash is stored; the key is shown once."""

    SCOPES = [("predict", "Predict"), ("import", "Import data"), ("read", "Read project, datasets and model")]

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, help_text="The key's public first part, to find it.")
    hashed_key = models.CharField(max_length=64, help_text="sha256 of the whole key.")
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "learning_apikey"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    # A project credential in the sense of `projects.access.ProjectCredential`.
    is_project_credential = True

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class Prediction(models.Model):
    """One answer of the prediction API, the prediction log's row; routed ones point at their example."""

    id = models.UUIDField(primary_key=True)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey(ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+")
    model_version_number = models.PositiveIntegerField()
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    content_hash = models.CharField(max_length=64)
    predicted_keys = models.JSONField(default=list)
    probabilities = models.JSONField(default=dict, help_text="Label key to probability.")
    confidence = models.FloatField()
    threshold = models.FloatField()
    is_uncertain = models.BooleanField(default=False)
    is_routed = models.BooleanField(default=False)
    example = models.ForeignKey(Example, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Span projects only (null for classification): the predicted spans, [{"start", "end", "text", "label": key,
    # "confidence"}], and the example's own confidence (its least sure token's probability of its most probable
    # tag: low when the model may have missed an entity). `confidence` is then the lowest of the two.
    spans = models.JSONField(null=True, blank=True)
    token_confidence = models.FloatField(null=True, blank=True)
    # float16 input embedding, compared with the training data for drift.
    embedding = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    human_labelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "learning_prediction"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "-created_at"], name="prediction_log"),
            # human_labels_given looks routed predictions up by example: cheap when there are none.
            models.Index(fields=["example"], condition=Q(is_routed=True), name="prediction_routed_example"),
        ]


class WebhookEvent(models.TextChoices):
    PREDICTION_ROUTED = "prediction.routed", "Prediction routed to a person"
    PREDICTION_LABELLED = "prediction.labelled", "Human label given for a routed prediction"
    MODEL_PROMOTED = "model.promoted", "Model version promoted"
    IMPORT_FINISHED = "import.finished", "Import finished"


class WebhookEndpoint(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list)
    # Needed in clear to sign payloads (HMAC-SHA256); shown to the project's managers.
    secret = models.CharField(max_length=64)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "learning_webhookendpoint"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RETRYING = "retrying", "Retrying"
    SUCCEEDED = "succeeded", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event sent to one endpoint, with every attempt's outcome (the delivery log)."""

    id = models.UUIDField(primary_key=True)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32, choices=WebhookEvent.choices)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "learning_webhookdelivery"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["endpoint", "-created_at"], name="webhook_delivery_log")]

    @property
    def is_retry_overdue(self) -> bool:
        # A minute of slack: a scheduler moves due jobs about once a second, a busy queue takes longer.
        return (self.status == DeliveryStatus.RETRYING and self.next_attempt_at is not None
                and self.next_attempt_at < timezone.now() - timedelta(minutes=1))
