"""Which label an item is trained on when several people labelled it, and the manager's final say.

The training target rule (README, "Agreement and adjudication"), per example:

1. its **adjudicated** label (an `Adjudication` row: a manager chose it), else
2. the **unanimous** label, when every annotator gave the same label set (one annotator: that answer), else
3. the **majority** label: the label set more annotators gave than any other, else
4. nothing: an unresolved **tie** is left out of training and listed as a conflict on the adjudication page.

Each annotator counts once, with their newest answer; answers imported without an annotator count as one
more annotator. An answer that uses a label no longer active in the taxonomy (merged away, split, deprecated)
gives way to the current answers of the others, so an item re-labelled after a split is not a tie between
its old and new label. Span projects keep the newest answer (spans are not voted on) unless adjudicated.

The learning loop reads `training_targets`; the adjudication page and the API read `conflicts` and
write through `adjudicate`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from annotation import actions, events
from annotation.models import Adjudication, Annotation, ReviewAction, ReviewCandidate, ReviewDecision, ReviewKind
from labelhub.errors import ActionError
from projects.models import Example, Project

Keys = tuple[str, ...]

ADJUDICATED, UNANIMOUS, MAJORITY, TIE = "adjudicated", "unanimous", "majority", "tie"


@dataclass(frozen=True)
class Resolution:
    keys: Keys | None  # the training target; None for a tie
    rule: str  # ADJUDICATED, UNANIMOUS, MAJORITY or TIE
    votes: int  # annotators whose answers counted
    support: int  # of those, how many gave `keys` (0 for a tie or an adjudication)


def resolve(answers: Iterable[Keys], *, active: set[str] | None = None, adjudicated: Keys | None = None
            ) -> Resolution:
    """The training target of one item from its annotators' answers (one per annotator), by the rule above."""
    votes = [tuple(sorted(keys)) for keys in answers]
    if adjudicated is not None:
        return Resolution(tuple(adjudicated), ADJUDICATED, len(votes), 0)
    if active is not None:
        current = [keys for keys in votes if all(k in active for k in keys)]
        if current:
            votes = current
    tally = Counter(votes).most_common()
    if not tally:
        return Resolution(None, TIE, 0, 0)
    (top, n), rest = tally[0], tally[1:]
    if not rest:
        return Resolution(top, UNANIMOUS, len(votes), n)
    if rest[0][1] < n:
        return Resolution(top, MAJORITY, len(votes), n)
    return Resolution(None, TIE, len(votes), n)


@dataclass
class Answer:
    annotator_id: int | None
    username: str
    keys: Keys
    created_at: datetime
    shown: list[dict[str, Any]] = field(default_factory=list)  # the labels as a page shows them


@dataclass
class TrainingTargets:
    """Each example's training target (label keys; span projects also spans), and the ties left out."""

    keys: dict[int, list[str]] = field(default_factory=dict)
    spans: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    conflicts: list[int] = field(default_factory=list)  # tied, unadjudicated: not trained on
    rules: Counter[str] = field(default_factory=Counter)


def newest_answers(project: Project, example_ids: Iterable[int] | None = None, *, with_names: bool = False,
                    with_spans: bool = False) -> dict[int, dict[int | None, tuple[Answer, list[Any]]]]:
    """Per example, each annotator's newest answer (imports without an annotator count as one annotator)."""
    rows = Annotation.objects.in_project(project)
    if example_ids is not None:
        rows = rows.filter(example_id__in=list(example_ids))
    fields = ["example_id", "annotator_id", "label_keys", "created_at"]
    fields += ["annotator__username"] if with_names else []
    fields += ["spans"] if with_spans else []
    out: dict[int, dict[int | None, tuple[Answer, list[Any]]]] = {}
    for row in (rows.order_by("example_id", "annotator_id", "-created_at", "-id").values_list(*fields)
                .iterator(chunk_size=10000)):
        example_id, annotator_id, keys, created_at = row[:4]
        name = (row[4] or "imported") if with_names else ""
        spans = row[-1] if with_spans else []
        by_annotator = out.setdefault(example_id, {})
        if annotator_id not in by_annotator:
            by_annotator[annotator_id] = (Answer(annotator_id, name, tuple(sorted(keys)), created_at), spans)
    return out


def _active_keys(project: Project) -> set[str]:
    return set(project.current_taxonomy().active_labels().values_list("key", flat=True))


def training_targets(project: Project) -> TrainingTargets:
    """Every labelled example's training target by the module's rule; ties go to `conflicts`, not to `keys`."""
    targets = TrainingTargets()
    adjudicated = {example_id: (keys, spans) for example_id, keys, spans in
                   Adjudication.objects.filter(project=project).values_list("example_id", "label_keys", "spans")}
    if project.is_span:
        # Spans are not voted on: the newest answer, unless a manager adjudicated.
        rows = (Annotation.objects.in_project(project).order_by("example_id", "-created_at", "-id")
                .values_list("example_id", "label_keys", "spans"))
        for example_id, keys, spans in rows.iterator(chunk_size=10000):
            if example_id in targets.keys:
                continue
            if example_id in adjudicated:
                keys, spans = adjudicated[example_id]
                targets.rules[ADJUDICATED] += 1
            targets.keys[example_id] = list(keys)
            targets.spans[example_id] = list(spans)
        return targets
    active = _active_keys(project)
    for example_id, by_annotator in newest_answers(project).items():
        answers = [answer.keys for answer, _ in by_annotator.values()]
        final = adjudicated.get(example_id)
        result = resolve(answers, active=active, adjudicated=tuple(final[0]) if final is not None else None)
        targets.rules[result.rule if len(answers) > 1 or result.rule == ADJUDICATED else "single"] += 1
        if result.keys is None:
            targets.conflicts.append(example_id)
        else:
            targets.keys[example_id] = list(result.keys)
    return targets


# --- The adjudication page's list -----------------------------------------------------------------------------------


@dataclass
class Conflict:
    example: Example
    answers: list[Answer]
    resolution: Resolution
    majority: list[dict[str, Any]] = field(default_factory=list)  # the training target as a page shows it

    @property
    def is_tie(self) -> bool:
        return self.resolution.keys is None


def _multi_annotated(project: Project) -> Any:
    return (Annotation.objects.in_project(project).values("example_id")
            .annotate(n=Count("annotator", distinct=True)).filter(n__gte=2).values("example_id"))


def conflicts(project: Project, *, limit: int | None = None) -> list[Conflict]:
    """Items whose annotators disagree and that no manager adjudicated: ties first (they are out of training
    until someone decides), then majority decisions (trained on, but worth a look), oldest item first."""
    candidate_ids = (Example.objects.filter(project=project, pk__in=_multi_annotated(project))
                     .filter(adjudication__isnull=True).values_list("pk", flat=True))
    answers = newest_answers(project, candidate_ids, with_names=True)
    active = _active_keys(project)
    found: list[tuple[int, Resolution, list[Answer]]] = []
    for example_id, by_annotator in answers.items():
        given = [answer for answer, _ in by_annotator.values()]
        if len(given) < 2 or len({answer.keys for answer in given}) < 2:
            continue
        found.append((example_id, resolve([a.keys for a in given], active=active), given))
    found.sort(key=lambda row: (row[1].keys is not None, row[0]))
    if limit is not None:
        found = found[:limit]
    examples = Example.objects.in_bulk([row[0] for row in found])
    return [Conflict(examples[example_id], sorted(given, key=lambda a: a.username), resolution)
            for example_id, resolution, given in found if example_id in examples]


def conflict_counts(project: Project) -> dict[str, int]:
    """{'open': disagreeing unadjudicated items, 'ties': those of them left out of training}."""
    found = conflicts(project)
    return {"open": len(found), "ties": sum(1 for c in found if c.is_tie)}


# --- The manager's decision -----------------------------------------------------------------------------------------


@transaction.atomic
def adjudicate(project: Project, *, example_id: int, user: Any, label_keys: list[str], note: str = "",
               taxonomy_number: int | None = None) -> Adjudication:
    """Record the final label of an item several people labelled (an Adjudication and a ReviewDecision)."""
    if project.is_span:
        raise ActionError("Span projects are not adjudicated on this page yet: correct the spans in the review "
                          "queue instead.")
    example = Example.objects.select_for_update().filter(project=project, pk=example_id).first()
    if example is None:
        raise ActionError(f"Item {example_id} is not in this project.", status=404)
    note = note.strip()
    if len(note) > 5000:
        raise ActionError(f"The note has {len(note):,} characters; the limit is 5,000.")
    by_annotator = newest_answers(project, [example.pk]).get(example.pk, {})
    if len(by_annotator) < 2:
        raise ActionError("Only one person labelled this item, so there is nothing to adjudicate; change its label "
                          "in the review queue or on the Examples page.")
    taxonomy = project.current_taxonomy()
    keys = actions.check_label_keys(project, taxonomy, list(label_keys), taxonomy_number)
    keys = sorted(keys)
    existing = Adjudication.objects.filter(example=example).first()
    previous = (list(existing.label_keys) if existing is not None else
                list(resolve([a.keys for a, _ in by_annotator.values()], active=_active_keys(project)).keys or []))
    now = timezone.now()
    adjudication, _ = Adjudication.objects.update_or_create(
        example=example, defaults={"project": project, "taxonomy_version": taxonomy, "label_keys": keys,
                                   "decided_by": user, "decided_at": now})
    ReviewDecision.objects.create(project=project, example=example, kind=ReviewKind.CONFLICT,
                                  action=ReviewAction.ADJUDICATE, previous_keys=previous, new_keys=keys, note=note,
                                  decided_by=user, decided_at=now)
    ReviewCandidate.objects.filter(example=example, kind=ReviewKind.CONFLICT).delete()
    example_ids = [example.pk]
    # The model retrains on the new target (the learning layer listens), once this is committed.
    transaction.on_commit(lambda: events.labels_given.send(sender=Annotation, project=project,
                                                           example_ids=example_ids, counted=False))
    return adjudication
