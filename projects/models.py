"""Teams, projects, versioned taxonomies, datasets and examples."""
from __future__ import annotations

import functools
import uuid
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    ANNOTATOR = "annotator", "Annotator"
    MANAGER = "manager", "Manager"

    @property
    def rank(self) -> int:
        return ROLE_RANK[self.value]


ROLE_RANK = {Role.VIEWER.value: 0, Role.ANNOTATOR.value: 1, Role.MANAGER.value: 2}


class Team(models.Model):
    name = models.CharField(max_length=120, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")]

    def __str__(self) -> str:
        return f"{self.user} – {self.team} ({self.role})"


class TaskType(models.TextChoices):
    SINGLE_LABEL = "single_label", "Single-label classification"
    MULTI_LABEL = "multi_label", "Multi-label classification"
    SPAN = "span", "Span tagging (NER)"


class ProjectQuerySet(models.QuerySet["Project"]):
    def visible_to(self, user: Any) -> ProjectQuerySet:
        if not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self.all()
        return self.filter(team__memberships__user=user)


# Acquisition strategies are the learning layer's: it registers them here when it loads
# (`learning.apps`), so this list is `learning.acquisition.STRATEGIES` and nothing else.
STRATEGY_CHOICES: list[tuple[str, str]] = []


def register_strategies(choices: list[tuple[str, str]]) -> None:
    STRATEGY_CHOICES[:] = choices


def strategy_choices() -> list[tuple[str, str]]:
    return list(STRATEGY_CHOICES)


class Project(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Shown to annotators beside every item.")
    task_type = models.CharField(max_length=16, choices=TaskType.choices, default=TaskType.SINGLE_LABEL)
    acquisition_strategy = models.CharField(
        max_length=32, default="bald_density_diversity", choices=strategy_choices,
        help_text="How the next items to label are chosen once a model exists.",
    )
    language = models.CharField(
        max_length=8, default="en",
        help_text="Language of the texts (a spaCy language code such as en, pt, de): span projects "
                  "split their texts into tokens with this language's rule-based tokenizer.",
    )
    overlap = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="How many annotators label each item (more than one measures agreement).",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProjectQuerySet.as_manager()

    # The requesting user's role, set by `projects.access` for the request at hand (the nav reads it).
    user_role: str | None = None

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="unique_project_name_per_team")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("projects:detail", args=[self.pk])

    @property
    def is_multi_label(self) -> bool:
        return self.task_type == TaskType.MULTI_LABEL

    @property
    def is_span(self) -> bool:
        return self.task_type == TaskType.SPAN

    def current_taxonomy(self) -> TaxonomyVersion:
        version = self.taxonomy_versions.order_by("-number").first()
        if version is None:
            raise TaxonomyVersion.DoesNotExist(f"project {self.pk} has no taxonomy")
        return version

    def role_of(self, user: Any) -> str | None:
        if not user.is_authenticated:
            return None
        if user.is_superuser:
            return Role.MANAGER
        return (
            Membership.objects.filter(team_id=self.team_id, user=user).values_list("role", flat=True).first()
        )


class TaxonomyVersion(models.Model):
    """An immutable snapshot of a project's labels; every edit makes a new one."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="taxonomy_versions")
    number = models.PositiveIntegerField()
    changelog = models.JSONField(
        default=list, help_text="Readable lines describing what changed from the previous version."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="unique_taxonomy_version_number")]

    def __str__(self) -> str:
        return f"{self.project} v{self.number}"

    def labels_by_key(self) -> dict[str, Label]:
        """This version's labels by stable key, in taxonomy order."""
        return {label.key: label for label in self.labels.order_by("position", "id")}

    def active_labels(self) -> models.QuerySet[Label]:
        return self.labels.filter(is_deprecated=False)


def default_label_key() -> str:
    return uuid.uuid4().hex[:12]


class Label(models.Model):
    """A label inside one taxonomy version. `key` is its stable id across versions."""

    version = models.ForeignKey(TaxonomyVersion, on_delete=models.CASCADE, related_name="labels")
    key = models.CharField(max_length=32, default=default_label_key)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    colour = models.CharField(max_length=7, default="#4f6bed")
    shortcut = models.CharField(max_length=1, blank=True)
    is_deprecated = models.BooleanField(default=False)
    position = models.PositiveIntegerField(default=0)

    # Set on labels of older versions shown beside the current taxonomy (see annotation.stats).
    is_removed: bool = False

    class Meta:
        ordering = ["version", "position", "name"]
        constraints = [
            models.UniqueConstraint(fields=["version", "key"], name="unique_label_key_per_version"),
            models.UniqueConstraint(fields=["version", "name"], name="unique_label_name_per_version"),
            models.UniqueConstraint(
                fields=["version", "shortcut"], condition=~Q(shortcut=""), name="unique_label_shortcut_per_version"
            ),
            models.CheckConstraint(condition=Q(colour__regex=r"^#[0-9a-fA-F]{6}$"), name="label_colour_is_hex"),
        ]

    def __str__(self) -> str:
        return self.name


class DatasetStatus(models.TextChoices):
    DRAFT = "draft", "Waiting for column mapping"
    QUEUED = "queued", "Queued"
    VALIDATING = "validating", "Checking rows"
    IMPORTING = "importing", "Importing"
    DONE = "done", "Imported"
    FAILED = "failed", "Failed"


class DatasetSource(models.TextChoices):
    UPLOAD = "upload", "Browser upload"
    API = "api", "REST API"
    CLI = "cli", "Command line"
    DEMO = "demo", "Demo data"


class Dataset(models.Model):
    """One import batch: a file (or an API push), its column mapping, status and error report."""

    MAX_STORED_ERRORS = 1000

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=255, help_text="The file name as the user uploaded it.")
    file = models.FileField(upload_to="uploads/%Y/%m/", blank=True)
    file_format = models.CharField(max_length=8, blank=True)
    source = models.CharField(max_length=8, choices=DatasetSource.choices, default=DatasetSource.UPLOAD)
    columns = models.JSONField(default=list, blank=True, help_text="Column names found in the file.")
    text_column = models.CharField(max_length=200, blank=True)
    label_column = models.CharField(max_length=200, blank=True)
    id_column = models.CharField(max_length=200, blank=True)
    add_unknown_labels = models.BooleanField(default=False)
    # How the file is read (sniffed at upload, changeable on the upload page until the import starts).
    encoding = models.CharField(max_length=40, blank=True, help_text="Text encoding (a Python codec name).")
    delimiter = models.CharField(max_length=4, blank=True, help_text="Delimiter of a CSV / TSV file.")
    sheet = models.CharField(max_length=255, blank=True, help_text="Sheet of a workbook; blank = the first.")
    sniffed = models.JSONField(default=dict, blank=True,
                               help_text="What the upload found: {encoding, encoding_reason, delimiter, sheets}.")
    # Columns that are neither text, label nor id: kept as metadata but not shown to annotators, or not kept.
    hidden_columns = models.JSONField(default=list, blank=True)
    dropped_columns = models.JSONField(default=list, blank=True)
    label_mapping = models.JSONField(default=dict, blank=True,
                                     help_text="{label in the file: label in the taxonomy (created if new)}.")
    labels_found = models.JSONField(default=dict, blank=True,
                                    help_text="{label in the file: rows}, from the last check of the file.")
    status = models.CharField(max_length=12, choices=DatasetStatus.choices, default=DatasetStatus.DRAFT)
    total_rows = models.PositiveIntegerField(default=0)
    imported_count = models.PositiveIntegerField(default=0)
    duplicate_count = models.PositiveIntegerField(default=0)
    labelled_count = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="Up to 1,000 {file, row, reason} entries.")
    error_groups = models.JSONField(default=list, blank=True,
                                    help_text="The errors by reason: {reason, count, rows (the first few)}.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("projects:dataset", args=[self.project_id, self.pk])

    @property
    def is_running(self) -> bool:
        return self.status in {DatasetStatus.QUEUED, DatasetStatus.VALIDATING, DatasetStatus.IMPORTING}

    @property
    def progress_key(self) -> str:
        return f"labelhub:dataset-progress:{self.pk}"

    def report_progress(self, done: int, total: int, phase: str) -> None:
        # Progress goes to the cache, not the row: the insert phase runs in one
        # transaction, and the page must see progress before it commits.
        cache.set(self.progress_key, {"done": done, "total": total, "phase": phase}, timeout=24 * 3600)

    def progress(self) -> dict[str, Any]:
        """{'done', 'total', 'phase', 'percent'} for the progress bar."""
        data: dict[str, Any]
        if self.status == DatasetStatus.DONE:
            data = {"done": self.total_rows, "total": self.total_rows, "phase": "done"}
        else:
            data = cache.get(self.progress_key) or {"done": 0, "total": self.total_rows, "phase": self.status}
        # Two passes over the file: checking is the first half, inserting the second.
        total = max(int(data["total"]), 1)
        fraction = min(int(data["done"]) / total, 1.0)
        if data["phase"] == DatasetStatus.VALIDATING:
            percent = 50 * fraction
        elif data["phase"] == DatasetStatus.IMPORTING:
            percent = 50 + 50 * fraction
        elif data["phase"] == "done":
            percent = 100.0
        else:
            percent = 0.0
        return {**data, "percent": round(percent, 1)}

    def mark_started(self, status: str) -> None:
        self.status = status
        self.started_at = self.started_at or timezone.now()
        self.save(update_fields=["status", "started_at"])

    def mark_failed(self, errors: list[dict[str, Any]], *, error_count: int | None = None,
                    groups: list[dict[str, Any]] | None = None) -> None:
        self.status = DatasetStatus.FAILED
        self.errors = errors[: self.MAX_STORED_ERRORS]
        self.error_count = error_count if error_count is not None else len(errors)
        self.error_groups = groups or []
        self.imported_count = self.duplicate_count = self.labelled_count = 0
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "errors", "error_count", "error_groups", "imported_count",
                                 "duplicate_count", "labelled_count", "labels_found", "finished_at"])
        cache.delete(self.progress_key)

    @property
    def can_retry(self) -> bool:
        """A failed import whose file is still stored can be mapped again and retried without re-uploading."""
        return self.status == DatasetStatus.FAILED and bool(self.file)

    def reopen(self) -> None:
        """Failed → draft: the stored file waits for a changed mapping (nothing was imported)."""
        self.status = DatasetStatus.DRAFT
        self.errors, self.error_groups, self.error_count = [], [], 0
        self.started_at = self.finished_at = None
        self.save(update_fields=["status", "errors", "error_groups", "error_count", "started_at", "finished_at"])
        cache.delete(self.progress_key)

    def mark_done(self, *, imported: int, duplicates: int, labelled: int, total: int) -> None:
        self.status = DatasetStatus.DONE
        self.imported_count, self.duplicate_count, self.labelled_count = imported, duplicates, labelled
        self.total_rows = total
        self.errors, self.error_count, self.error_groups = [], 0, []
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "imported_count", "duplicate_count", "labelled_count", "total_rows",
                                 "errors", "error_count", "error_groups", "labels_found", "finished_at"])
        cache.delete(self.progress_key)


# What serving writes on an example it routes from the prediction API (serving/predictions.py): for
# tracing, not for the annotator, who would otherwise see it as the item's metadata.
ROUTING_METADATA_KEYS = frozenset({"source", "prediction_id", "route"})


class ExampleQuerySet(models.QuerySet["Example"]):
    def in_project(self, project: Project | int) -> ExampleQuerySet:
        return self.filter(project=project)

    def search(self, query: str) -> ExampleQuerySet:
        """Examples whose text contains `query` (any case) or whose external id is `query`."""
        query = query.strip()
        return self.filter(models.Q(text__icontains=query) | models.Q(external_id=query)) if query else self


class Example(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="examples")
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="examples")
    text = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    external_id = models.CharField(max_length=255, blank=True)
    # Span projects only: the text's tokens as [[start, end], ...] character offsets, computed once at
    # import (spaCy's rule-based tokenizer for the project's language) or taken from a pre-tokenized import.
    # Spans are snapped to these boundaries. Null for classification projects.
    tokens = models.JSONField(null=True, blank=True)
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ExampleQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="one_example_per_text_per_project"),
        ]
        indexes = [models.Index(fields=["project", "external_id"], name="example_project_external_id")]

    def __str__(self) -> str:
        return self.text[:80]

    def metadata_for_annotators(self) -> dict[str, Any]:
        """The metadata an annotator may see: without the columns its import kept hidden (client names,
        internal ids, a gold label not chosen as the label), and, for an example that came from no import
        (a routed prediction), without the routing's own keys."""
        metadata = self.metadata or {}
        if not metadata:
            return {}
        hidden = ROUTING_METADATA_KEYS if self.dataset_id is None else _hidden_columns(self.dataset_id)
        return {key: value for key, value in metadata.items() if key not in hidden}


@functools.lru_cache(maxsize=4096)
def _hidden_columns(dataset_id: int) -> frozenset[str]:
    # Remembered per process: a dataset's hidden columns are fixed before its first example is
    # inserted (only a draft's mapping changes; a failed import, which is reopened, has no examples),
    # so the labelling page reads them once per dataset, not once per item.
    hidden = Dataset.objects.filter(pk=dataset_id).values_list("hidden_columns", flat=True).first()
    return frozenset(hidden or ())


class PersonalToken(models.Model):
    """A user's key for the REST API; it acts as that user. Only a hash is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="personal_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The key's public first part, shown to tell keys apart.")
    hashed_key = models.CharField(max_length=64, unique=True, help_text="sha256 of the whole key.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
