"""What a manager does to many examples at once from the Examples page: delete them, send them back for
re-labelling, label them; and delete a dataset with its examples.

Each action takes the selection as a queryset of the project's examples and the count the manager
confirmed (`expected`): if the selection no longer holds that many (someone labelled, imported or
deleted meanwhile), nothing changes and the manager is asked to confirm again. Each runs in one
transaction: all of it happens or none.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from annotation import events
from annotation.actions import check_label_keys
from annotation.models import Annotation, AnnotationSource, Comment, ExampleScore, Flag, Relabel
from labelhub.errors import ActionError, ConflictError
from projects.models import Dataset, Example, Project

# Rows deleted per statement: Django collects each batch's dependent rows (annotations,
# leases, comments, flags, queue rows) with one query per table.
DELETE_BATCH = 2000


@dataclass(frozen=True)
class Impact:
    """What a deletion takes with it: what the confirmation states."""

    examples: int
    labelled: int
    annotations: int
    annotators: int
    comments: int
    open_flags: int


def impact_of(examples: QuerySet[Example]) -> Impact:
    """How many examples, and rows that go with them, a deletion of `examples` removes."""
    ids = examples.values("pk")
    annotations = Annotation.objects.filter(example__in=ids).aggregate(
        n=Count("id"), labelled=Count("example", distinct=True), people=Count("annotator", distinct=True))
    return Impact(
        examples=examples.count(), labelled=annotations["labelled"], annotations=annotations["n"],
        annotators=annotations["people"], comments=Comment.objects.filter(example__in=ids).count(),
        open_flags=Flag.objects.filter(example__in=ids).open().count(),
    )


def _locked_ids(project: Project, examples: QuerySet[Example], expected: int | None) -> list[int]:
    """The selection's ids, the rows locked until the transaction ends; refused if its size moved."""
    ids = list(examples.filter(project=project).order_by("pk").select_for_update(of=("self",))
               .values_list("pk", flat=True))
    if not ids:
        raise ActionError("None of the selected examples is in this project (any more); nothing was changed.")
    if expected is not None and len(ids) != expected:
        raise ConflictError(f"The selection changed since you confirmed it: it now holds {len(ids):,} examples, "
                            f"not {expected:,}. Nothing was changed; look again and confirm.")
    return ids


def _delete(project: Project, ids: list[int], *, reason: str) -> None:
    for start in range(0, len(ids), DELETE_BATCH):
        Example.objects.filter(project=project, pk__in=ids[start:start + DELETE_BATCH]).delete()
    # Inside the transaction: the learning layer drops the vectors with the rows, then retrains.
    events.examples_deleted.send(sender=Example, project=project, example_ids=ids, reason=reason)


@transaction.atomic
def delete_examples(project: Project, *, examples: QuerySet[Example], expected: int | None) -> Impact:
    """Delete the selected examples with their annotations, comments, flags and queue rows."""
    ids = _locked_ids(project, examples, expected)
    impact = impact_of(Example.objects.filter(pk__in=ids))
    _delete(project, ids, reason=f"{len(ids):,} examples deleted")
    return impact


@transaction.atomic
def send_to_relabel(project: Project, *, examples: QuerySet[Example], expected: int | None, user: Any) -> int:
    """Put the selected examples in the re-review queue (served before new items); returns how many were added
    (an example already waiting there stays as it is)."""
    ids = _locked_ids(project, examples, expected)
    waiting = set(Relabel.objects.filter(example_id__in=ids).open().values_list("example_id", flat=True))
    reason = f"Sent back from the Examples page by {user.get_username()}"[:300]
    created = Relabel.objects.bulk_create(
        [Relabel(project=project, example_id=pk, reason=reason) for pk in ids if pk not in waiting])
    return len(created)


@transaction.atomic
def label_as(project: Project, *, examples: QuerySet[Example], expected: int | None, user: Any,
             label_key: str) -> int:
    """Give every selected example `label_key` as this manager's annotation (replacing their own earlier one under
    the current taxonomy); other annotators' labels stay. Returns how many examples were labelled."""
    taxonomy = project.current_taxonomy()
    keys = check_label_keys(project, taxonomy, [label_key], None)
    ids = _locked_ids(project, examples, expected)
    now = timezone.now()
    mine = set(Annotation.objects.filter(example_id__in=ids, annotator=user, taxonomy_version=taxonomy)
               .values_list("example_id", flat=True))
    Annotation.objects.filter(example_id__in=mine, annotator=user, taxonomy_version=taxonomy).update(
        label_keys=keys, created_at=now)
    Annotation.objects.bulk_create(
        [Annotation(example_id=pk, annotator=user, taxonomy_version=taxonomy, label_keys=keys,
                    source=AnnotationSource.UI, created_at=now) for pk in ids if pk not in mine])
    # Answered now: their re-review is done and they leave the queue, as after a submit.
    Relabel.objects.filter(example_id__in=ids).open().update(done_at=now, done_by=user)
    answered = _fully_answered(project, ids)
    ExampleScore.objects.filter(example_id__in=answered).delete()
    transaction.on_commit(
        lambda: events.labels_given.send(sender=Annotation, project=project, example_ids=ids))
    return len(ids)


def _fully_answered(project: Project, ids: Iterable[int]) -> list[int]:
    if project.overlap == 1:
        return list(ids)
    return list(Annotation.objects.filter(example_id__in=list(ids)).values("example_id")
                .annotate(n=Count("id")).filter(n__gte=project.overlap).values_list("example_id", flat=True))


@transaction.atomic
def delete_dataset(project: Project, *, dataset: Dataset, expected: int | None) -> Impact:
    """Delete an import batch, its examples and everything attached to them, and its uploaded file."""
    locked = Dataset.objects.select_for_update().filter(pk=dataset.pk, project=project).first()
    if locked is None:
        raise ConflictError("This dataset was already deleted.")
    if locked.is_running:
        raise ConflictError(f"“{locked.name}” is still being imported ({locked.get_status_display().lower()}); "
                            "delete it once the import has ended.")
    examples = Example.objects.filter(project=project, dataset=locked)
    ids = list(examples.order_by("pk").select_for_update(of=("self",)).values_list("pk", flat=True))
    if expected is not None and len(ids) != expected:
        raise ConflictError(f"“{locked.name}” now has {len(ids):,} examples, not {expected:,}. Nothing was deleted; "
                            "look again and confirm.")
    impact = impact_of(Example.objects.filter(pk__in=ids))
    if ids:
        _delete(project, ids, reason=f"dataset “{locked.name}” deleted")
    storage, name = locked.file.storage, locked.file.name
    locked.delete()
    if name:
        # The file goes only once the rows are gone for good.
        transaction.on_commit(lambda: storage.delete(name))
    return impact
