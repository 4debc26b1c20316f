"""Embeddings, training runs, model versions and per-example scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import models
from django.db.models import Q
from django.utils import timezone

from projects.models import Project, TaxonomyVersion


class EmbeddingChunk(models.Model):
    """The embeddings of up to a few thousand examples of a project, as one float16 blob.

    Stored in the database (not on a local disk) so every worker machine reads
    the same vectors; a project's chunks load in one query.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="embedding_chunks")
    encoder = models.CharField(max_length=200)
    dim = models.PositiveIntegerField()
    count = models.PositiveIntegerField()
    example_ids = models.BinaryField()
    vectors = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["project", "encoder"], name="embedding_chunk_project")]

    def ids_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.example_ids), dtype=np.int64)

    def vectors_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.vectors), dtype=np.float16).reshape(self.count, self.dim)


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class TrainingRun(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_runs")
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    reason = models.CharField(max_length=200, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    n_labels = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True)
    model_version = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+")

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            # Coalescing: a burst of labels adds to the one queued run.
            models.UniqueConstraint(fields=["project"], condition=Q(status="queued"),
                                    name="one_queued_run_per_project"),
            # An update never runs twice at once for a project.
            models.UniqueConstraint(fields=["project"], condition=Q(status="running"),
                                    name="one_running_run_per_project"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.project} ({self.status})"

    def mark_failed(self, reason: str) -> None:
        self.status = RunStatus.FAILED
        self.error = reason
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "error", "finished_at", "timings", "n_labels"])

    def mark_succeeded(self, version: ModelVersion) -> None:
        self.status = RunStatus.SUCCEEDED
        self.model_version = version
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "model_version", "finished_at", "timings", "n_labels"])


@dataclass(frozen=True)
class Metrics:
    """A model version's quality report (the `metrics` JSON written by `quality.QualityReport.as_dict`), read
    in one place. Missing figures read as None or empty: old versions lack newer ones."""

    raw: dict[str, Any]

    def interval(self, name: str) -> dict[str, Any]:
        """{'value', 'low', 'high'} of an interval metric (accuracy, macro_f1), empty when absent."""
        return dict(self.raw.get(name) or {})

    def value(self, name: str) -> float | None:
        return self.interval(name).get("value")

    @property
    def ece(self) -> float | None:
        return self.raw.get("ece")

    @property
    def n_eval(self) -> int | None:
        return self.raw.get("n_eval")

    @property
    def per_class(self) -> list[dict[str, Any]]:
        return list(self.raw.get("per_class") or [])

    @property
    def confusion(self) -> dict[str, Any]:
        return dict(self.raw.get("confusion") or {})

    @property
    def reliability(self) -> dict[str, Any]:
        return dict(self.raw.get("reliability") or {})

    @property
    def accuracy_coverage(self) -> list[dict[str, Any]]:
        return list(self.raw.get("accuracy_coverage") or [])

    @property
    def report_version(self) -> int | None:
        """The number of the model version these figures were measured on: a version whose own
        report is not in yet carries its predecessor's (None on versions from before reports
        became a job of their own, whose figures are their own)."""
        value = self.raw.get("report_version")
        return int(value) if value is not None else None

    def headline(self) -> dict[str, Any]:
        """Accuracy and macro-F1 with their intervals, and ECE: what lists and webhooks show (span models: also
        entity-level F1, precision and recall; their accuracy is the share of examples entirely right)."""
        figures = {"accuracy": self.raw.get("accuracy"), "macro_f1": self.raw.get("macro_f1"), "ece": self.ece}
        if self.is_span:
            figures.update({name: self.raw.get(name) for name in ("entity_f1", "entity_precision", "entity_recall")})
        return figures

    @property
    def is_span(self) -> bool:
        """A span model's report (``learning.span_quality``): entity-level figures and an error breakdown."""
        return self.raw.get("task") == "span"

    @property
    def errors(self) -> dict[str, Any]:
        """Span reports: counts of wrong type / wrong boundary / both / spurious / missed, overall and per label."""
        return dict(self.raw.get("errors") or {})

    def curve_point(self) -> dict[str, float | None]:
        """The learning curve's figures for this version."""
        accuracy, f1 = self.interval("accuracy"), self.interval("macro_f1")
        point = {"accuracy": accuracy.get("value"), "accuracy_low": accuracy.get("low"),
                 "accuracy_high": accuracy.get("high"), "macro_f1": f1.get("value"), "macro_f1_low": f1.get("low"),
                 "macro_f1_high": f1.get("high"), "ece": self.ece}
        if self.is_span:
            entity = self.interval("entity_f1")
            point.update({"entity_f1": entity.get("value"), "entity_f1_low": entity.get("low"),
                          "entity_f1_high": entity.get("high"), "n_tokens": self.raw.get("n_tokens")})
        return point


class ModelVersion(models.Model):
    """A fitted model: the posterior over last-layer weights and its cross-validated quality."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    number = models.PositiveIntegerField()
    taxonomy_version = models.ForeignKey(TaxonomyVersion, on_delete=models.CASCADE, related_name="+")
    label_keys = models.JSONField(help_text="Label keys in the order of the model's outputs.")
    encoder = models.CharField(max_length=200)
    strategy = models.CharField(max_length=32)
    n_labels = models.PositiveIntegerField()
    artifact = models.BinaryField()
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    # When the quality report job filled `metrics` and the calibration in `artifact`; until then
    # the version serves with its predecessor's calibration and carries its figures.
    report_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="unique_model_version_number")]

    def __str__(self) -> str:
        return f"{self.project} model v{self.number}"

    @property
    def report(self) -> Metrics:
        return Metrics(self.metrics or {})


class ProjectionSetting(models.Model):
    """A project's "when to stop" rule for the learning-curve projection (`learning.feasibility`): labelling is
    worth stopping when 100 more labels are expected to add less macro-F1 than this. Kept on the learning side
    (the projection is the learning layer's), one row per project, made on first change."""

    DEFAULT_STOP_GAIN_POINTS = 0.5

    project = models.OneToOneField(Project, on_delete=models.CASCADE, primary_key=True,
                                   related_name="projection_setting")
    stop_gain_points = models.FloatField(
        default=DEFAULT_STOP_GAIN_POINTS,
        help_text="Macro-F1 points (of 100) that 100 more labels must add for labelling to be worth going on.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(stop_gain_points__gte=0) & Q(stop_gain_points__lte=100),
                                   name="stop_gain_points_between_0_and_100"),
        ]

    @classmethod
    def stop_gain_points_of(cls, project: Project) -> float:
        value = cls.objects.filter(project=project).values_list("stop_gain_points", flat=True).first()
        return cls.DEFAULT_STOP_GAIN_POINTS if value is None else float(value)


class FinetuneStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINETUNE_ACTIVE = (FinetuneStatus.QUEUED, FinetuneStatus.RUNNING)


class FinetuneRun(models.Model):
    """One fine-tune of a project's encoder (the slow loop, `learning.finetuning`): its progress while it runs, then
    the candidate model version it produced and how it compared with the current model on held-out labels."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="finetune_runs")
    number = models.PositiveIntegerField(help_text="Per project; names the encoder folder (v<number>).")
    status = models.CharField(max_length=10, choices=FinetuneStatus.choices, default=FinetuneStatus.QUEUED)
    reason = models.CharField(max_length=200, blank=True, help_text="Why it was asked for.")
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Written every few seconds by the worker while it runs: a running row whose heartbeat is old lost its worker.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    method = models.CharField(max_length=20, blank=True)
    config = models.JSONField(default=dict, blank=True)
    n_labels = models.PositiveIntegerField(default=0, help_text="Labelled examples when it started.")
    n_train = models.PositiveIntegerField(default=0, help_text="Of them, the ones the encoder was fine-tuned on.")
    n_heldout = models.PositiveIntegerField(default=0, help_text="Of them, the ones held out for the comparison.")
    # Progress: the phase, the optimiser steps (fine-tuning) or items (re-embedding) done of total, the epoch.
    phase = models.CharField(max_length=40, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    epoch = models.PositiveIntegerField(default=0)
    epochs = models.PositiveIntegerField(default=0)
    embedded = models.PositiveIntegerField(default=0)
    to_embed = models.PositiveIntegerField(default=0)
    seconds_left = models.FloatField(null=True, blank=True, help_text="Estimate for the current phase.")
    base_encoder = models.CharField(max_length=200, blank=True)
    encoder = models.CharField(max_length=200, blank=True, help_text="The fine-tuned encoder's vector name.")
    encoder_path = models.CharField(max_length=500, blank=True, help_text="Its folder, under FINETUNE_DIR.")
    finetune_seconds = models.FloatField(null=True, blank=True)
    heldout_ids = models.JSONField(default=list, blank=True)
    trained_ids = models.JSONField(default=list, blank=True,
                                   help_text="The labelled examples the encoder was fine-tuned on: its model's quality "
                                             "report is measured on the others.")
    candidate_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                          related_name="+")
    current_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+", help_text="The version serving when it was compared.")
    comparison = models.JSONField(default=dict, blank=True)
    is_promoted = models.BooleanField(default=False, help_text="Its encoder became the project's.")
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            # One fine-tune at a time per project: a second request while one waits or runs is refused.
            models.UniqueConstraint(fields=["project"], condition=Q(status__in=["queued", "running"]),
                                    name="one_active_finetune_per_project"),
            models.UniqueConstraint(fields=["project", "number"], name="unique_finetune_number"),
        ]

    def __str__(self) -> str:
        return f"fine-tune {self.number} of {self.project} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in FINETUNE_ACTIVE

    @property
    def won(self) -> bool | None:
        """Whether the candidate beat the current model on the held-out items (None before the comparison)."""
        value = (self.comparison or {}).get("candidate_wins")
        return None if value is None else bool(value)

    def progress(self) -> dict[str, Any]:
        """What the Versions page and the API show while it runs."""
        return {"phase": self.phase, "step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
                "epochs": self.epochs, "embedded": self.embedded, "to_embed": self.to_embed,
                "seconds_left": None if self.seconds_left is None else round(self.seconds_left, 1)}


def trained_example_ids(project_id: int, encoder_name: str) -> set[int] | None:
    """The examples an encoder was fine-tuned on, through every fine-tune it descends from; None for an encoder no
    fine-tune of this project produced (the configured one), or one whose run predates ``trained_ids``."""
    seen: set[int] = set()
    name, found = encoder_name, False
    for _ in range(1000):  # a chain of fine-tunes, each from the encoder of the one before
        run = (FinetuneRun.objects.filter(project_id=project_id, encoder=name).exclude(encoder_path="")
               .order_by("-number").only("trained_ids", "n_train", "base_encoder").first())
        if run is None:
            break
        if run.n_train and not run.trained_ids:
            return None
        found = True
        seen.update(int(i) for i in run.trained_ids)
        if not run.base_encoder or run.base_encoder == name:
            break
        name = run.base_encoder
    return seen if found else None


def unseen_mask(project_id: int, encoder_name: str, example_ids: np.ndarray) -> np.ndarray | None:
    """Per example, whether ``encoder_name`` was not fine-tuned on it; None for an encoder that saw no label
    (``trained_example_ids``). The quality reports measure a fine-tuned encoder's model on these only."""
    trained = trained_example_ids(project_id, encoder_name)
    if trained is None:
        return None
    return ~np.isin(np.asarray(example_ids, dtype=np.int64), np.fromiter(trained, dtype=np.int64, count=len(trained)))


class ProjectEncoder(models.Model):
    """Which encoder a project's fast loop embeds, fits and scores with: a fine-tuned one once a fine-tune's
    candidate was promoted, else (no row, or no run) the configured LABELHUB_ENCODER. Serving follows the
    encoder of the version it serves (`learning.loop_base.encoder_named`)."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, primary_key=True, related_name="encoder_choice")
    finetune_run = models.ForeignKey(FinetuneRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)
