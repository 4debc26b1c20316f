"""The annotation queue and what annotators do to items: submit, skip, undo, flag, comment.

How the queue stays correct with many annotators (and many web processes):
- An item is claimed by INSERTing an `Assignment` for one of its numbered slots
  (`0 … project.overlap-1`). The unique constraint on (example, slot) makes the
  database, not this code, refuse a second claim of the same slot: of two
  annotators racing for an item, one insert wins and the other does nothing and
  moves on to the next candidate. No lock is held between requests.
- The candidate order is the learning loop's: items routed by the prediction
  API, then the cold-start seed, then by acquisition priority (`ExampleScore`).
  Items without a score yet (no embeddings) come after, oldest first.
- A lease lasts `LEASE_SECONDS`. Expired leases are deleted before a claim, so an
  abandoned item goes back to the queue; its late submission is still accepted
  if nobody else has taken the item meanwhile.
- Re-review items (a label was split) are rows of `Relabel`, claimed with
  SELECT … FOR UPDATE SKIP LOCKED on the row that holds the lease itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from annotation import events, progress
from annotation.models import (
    Annotation,
    AnnotationSource,
    Assignment,
    AssignmentStatus,
    Comment,
    ExampleScore,
    Flag,
    Relabel,
)
from labelhub.errors import ActionError
from projects import spanformats
from projects.models import Example, Project, TaxonomyVersion

logger = logging.getLogger(__name__)

CANDIDATES = 25
UNDO_WINDOW = timedelta(minutes=30)


@dataclass
class Item:
    """What the labelling page shows: an example and the lease (or re-review) it is served under."""

    example: Example
    assignment: Assignment | None = None
    relabel: Relabel | None = None

    @property
    def ticket(self) -> str:
        if self.relabel is not None:
            return f"r{self.relabel.pk}"
        assert self.assignment is not None
        return f"a{self.assignment.pk}"


def _lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.LEASE_SECONDS)


# --- Serving items ----------------------------------------------------------------------------------------------


def next_item(project: Project, *, user: Any) -> Item | None:
    """The item this annotator should label now: their open lease, else a re-review, else a new claim.

    Only queue leases are resumed: an item a manager opened by hand (``pick``, no slot) is answered from
    the page it was opened on or not at all. Resuming those served every item a manager had looked at
    from the Examples page back to them, one by one, labelled or not, before the queue's own items.
    """
    now = timezone.now()
    # One round trip for the two questions asked before every claim (plain SQL: this runs for every item).
    with connection.cursor() as cursor:
        cursor.execute(_MINE_AND_RELABELS, {"project": project.pk, "user": user.pk})
        mine_id, relabels_open = cursor.fetchone()
    if mine_id is not None:
        mine = Assignment.objects.select_related("example").get(pk=mine_id)
        if mine.is_expired(now):
            # Still theirs (nobody took it): extend rather than make them lose their place.
            Assignment.objects.filter(pk=mine.pk).update(expires_at=_lease_until())
        return Item(example=mine.example, assignment=mine)
    if relabels_open:
        relabel = _open_relabel_of(project, user) or _claim_relabel(project, user)
        if relabel is not None:
            return Item(example=relabel.example, relabel=relabel)
    assignment = claim(project, user=user)
    return Item(example=assignment.example, assignment=assignment) if assignment else None


_MINE_AND_RELABELS = f"""
SELECT (SELECT id FROM {Assignment._meta.db_table} WHERE project_id = %(project)s AND annotator_id = %(user)s
        AND status = 'leased' AND slot IS NOT NULL ORDER BY leased_at, id LIMIT 1),
       (SELECT 1 FROM {Relabel._meta.db_table} WHERE project_id = %(project)s AND done_at IS NULL LIMIT 1)
"""


def _open_relabel_of(project: Project, user: Any) -> Relabel | None:
    return (Relabel.objects.filter(project=project, leased_by=user, done_at__isnull=True,
                                   lease_expires_at__gt=timezone.now())
            .select_related("example").first())


def _claim_relabel(project: Project, user: Any) -> Relabel | None:
    now = timezone.now()
    with transaction.atomic():
        from django.db.models import Q

        relabel = (Relabel.objects.select_for_update(skip_locked=True)
                   .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now),
                           project=project, done_at__isnull=True)
                   .order_by("created_at", "id").first())
        if relabel is None:
            return None
        relabel.leased_by = user
        relabel.lease_expires_at = _lease_until()
        relabel.save(update_fields=["leased_by", "lease_expires_at"])
    return Relabel.objects.select_related("example").get(pk=relabel.pk)


def release_expired(project: Project) -> int:
    """Give abandoned items back to the queue (one DELETE; nothing refers to an assignment)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM annotation_assignment WHERE project_id = %s AND status = 'leased'"
                       " AND expires_at <= %s", [project.pk, timezone.now()])
        return cursor.rowcount


_AVAILABLE = """
      AND NOT EXISTS (SELECT 1 FROM annotation_assignment m
                      WHERE m.example_id = {id} AND m.annotator_id = %(user)s)
      AND NOT EXISTS (SELECT 1 FROM annotation_annotation n
                      WHERE n.example_id = {id} AND n.annotator_id = %(user)s)
      AND (SELECT count(*) FROM annotation_assignment t
           WHERE t.example_id = {id} AND t.slot IS NOT NULL) < %(overlap)s
      AND (SELECT count(*) FROM annotation_annotation n
           WHERE n.example_id = {id}) < %(overlap)s
"""

_SCORED = ("SELECT s.example_id FROM learning_examplescore s WHERE s.project_id = %(project)s"
           + _AVAILABLE.format(id="s.example_id")
           + " ORDER BY s.is_routed DESC, s.is_seed DESC, s.priority DESC LIMIT %(limit)s")

_UNSCORED = ("SELECT e.id FROM projects_example e WHERE e.project_id = %(project)s"
             " AND NOT EXISTS (SELECT 1 FROM learning_examplescore s WHERE s.example_id = e.id)"
             + _AVAILABLE.format(id="e.id")
             + " ORDER BY e.id LIMIT %(limit)s")

_SLOTS = "SELECT slot FROM annotation_assignment WHERE example_id = %s AND slot IS NOT NULL"

# Either unique constraint may refuse the row; both mean "someone got there first".
_INSERT = """
INSERT INTO annotation_assignment (project_id, example_id, annotator_id, slot, status, leased_at, expires_at)
VALUES (%s, %s, %s, %s, 'leased', %s, %s)
ON CONFLICT DO NOTHING RETURNING id
"""


def candidates(project: Project, *, user: Any, limit: int = CANDIDATES) -> list[int]:
    """Example ids this annotator could be served next, best first (without claiming them)."""
    params = {"project": project.pk, "user": user.pk, "overlap": project.overlap, "limit": limit}
    with connection.cursor() as cursor:
        cursor.execute(_SCORED, params)
        ids = [row[0] for row in cursor.fetchall()]
        if len(ids) < limit:
            params["limit"] = limit - len(ids)
            cursor.execute(_UNSCORED, params)
            ids += [row[0] for row in cursor.fetchall()]
    return ids


def claim(project: Project, *, user: Any) -> Assignment | None:
    """Lease the best available item to this annotator; None when the queue is empty for them."""
    release_expired(project)
    for _attempt in range(4):
        ids = candidates(project, user=user)
        if not ids:
            return None
        for example_id in ids:
            assignment = _try_claim(project, example_id, user)
            if assignment is not None:
                # The lease is what was just inserted; the example is read with plain SQL (every item).
                assignment.example = next(iter(Example.objects.raw(_EXAMPLE, [example_id])))
                return assignment
    # Every candidate was taken under our feet four times over: rare, and the
    # page asks again.
    return None


def _try_claim(project: Project, example_id: int, user: Any) -> Assignment | None:
    now, until = timezone.now(), _lease_until()
    slot: int | None = 0
    if project.overlap == 1:
        # Slot 0 or nothing. A lease lost in a database crash only means the item is
        # served again, so this commit need not wait for the disk (PostgreSQL).
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            cursor.execute(_INSERT, [project.pk, example_id, user.pk, 0, now, until])
            row = cursor.fetchone()
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_SLOTS, [example_id])
            taken = {row[0] for row in cursor.fetchall()}
            slot = next((s for s in range(project.overlap) if s not in taken), None)
            if slot is None:
                return None
            cursor.execute(_INSERT, [project.pk, example_id, user.pk, slot, now, until])
            row = cursor.fetchone()
    if not row:
        return None
    return Assignment.from_db(connection.alias, _ASSIGNMENT_FIELDS, [
        row[0], project.pk, example_id, user.pk, slot, AssignmentStatus.LEASED.value, now, until, None])


_ASSIGNMENT_FIELDS = ["id", "project_id", "example_id", "annotator_id", "slot", "status", "leased_at", "expires_at",
                      "finished_at"]
assert _ASSIGNMENT_FIELDS == [f.attname for f in Assignment._meta.concrete_fields]
_EXAMPLE = f"SELECT * FROM {Example._meta.db_table} WHERE id = %s"


@transaction.atomic
def pick(project: Project, *, example: Example, user: Any) -> Item:
    """A manager opens any item by hand: a lease without a queue slot, so the queue is untouched."""
    assignment, created = Assignment.objects.get_or_create(
        example=example, annotator=user,
        defaults={"project": project, "slot": None, "expires_at": _lease_until()},
    )
    if not created and assignment.status != AssignmentStatus.LEASED:
        assignment.status = AssignmentStatus.LEASED
        assignment.finished_at = None
    assignment.expires_at = _lease_until()
    assignment.save()
    return Item(example=example, assignment=assignment)


# --- Submitting -------------------------------------------------------------------------------------------------


def resolve_ticket(project: Project, ticket: str, *, user: Any, lock: bool = False) -> Item:
    """The item a submitted form refers to, checked to be this annotator's (row-locked if `lock`)."""
    kind, _, raw = ticket.partition(":") if ":" in ticket else (ticket[:1], "", ticket[1:])
    if not raw.isdigit() or kind not in ("a", "r"):
        raise ActionError("This form does not say which item it is for; reload the page.")
    if kind == "r":
        relabels = Relabel.objects.select_for_update() if lock else Relabel.objects
        relabel = relabels.select_related("example").filter(pk=int(raw), project=project).first()
        if relabel is None or (relabel.leased_by_id != user.pk):
            raise ActionError("This re-review item is not assigned to you; your label was not saved.")
        return Item(example=relabel.example, relabel=relabel)
    # Plain SQL into a model (no query to compile: this runs for every label); the example's
    # fields load only if something reads them (a submit needs its id alone).
    # `answers_before`: how many annotations the item has (a submit needs it, and it costs no round trip here).
    locking = " FOR UPDATE OF a" if lock and connection.features.has_select_for_update else ""
    assignment = next(iter(Assignment.objects.raw(_LEASE + locking, [int(raw), project.pk])), None)
    if assignment is None or assignment.annotator_id != user.pk:
        raise ActionError("This item is not leased to you (your lease expired and it went to someone else); "
                          "your label was not saved. Here is your next item.")
    example = Example.from_db(connection.alias, ["id", "project_id"], [assignment.example_id, project.pk])
    return Item(example=example, assignment=assignment)


_LEASE = (f"SELECT a.*, (SELECT count(*) FROM {Annotation._meta.db_table} n WHERE n.example_id = a.example_id)"
          f" AS answers_before FROM {Assignment._meta.db_table} a WHERE a.id = %s AND a.project_id = %s")


def check_label_keys(project: Project, taxonomy: TaxonomyVersion, keys: list[str],
                     submitted_version: int | None) -> list[str]:
    """The submitted keys, if they are active labels of the current taxonomy; else a clear refusal."""
    labels = {label.key: label for label in progress.labels_of(taxonomy)}
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise ActionError("Choose a label first.")
    for key in keys:
        label = labels.get(key)
        if label is None:
            raise ActionError(f"'{key}' is not a label of this project; reload the page.")
        if label.is_deprecated:
            changed = (f" (the taxonomy changed from v{submitted_version} to v{taxonomy.number})"
                       if submitted_version and submitted_version != taxonomy.number else "")
            raise ActionError(f"'{label.name}' is no longer in use{changed}: {label.description or 'it was retired'}."
                              " Choose again from the current labels.")
    if not project.is_multi_label and len(keys) != 1:
        raise ActionError("This project takes exactly one label per item.")
    return keys


class SpanError(ActionError):
    """Submitted spans that do not fit the example or the taxonomy: the annotator's work stays on screen."""


def example_tokens(example: Example, project: Project) -> list[tuple[int, int]]:
    """The example's tokens as (start, end) offsets: stored at import, or (older rows) tokenized now, the same way."""
    if example.tokens is not None:
        return [(int(start), int(end)) for start, end in example.tokens]
    return spanformats.tokenize(example.text, project.language)


def check_spans(project: Project, taxonomy: TaxonomyVersion, example: Example, spans: Any,
                submitted_version: int | None) -> list[dict[str, Any]]:
    """The submitted spans, sorted, if they lie on the example's tokens, do not overlap and use active labels.

    An empty list is an answer too: the annotator looked and found no entity."""
    if not isinstance(spans, list):
        raise SpanError("The spans were not sent as a list; reload the page and tag the text again.")
    try:
        checked = spanformats.check_spans(example.text, example_tokens(example, project), spans)
    except spanformats.SpanFormatError as exc:
        raise SpanError(f"Not saved: {exc}. Tag on whole tokens, one label per token.") from exc
    labels = {label.key: label for label in progress.labels_of(taxonomy)}
    for span in checked:
        label = labels.get(span["label"])
        words = example.text[span["start"]:span["end"]]
        if label is None:
            raise SpanError(f"'{span['label']}' (on “{words}”) is not a label of this project; reload the page.")
        if label.is_deprecated:
            changed = (f" (the taxonomy changed from v{submitted_version} to v{taxonomy.number})"
                       if submitted_version and submitted_version != taxonomy.number else "")
            raise SpanError(f"'{label.name}' (on “{words}”) is no longer in use{changed}: "
                            f"{label.description or 'it was retired'}. Tag it with a current label.")
    return [{"start": span["start"], "end": span["end"], "label": span["label"]} for span in checked]


@transaction.atomic
def submit_annotation(project: Project, *, ticket: str, user: Any, label_keys: list[str],
                      taxonomy_number: int | None = None, spans: Any = None) -> Annotation:
    """Record an annotator's labels (span projects: spans) for the item they hold, and ask the model to update."""
    # Locks our lease: a double submit waits here and then sees it submitted.
    item = resolve_ticket(project, ticket, user=user, lock=True)
    taxonomy = project.current_taxonomy()
    if project.is_span:
        if spans is None:
            raise SpanError("This project tags spans: send them (an empty list means the text has no entity).")
        checked_spans = check_spans(project, taxonomy, item.example, spans, taxonomy_number)
        keys = sorted({span["label"] for span in checked_spans})
    else:
        if spans:
            raise SpanError("This project labels whole items; it takes no spans.")
        checked_spans = []
        keys = check_label_keys(project, taxonomy, label_keys, taxonomy_number)
    now = timezone.now()
    if item.assignment is not None:
        assignment = item.assignment
        if assignment.status == AssignmentStatus.SUBMITTED:
            raise ActionError("You already submitted this item; it was saved once.")
        if assignment.status == AssignmentStatus.SKIPPED:
            raise ActionError("You skipped this item; it is no longer yours to label.")
        assignment.status = AssignmentStatus.SUBMITTED
        assignment.finished_at = now
        assignment.save(update_fields=["status", "finished_at"])
    else:
        relabel = item.relabel
        assert relabel is not None
        if relabel.done_at is not None:
            raise ActionError("This re-review item was already done; it was saved once.")
        relabel.done_at = now
        relabel.done_by = user
        relabel.save(update_fields=["done_at", "done_by"])
    answers = getattr(item.assignment, "answers_before", None)
    if answers is None:
        with connection.cursor() as cursor:
            cursor.execute(_ANSWERS, [item.example.pk])
            answers = cursor.fetchone()[0]
    annotation = Annotation(example=item.example, annotator=user, taxonomy_version=taxonomy, label_keys=keys,
                            spans=checked_spans, source=AnnotationSource.UI, created_at=now)
    # One statement, no savepoint: a row already there means this person labelled the item under
    # this taxonomy before (e.g. by hand as a manager), and the newer answer wins.
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_ANNOTATION, [
            item.example.pk, user.pk, taxonomy.pk,
            Annotation._meta.get_field("label_keys").get_db_prep_save(keys, connection),
            Annotation._meta.get_field("spans").get_db_prep_save(checked_spans, connection),
            AnnotationSource.UI.value, now])
        row = cursor.fetchone()
    created = row is not None
    if created:
        annotation.pk = row[0]
        answers += 1
    else:
        annotation = Annotation.objects.get(example=item.example, annotator=user, taxonomy_version=taxonomy)
        annotation.label_keys = keys
        annotation.spans = checked_spans
        annotation.created_at = now
        annotation.save(update_fields=["label_keys", "spans", "created_at"])
    if answers >= project.overlap:
        # Fully answered: out of the queue's walk now rather than at the next retrain.
        with connection.cursor() as cursor:
            cursor.execute(_UNQUEUE, [item.example.pk])
    if created and answers == 1:
        # Its first label: the header's labelled count moves by one (after the commit).
        project_id = project.pk
        transaction.on_commit(lambda: progress.example_labelled(project_id))
    _after_labels(project, [item.example.pk], counted=True)
    return annotation


_ANSWERS = f"SELECT count(*) FROM {Annotation._meta.db_table} WHERE example_id = %s"
_INSERT_ANNOTATION = f"""
INSERT INTO {Annotation._meta.db_table}
    (example_id, annotator_id, taxonomy_version_id, label_keys, spans, source, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id
"""
_UNQUEUE = f"DELETE FROM {ExampleScore._meta.db_table} WHERE example_id = %s"


def _after_labels(project: Project, example_ids: list[int], *, counted: bool = False) -> None:
    """Announce the labels once they are committed (the learning layer retrains, serving answers callers).
    `counted`: the labelling header's counts were moved already (annotation.progress); else they are counted again."""
    transaction.on_commit(
        lambda: events.labels_given.send(sender=Annotation, project=project, example_ids=example_ids,
                                         counted=counted))


@transaction.atomic
def skip(project: Project, *, ticket: str, user: Any) -> None:
    """Pass on an item: it goes back to the queue for others and is not served to this annotator again."""
    item = resolve_ticket(project, ticket, user=user)
    if item.relabel is not None:
        Relabel.objects.filter(pk=item.relabel.pk, done_at__isnull=True).update(leased_by=None, lease_expires_at=None)
        return
    assert item.assignment is not None
    updated = Assignment.objects.filter(pk=item.assignment.pk, status=AssignmentStatus.LEASED).update(
        status=AssignmentStatus.SKIPPED, slot=None, finished_at=timezone.now())
    if not updated:
        raise ActionError("This item is no longer leased to you.")


@transaction.atomic
def undo_last(project: Project, *, user: Any) -> Item:
    """Take back this annotator's latest submission on the labelling page; it is served to them again."""
    # Only what they submitted in the last minutes, one step at a time back; older
    # labels are corrected by relabelling, not by undo.
    assignment = (Assignment.objects.select_for_update()
                  .filter(project=project, annotator=user, status=AssignmentStatus.SUBMITTED,
                          finished_at__gte=timezone.now() - UNDO_WINDOW)
                  .select_related("example").order_by("-finished_at", "-id").first())
    if assignment is None:
        raise ActionError("Nothing to undo: you have not submitted anything here in the last "
                          f"{int(UNDO_WINDOW.total_seconds() // 60)} minutes.")
    annotation = (Annotation.objects.filter(example_id=assignment.example_id, annotator=user,
                                            source=AnnotationSource.UI).order_by("-created_at", "-id").first())
    if annotation is not None:
        annotation.delete()
    # Anything else they hold goes back to the queue first: the undone item is next.
    Assignment.objects.filter(project=project, annotator=user, status=AssignmentStatus.LEASED).delete()
    assignment.status = AssignmentStatus.LEASED
    assignment.finished_at = None
    assignment.leased_at = timezone.now()
    assignment.expires_at = _lease_until()
    assignment.save()
    _after_labels(project, [assignment.example_id])
    return Item(example=assignment.example, assignment=assignment)


# --- Discussion -------------------------------------------------------------------------------------------------


@transaction.atomic
def add_comment(example: Example, *, user: Any, body: str) -> Comment:
    """Add a comment to an example's thread."""
    body = body.strip()
    if not body:
        raise ActionError("The comment is empty.")
    if len(body) > 5000:
        raise ActionError(f"The comment has {len(body):,} characters; the limit is 5,000.")
    return Comment.objects.create(example=example, author=user, body=body)


@transaction.atomic
def flag_example(example: Example, *, user: Any, reason: str) -> Flag:
    """Flag an example for a manager's review."""
    reason = reason.strip()
    if not reason:
        raise ActionError("Say why you flag this item (e.g. 'text is cut off', 'two labels apply').")
    if len(reason) > 500:
        raise ActionError(f"The reason has {len(reason):,} characters; the limit is 500.")
    existing = Flag.objects.filter(example=example, raised_by=user, resolved_at__isnull=True).first()
    if existing is not None:
        existing.reason = reason
        existing.save(update_fields=["reason"])
        return existing
    return Flag.objects.create(example=example, raised_by=user, reason=reason)


@transaction.atomic
def resolve_flag(flag: Flag, *, user: Any, resolution: str = "", relabel: bool = False) -> Flag:
    """Close a flag, optionally sending its item back for re-review."""
    locked = Flag.objects.select_for_update().get(pk=flag.pk)
    if locked.resolved_at is not None:
        raise ActionError(f"This flag was already resolved by {locked.resolved_by or 'someone'}.")
    locked.resolve(user=user, resolution=resolution.strip()[:500] or "Resolved")
    if relabel:
        Relabel.objects.get_or_create(project=locked.example.project, example=locked.example, done_at=None,
                                      defaults={"reason": f"Flagged: {locked.reason}"[:300]})
    return locked

