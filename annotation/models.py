"""Annotations: who gave which labels to which example, under which taxonomy version."""
from __future__ import annotations

from datetime import datetime

import numpy as np
from django.conf import settings
from django.db import connection, models
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from projects.models import Example, Project, TaxonomyVersion


class AnnotationSource(models.TextChoices):
    UI = "ui", "Labelling page"
    IMPORT = "import", "Import"
    API = "api", "REST API"


class AnnotationQuerySet(models.QuerySet["Annotation"]):
    def in_project(self, project: Project | int) -> AnnotationQuerySet:
        return self.filter(example__project=project)

    def with_label(self, key: str) -> AnnotationQuerySet:
        """Annotations whose label_keys hold `key` (SQLite has no JSON containment: filtered in Python)."""
        if connection.features.supports_json_field_contains:
            return self.filter(label_keys__contains=[key])
        return self.filter(id__in=[pk for pk, keys in self.values_list("id", "label_keys").iterator() if key in keys])

    def labelled_ids(self) -> np.ndarray:
        """Sorted ids of the examples these annotations label."""
        ids = self.values_list("example_id", flat=True).distinct()
        return np.unique(np.fromiter(ids, dtype=np.int64))

    def labelled_count(self) -> int:
        """How many distinct examples these annotations label."""
        return self.values("example").distinct().count()

    def latest_label_keys(self) -> dict[int, list[str]]:
        """Each example's latest annotation's label keys (the newest answer wins)."""
        latest: dict[int, list[str]] = {}
        rows = self.order_by("example_id", "-created_at", "-id").values_list("example_id", "label_keys")
        for example_id, keys in rows.iterator(chunk_size=10000):
            latest.setdefault(example_id, keys)
        return latest

    def examples_whose_latest_label_has(self, key: str) -> list[int]:
        return [example_id for example_id, keys in self.latest_label_keys().items() if key in keys]


class Annotation(models.Model):
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                  related_name="annotations")
    taxonomy_version = models.ForeignKey(TaxonomyVersion, on_delete=models.CASCADE, related_name="annotations")
    # Stable label keys (Label.key), so a rename never touches annotations.
    label_keys = models.JSONField(default=list)
    # Span projects only: [{"start": int, "end": int, "label": key}, ...], character offsets on token
    # boundaries (Example.tokens), sorted by start, never overlapping. `label_keys` then holds the sorted
    # distinct keys of these spans, so label queries (counts, merges, with_label) work for both task types.
    # An empty list with a span-project annotation means "looked at: no entity here".
    spans = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=8, choices=AnnotationSource.choices, default=AnnotationSource.UI)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AnnotationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # One answer per person, item and taxonomy version (a second submit replaces the first: the
        # insert says ON CONFLICT DO NOTHING and then updates). Partial unique indexes, which SQLite and
        # every PostgreSQL create, where NULLS NOT DISTINCT was silently left out on SQLite (the first
        # look) and on PostgreSQL before 15, so there a second submit added a duplicate answer. Rows
        # without an annotator: an import without a user (one per item and version, so a re-import adds
        # nothing), and the answers of people since deleted, which stay as they were (several deleted
        # annotators' answers on one item no longer block deleting the second of them).
        constraints = [
            models.UniqueConstraint(
                fields=["example", "annotator", "taxonomy_version"],
                condition=models.Q(annotator__isnull=False),
                name="one_annotation_per_annotator_per_example_per_version",
            ),
            models.UniqueConstraint(
                fields=["example", "taxonomy_version"],
                condition=models.Q(annotator__isnull=True, source=AnnotationSource.IMPORT),
                name="one_unattributed_import_per_example_per_version",
            ),
        ]
        indexes = [models.Index(fields=["example", "-created_at"], name="annotation_example_recent")]

    def __str__(self) -> str:
        return f"{self.example_id}: {', '.join(self.label_keys)}"


class AssignmentStatus(models.TextChoices):
    LEASED = "leased", "Leased"
    SUBMITTED = "submitted", "Submitted"
    SKIPPED = "skipped", "Skipped"


class Assignment(models.Model):
    """One item served to one annotator: a lease until it is submitted, skipped or expires.

    The queue's guarantee lives in two unique constraints, not in code: an item
    has at most `project.overlap` numbered slots, so two annotators claiming at
    once cannot both get slot 0; and an annotator is served an item once. A
    manager picking an item by hand gets a lease without a slot, which takes
    nothing from the queue. Skipping gives the slot back (slot becomes NULL).
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    slot = models.PositiveSmallIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=AssignmentStatus.choices, default=AssignmentStatus.LEASED)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["example", "slot"], name="one_annotator_per_item_slot"),
            models.UniqueConstraint(fields=["example", "annotator"], name="item_served_once_per_annotator"),
        ]
        indexes = [
            models.Index(fields=["project", "annotator", "status"], name="assignment_annotator"),
            models.Index(fields=["project", "expires_at"], condition=models.Q(status="leased"),
                         name="assignment_open_leases"),
        ]

    def __str__(self) -> str:
        return f"{self.example_id} → {self.annotator_id} ({self.status})"

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or timezone.now())


class RelabelQuerySet(models.QuerySet["Relabel"]):
    def open(self) -> RelabelQuerySet:
        return self.filter(done_at__isnull=True)


class Relabel(models.Model):
    """An example whose label must be given again, e.g. because its label was split in two."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="relabels")
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="relabels")
    reason = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now)
    # A lease on the row itself: claimed with SELECT … FOR UPDATE SKIP LOCKED.
    leased_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    done_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")

    objects = RelabelQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["example"], condition=models.Q(done_at__isnull=True),
                                    name="one_open_relabel_per_example"),
        ]
        indexes = [models.Index(fields=["project", "created_at"], condition=models.Q(done_at__isnull=True),
                                name="relabel_open")]


class Comment(models.Model):
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    body = models.TextField(max_length=5000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["example", "created_at"], name="comment_example")]


class FlagQuerySet(models.QuerySet["Flag"]):
    def open(self) -> FlagQuerySet:
        return self.filter(resolved_at__isnull=True)

    def in_project(self, project: Project | int) -> FlagQuerySet:
        return self.filter(example__project=project)


class Flag(models.Model):
    """An annotator's 'something is wrong with this item', until a manager resolves it."""

    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="flags")
    raised_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    resolution = models.CharField(max_length=500, blank=True)

    objects = FlagQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["example"], condition=models.Q(resolved_at__isnull=True),
                                name="flag_open")]

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None

    def resolve(self, *, user: object, resolution: str) -> None:
        self.resolved_at = timezone.now()
        self.resolved_by = user  # type: ignore[assignment]
        self.resolution = resolution
        self.save(update_fields=["resolved_at", "resolved_by", "resolution"])


class ExampleScore(models.Model):
    """The queue's order for one example and the model's suggestion for it.

    The learning loop writes these rows (priority from the acquisition strategy,
    the prediction and its confidence); the queue reads them. They live here, in
    the annotation layer, because the queue owns its order.
    """

    example = models.OneToOneField(Example, primary_key=True, on_delete=models.CASCADE, related_name="score")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    # Which model version wrote the prediction (null for seed rows, before any model).
    model_version_number = models.PositiveIntegerField(null=True, blank=True)
    predicted_keys = models.JSONField(default=list)
    confidence = models.FloatField(null=True)
    score = models.FloatField(default=0.0, help_text="The strategy's acquisition score (uncertainty).")
    # Queue order, higher first. Differs from `score` where a batch is spread
    # for diversity or where the cold-start seed ranks items before any model.
    priority = models.FloatField(default=0.0)
    is_seed = models.BooleanField(default=False)
    # Sent to a person by the prediction API's fallback: served before anything else.
    # Not rewritten by a retrain (it is absent from the upsert's update fields).
    is_routed = models.BooleanField(default=False)
    # Span projects: the model's suggested spans, [{"start", "end", "label", "confidence"}, ...] (char
    # offsets on token boundaries); the labelling page shows them dashed. Empty for classification.
    suggested_spans = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "learning_examplescore"
        indexes = [
            models.Index(fields=["project", "-priority"], name="example_score_queue"),
            # The annotation queue walks this index: routed items, then the seed, then by priority.
            models.Index(fields=["project", "-is_routed", "-is_seed", "-priority"], name="example_score_serve_order"),
        ]


# The Examples page's states: what a manager filters the project's items by.
BROWSE_STATES = ("unlabelled", "labelled", "flagged", "uncertain")

# Examples whose metadata has a top-level value containing the pattern (nested values are matched as
# their JSON text). One semi-join per database, both with an index-free scan of the project's rows.
_METADATA_MATCH = {
    "postgresql": ("SELECT e.id FROM projects_example e, jsonb_each_text(e.metadata) kv"
                   " WHERE e.project_id = %s AND kv.value ILIKE %s ESCAPE '\\'"),
    "sqlite": ("SELECT e.id FROM projects_example e, json_each(e.metadata) kv"
               " WHERE e.project_id = %s AND CAST(kv.value AS TEXT) LIKE %s ESCAPE '\\'"),
}


def _like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_examples(examples: QuerySet[Example], project: Project, query: str) -> QuerySet[Example]:
    """Examples whose text or a metadata value contains `query` (any case), or whose external id is `query`."""
    query = query.strip()
    if not query:
        return examples
    match = Q(text__icontains=query) | Q(external_id=query)
    sql = _METADATA_MATCH.get(connection.vendor)
    if sql is not None:
        match |= Q(pk__in=RawSQL(sql, [project.pk, _like_pattern(query)]))
    return examples.filter(match)


def browse_examples(project: Project, *, query: str = "", state: str = "", label_key: str = "",
                    dataset_id: int | None = None) -> QuerySet[Example]:
    """The project's examples for the Examples page: searched (text, metadata values, external id), filtered by
    state, given label or dataset, in a stable order (the least confident prediction first for "uncertain"),
    each with `is_labelled` and `is_flagged`."""
    examples = search_examples(Example.objects.in_project(project), project, query).annotate(
        is_labelled=Exists(Annotation.objects.filter(example=OuterRef("pk"))),
        is_flagged=Exists(Flag.objects.filter(example=OuterRef("pk"), resolved_at__isnull=True)),
    )
    if state == "unlabelled":
        examples = examples.filter(is_labelled=False)
    elif state == "labelled":
        examples = examples.filter(is_labelled=True)
    elif state == "flagged":
        examples = examples.filter(is_flagged=True)
    if label_key:
        examples = examples.filter(
            pk__in=Annotation.objects.in_project(project).with_label(label_key).values("example_id"))
    if dataset_id is not None:
        examples = examples.filter(dataset_id=dataset_id)
    if state == "uncertain":
        return examples.filter(score__model_version_number__isnull=False).order_by("score__confidence", "id")
    return examples.order_by("id")


class ReviewKind(models.TextChoices):
    MISLABEL = "mislabel", "Likely mislabel"
    LOW_PRECISION = "low_precision", "Low-precision class"
    AMBIGUOUS = "ambiguous", "Ambiguous item"
    CONFLICT = "conflict", "Annotator conflict"


class ReviewCandidate(models.Model):
    """An item the data-quality review puts before a person: written by the learning loop (from
    out-of-fold probabilities, BALD and entropy, or annotator disagreement), read by the review queue.

    Lives in the annotation layer for the same reason as ExampleScore: the queue owns it. A decision
    (ReviewDecision) or a new annotation of the example removes the candidate.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="review_candidates")
    kind = models.CharField(max_length=16, choices=ReviewKind.choices)
    # Rank within the kind, higher first (e.g. how confidently the model contradicts the given label).
    score = models.FloatField(default=0.0)
    given_keys = models.JSONField(default=list)
    model_keys = models.JSONField(default=list)
    model_confidence = models.FloatField(null=True, blank=True)
    # Why it was flagged, in words a reviewer reads ("the model gives 'refund' 0.93; the threshold for
    # 'billing' is 0.61").
    reason = models.CharField(max_length=500, blank=True)
    # Span projects: the spans in question ({"start", "end", "label", "model_label", "confidence", "problem"}:
    # learning.span_mislabels; "label" None for a missed entity, "model_label" None for "not an entity").
    spans = models.JSONField(default=list, blank=True)
    model_version_number = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-score", "id"]
        constraints = [
            models.UniqueConstraint(fields=["example", "kind"], name="one_review_candidate_per_example_per_kind"),
        ]
        indexes = [models.Index(fields=["project", "kind", "-score"], name="review_candidate_queue")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.example_id}"


class ReviewAction(models.TextChoices):
    KEEP = "keep", "Kept the label"
    CHANGE = "change", "Changed the label"
    RELABEL = "relabel", "Sent back for relabelling"
    COMMENT = "comment", "Opened a discussion"
    ADJUDICATE = "adjudicate", "Chose the final label"


class ReviewDecision(models.Model):
    """Every decision taken in the review queue or on the adjudication page: who, when, what was
    there before and what is there now. Append-only: the audit trail of data-quality work."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="review_decisions")
    kind = models.CharField(max_length=16, choices=ReviewKind.choices)
    action = models.CharField(max_length=16, choices=ReviewAction.choices)
    previous_keys = models.JSONField(default=list)
    new_keys = models.JSONField(default=list)
    # Span projects: the spans before and after ([{"start", "end", "label"}], Annotation.spans' shape).
    previous_spans = models.JSONField(default=list, blank=True)
    new_spans = models.JSONField(default=list, blank=True)
    note = models.TextField(blank=True, max_length=5000)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    decided_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-decided_at", "-id"]
        indexes = [models.Index(fields=["project", "-decided_at"], name="review_decision_recent")]

    def __str__(self) -> str:
        return f"{self.action} {self.example_id}: {self.previous_keys} → {self.new_keys}"


class Adjudication(models.Model):
    """The final label of an item several people labelled, chosen by a manager (or reviewer).

    The training target of an example with several annotations is: its adjudication first, else the
    unanimous label, else the majority; an unresolved tie is left out of training and shown as a conflict.
    """

    example = models.OneToOneField(Example, primary_key=True, on_delete=models.CASCADE, related_name="adjudication")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    taxonomy_version = models.ForeignKey(TaxonomyVersion, on_delete=models.CASCADE, related_name="+")
    label_keys = models.JSONField(default=list)
    # Span projects: the adjudicated spans, in Annotation.spans' shape.
    spans = models.JSONField(default=list, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    decided_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["project", "-decided_at"], name="adjudication_recent")]

    def __str__(self) -> str:
        return f"{self.example_id}: {', '.join(self.label_keys)}"
