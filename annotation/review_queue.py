"""The data-quality review queue: the model's candidates (likely mislabels, low-precision classes, ambiguous
items) as a person works them, and every decision taken on them.

The learning layer writes the candidates (``learning.review_candidates``); this module reads them and
records decisions. A candidate is hidden as soon as its example gets a newer annotation or a decision
(other than a comment) newer than the candidate: the queue never shows an item someone already dealt
with, even when the label came by a path that announces nothing (an import). A decision also deletes the
example's candidates. A correction is an annotation by the reviewer, announced like a submit on the
labelling page, so the model retrains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from annotation import actions, adjudication, events
from annotation.models import (
    Adjudication,
    Annotation,
    AnnotationSource,
    Comment,
    ExampleScore,
    Relabel,
    ReviewAction,
    ReviewCandidate,
    ReviewDecision,
    ReviewKind,
)
from annotation.stats import label_display, labels_by_key
from labelhub.errors import ActionError, ConflictError
from projects.models import Example, Project

# The queue's tabs in order: the model's three kinds (conflicts live on the adjudication page).
QUEUE_KINDS: tuple[str, ...] = (ReviewKind.MISLABEL, ReviewKind.LOW_PRECISION, ReviewKind.AMBIGUOUS)
# Decisions that settle an item (a comment opens a discussion and leaves it in the queue).
SETTLING = (ReviewAction.KEEP, ReviewAction.CHANGE, ReviewAction.RELABEL)
DECISION_ACTIONS = (ReviewAction.KEEP, ReviewAction.CHANGE, ReviewAction.RELABEL, ReviewAction.COMMENT)


def open_candidates(project: Project, kind: str | None = None) -> QuerySet[ReviewCandidate]:
    """The candidates still to review, best first: none whose example was labelled or decided on since."""
    candidates = ReviewCandidate.objects.filter(project=project)
    if kind is not None:
        candidates = candidates.filter(kind=kind)
    newer_label = Annotation.objects.filter(example=OuterRef("example_id"), created_at__gt=OuterRef("created_at"))
    newer_decision = ReviewDecision.objects.filter(example=OuterRef("example_id"), action__in=SETTLING,
                                                   decided_at__gt=OuterRef("created_at"))
    return (candidates.exclude(Exists(newer_label)).exclude(Exists(newer_decision))
            .order_by("-score", "id"))


def counts(project: Project) -> dict[str, int]:
    """Open candidates per kind (every kind of ``ReviewKind``, zeros included)."""
    found = dict(open_candidates(project).order_by().values("kind").annotate(n=Count("id")).values_list("kind", "n"))
    return {kind: int(found.get(kind, 0)) for kind in ReviewKind.values}


def with_items(candidates: QuerySet[ReviewCandidate]) -> QuerySet[ReviewCandidate]:
    """What a queue row shows, read in a fixed number of queries: the example, its annotations (who gave which
    labels, newest first) and its comments."""
    return candidates.select_related("example").prefetch_related(
        Prefetch("example__annotations",
                 queryset=Annotation.objects.select_related("annotator").order_by("-created_at", "-id")),
        Prefetch("example__comments", queryset=Comment.objects.select_related("author")),
    )


@dataclass
class Row:
    """One queue item as the page and the API show it."""

    candidate: ReviewCandidate
    given: list[dict[str, Any]]  # [{"annotator", "labels": [label_display], "created_at", "source"}], newest first
    current_keys: list[str]  # the latest annotation's keys (what a decision changes)
    model: list[dict[str, Any]]  # label_display of the model's labels

    @property
    def example(self) -> Example:
        return self.candidate.example


def rows(project: Project, candidates: list[ReviewCandidate]) -> list[Row]:
    """Queue rows with the labels as they read now (renamed, deprecated or removed ones said so)."""
    taxonomy = project.current_taxonomy()
    keys: set[str] = set()
    for candidate in candidates:
        keys.update(candidate.model_keys)
        for annotation in candidate.example.annotations.all():
            keys.update(annotation.label_keys)
    labels = labels_by_key(project, taxonomy, also=keys)
    out = []
    for candidate in candidates:
        annotations = list(candidate.example.annotations.all())
        given = [{"annotator": a.annotator.get_username() if a.annotator else "someone",
                  "labels": [label_display(labels.get(k), k) for k in a.label_keys],
                  "created_at": a.created_at, "source": a.get_source_display()} for a in annotations]
        out.append(Row(candidate=candidate, given=given,
                       current_keys=list(annotations[0].label_keys) if annotations else [],
                       model=[label_display(labels.get(k), k) for k in candidate.model_keys]))
    return out


def _latest_keys(example: Example) -> list[str]:
    """The label a decision changes: the adjudicated one where there is one, else the newest annotation's."""
    final = Adjudication.objects.filter(example=example).values_list("label_keys", flat=True).first()
    if final is not None:
        return list(final)
    latest = Annotation.objects.filter(example=example).order_by("-created_at", "-id").first()
    return list(latest.label_keys) if latest is not None else []


_UNQUEUE = f"DELETE FROM {ExampleScore._meta.db_table} WHERE example_id = %s"


def _correct(project: Project, example: Example, *, user: Any, keys: list[str], now: Any) -> None:
    """The reviewer's label becomes an annotation (theirs, newest: the training target), and the final label
    where several people labelled the item."""
    taxonomy = project.current_taxonomy()
    Annotation.objects.update_or_create(
        example=example, annotator=user, taxonomy_version=taxonomy,
        defaults={"label_keys": keys, "created_at": now, "source": AnnotationSource.UI})
    if Annotation.objects.filter(example=example).values("annotator").distinct().count() > 1:
        # With several answers the training target is the adjudicated label: the reviewer's decision is it.
        Adjudication.objects.update_or_create(
            example=example, defaults={"project": project, "taxonomy_version": taxonomy, "label_keys": keys,
                                       "decided_by": user, "decided_at": now})
    with connection.cursor() as cursor:
        # Labelled now: out of the annotation queue at once rather than at the next retrain.
        cursor.execute(_UNQUEUE, [example.pk])
    example_ids = [example.pk]
    # Like a submit on the labelling page: the learning layer retrains, the header counts again.
    transaction.on_commit(lambda: events.labels_given.send(
        sender=Annotation, project=project, example_ids=example_ids, counted=False))


@transaction.atomic
def decide(project: Project, candidate_id: int, *, user: Any, action: str, label_keys: list[str] | None = None,
           note: str = "", taxonomy_number: int | None = None) -> ReviewDecision:
    """Record a reviewer's decision on a candidate: keep the label, change it (a new annotation by the
    reviewer; the model retrains), send the item back for relabelling, or comment (the item stays).

    Raises ActionError on bad input and ConflictError when the candidate is gone (someone decided first,
    or the item was labelled meanwhile)."""
    if action not in DECISION_ACTIONS:
        raise ActionError(f"Unknown decision “{action}”: choose keep, change, relabel or comment.")
    candidate = (open_candidates(project).select_for_update(of=("self",)).select_related("example")
                 .filter(pk=candidate_id).first())
    if candidate is None:
        raise ConflictError("This item is no longer in the review queue: someone decided on it or labelled it "
                            "a moment ago. The list is up to date now.")
    example = candidate.example
    previous = _latest_keys(example)
    note = note.strip()
    if len(note) > 5000:
        raise ActionError(f"The note has {len(note):,} characters; the limit is 5,000.")
    now = timezone.now()
    new = previous
    if action == ReviewAction.CHANGE:
        taxonomy = project.current_taxonomy()
        new = actions.check_label_keys(project, taxonomy, list(label_keys or []), taxonomy_number)
        if sorted(new) == sorted(previous):
            action = ReviewAction.KEEP
        else:
            _correct(project, example, user=user, keys=new, now=now)
    elif action == ReviewAction.RELABEL:
        reason = f"Review ({ReviewKind(candidate.kind).label.lower()}): {note or candidate.reason}"
        Relabel.objects.get_or_create(project=project, example=example, done_at=None,
                                      defaults={"reason": reason[:300]})
    elif action == ReviewAction.COMMENT:
        actions.add_comment(example, user=user, body=note)
    decision = ReviewDecision.objects.create(
        project=project, example=example, kind=candidate.kind, action=action, previous_keys=previous,
        new_keys=new, note=note, decided_by=user, decided_at=now)
    if action in SETTLING:
        ReviewCandidate.objects.filter(example=example).delete()
    return decision


def conflict_count(project: Project) -> int:
    """Items several people labelled differently that nobody adjudicated yet: the adjudication page's list."""
    return adjudication.conflict_counts(project)["open"]
