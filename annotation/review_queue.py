"""The data-quality review queue: the model's candidates (likely mislabels, low-precision classes, ambiguous
items) as a person works them, and every decision taken on them.

The learning layer writes the candidates (``learning.review_candidates``); this module reads them and
records decisions. A candidate is hidden as soon as its example gets a newer annotation or a decision
(other than a comment) newer than the candidate: the queue never shows an item someone already dealt
with, even when the label came by a path that announces nothing (an import). A decision also deletes the
example's candidates. A correction is an annotation by the reviewer, announced like a submit on the
labelling page, so the model retrains.

Span projects: a likely-mislabel candidate questions some spans of a sentence (``ReviewCandidate.spans``: a given
span the model types differently or says is no entity, or an entity nobody tagged). A correction is the
sentence's whole span list: the reviewer's own (checked like a submit on the labelling page), or the given spans
with the model's reading of some questioned spans accepted (``accept``: their positions in the candidate's list).
Decisions record the spans before and after.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
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
# Span projects: ``decide(..., accept=ACCEPT_ALL)`` takes the model's reading of every span in question.
ACCEPT_ALL = "all"


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
    # Span projects: the latest annotation's spans, the spans in question (each with its labels' display), and
    # the text cut into pieces for the page ({"text"} or a marked span, see ``span_segments``).
    current_spans: list[dict[str, Any]] = field(default_factory=list)
    questions: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    span_json: str = ""  # what static/js/span-review.js edits: {"given": spans, "questions": [...]}

    @property
    def example(self) -> Example:
        return self.candidate.example


PROBLEM_WORDS = {"wrong_type": "typed differently", "missed": "not tagged", "not_entity": "not an entity"}


def span_segments(text: str, given: list[dict[str, Any]], questions: list[dict[str, Any]],
                  labels: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The text as plain pieces and marked spans, in order: every given span (its label), and every span in
    question (its position ``q`` in the candidate's list; a missed entity is a span of its own). Spans in
    question that overlap a given span they do not coincide with are left to the list beside the text."""
    marks: list[dict[str, Any]] = []
    by_bounds = {(q["start"], q["end"]): n for n, q in enumerate(questions) if q.get("label") is not None}
    for span in given:
        at_bounds = by_bounds.get((span["start"], span["end"]))
        marks.append({"start": span["start"], "end": span["end"], "label": labels.get(span["label"]) or
                      label_display(None, span["label"]), "key": span["label"], "q": at_bounds})
    for n, question in enumerate(questions):
        if question.get("label") is None and not any(m["start"] < question["end"] and question["start"] < m["end"]
                                                     for m in marks):
            marks.append({"start": question["start"], "end": question["end"], "label": None, "key": "", "q": n})
    marks.sort(key=lambda m: m["start"])
    out: list[dict[str, Any]] = []
    at = 0
    for m in marks:
        if m["start"] < at or m["end"] > len(text):
            continue  # overlapping or out of the text (edited since): not drawn
        if m["start"] > at:
            out.append({"text": text[at:m["start"]]})
        out.append({**m, "text": text[m["start"]:m["end"]],
                    "question": questions[m["q"]] if m["q"] is not None else None})
        at = m["end"]
    if at < len(text):
        out.append({"text": text[at:]})
    return out


def rows(project: Project, candidates: list[ReviewCandidate]) -> list[Row]:
    """Queue rows with the labels as they read now (renamed, deprecated or removed ones said so)."""
    taxonomy = project.current_taxonomy()
    keys: set[str] = set()
    for candidate in candidates:
        keys.update(candidate.model_keys)
        keys.update(str(s[k]) for s in candidate.spans for k in ("label", "model_label") if s.get(k))
        for annotation in candidate.example.annotations.all():
            keys.update(annotation.label_keys)
    labels = labels_by_key(project, taxonomy, also=keys)
    shown = {k: label_display(labels.get(k), k) for k in keys}
    out = []
    for candidate in candidates:
        annotations = list(candidate.example.annotations.all())
        given = [{"annotator": a.annotator.get_username() if a.annotator else "someone",
                  "labels": [label_display(labels.get(k), k) for k in a.label_keys],
                  "created_at": a.created_at, "source": a.get_source_display()} for a in annotations]
        row = Row(candidate=candidate, given=given, current_keys=list(annotations[0].label_keys) if annotations else [],
                  model=[label_display(labels.get(k), k) for k in candidate.model_keys])
        if project.is_span:
            row.current_spans = list(annotations[0].spans) if annotations else []
            text = candidate.example.text
            row.questions = [{**q, "text": text[q["start"]:q["end"]],
                              "problem_words": PROBLEM_WORDS.get(q["problem"], ""),
                              "given": shown.get(q["label"]) if q.get("label") else None,
                              "model": shown.get(q["model_label"]) if q.get("model_label") else None,
                              "percent": round(100 * float(q.get("confidence") or 0))}
                             for q in candidate.spans]
            row.segments = span_segments(text, row.current_spans, row.questions, shown)
            row.span_json = json.dumps({
                "given": [{"start": x["start"], "end": x["end"], "label": x["label"]} for x in row.current_spans],
                "questions": [{"start": q["start"], "end": q["end"], "label": q.get("label"),
                               "model_label": q.get("model_label")} for q in candidate.spans]})
        out.append(row)
    return out


def _latest_spans(example: Example) -> list[dict[str, Any]]:
    """The spans a decision changes: the adjudicated ones where there are some, else the newest annotation's."""
    final = Adjudication.objects.filter(example=example).values_list("spans", flat=True).first()
    if final is not None:
        return list(final)
    latest = Annotation.objects.filter(example=example).order_by("-created_at", "-id").first()
    return list(latest.spans) if latest is not None else []


def _same_spans(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def norm(spans: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
        return sorted((int(s["start"]), int(s["end"]), str(s["label"])) for s in spans)

    return norm(a) == norm(b)


def accept_model_spans(given: list[dict[str, Any]], questions: list[dict[str, Any]], accept: list[int]
                       ) -> list[dict[str, Any]]:
    """The given spans with the model's reading of the questions at positions ``accept``: a span typed
    differently takes the model's type, a missed entity is added, a span that is no entity goes."""
    out = [{"start": s["start"], "end": s["end"], "label": s["label"]} for s in given]
    for n in accept:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < len(questions):
            raise ActionError(f"“{n}” is not a span in question here: choose from 0 to {len(questions) - 1}.")
        q = questions[n]
        start, end = int(q["start"]), int(q["end"])
        if q.get("label") is None or q.get("model_label") is None:  # missed entity / no entity: (re)place it
            out = [s for s in out if not (s["start"] < end and start < s["end"])]
            if q.get("model_label") is not None:
                out.append({"start": start, "end": end, "label": q["model_label"]})
        else:  # typed differently: the model's type
            out = [{**s, "label": q["model_label"]} if (s["start"], s["end"]) == (start, end) else s for s in out]
    return sorted(out, key=lambda s: (s["start"], s["end"]))


def _latest_keys(example: Example) -> list[str]:
    """The label a decision changes: the adjudicated one where there is one, else the newest annotation's."""
    final = Adjudication.objects.filter(example=example).values_list("label_keys", flat=True).first()
    if final is not None:
        return list(final)
    latest = Annotation.objects.filter(example=example).order_by("-created_at", "-id").first()
    return list(latest.label_keys) if latest is not None else []


_UNQUEUE = f"DELETE FROM {ExampleScore._meta.db_table} WHERE example_id = %s"


def _correct(project: Project, example: Example, *, user: Any, keys: list[str], now: Any,
             spans: list[dict[str, Any]] | None = None) -> None:
    """The reviewer's label (span projects: spans) becomes an annotation (theirs, newest: the training target),
    and the final label where several people labelled the item."""
    taxonomy = project.current_taxonomy()
    answer: dict[str, Any] = {"label_keys": keys} if spans is None else {"label_keys": keys, "spans": spans}
    Annotation.objects.update_or_create(
        example=example, annotator=user, taxonomy_version=taxonomy,
        defaults={**answer, "created_at": now, "source": AnnotationSource.UI})
    if Annotation.objects.filter(example=example).values("annotator").distinct().count() > 1:
        # With several answers the training target is the adjudicated label: the reviewer's decision is it.
        Adjudication.objects.update_or_create(
            example=example, defaults={"project": project, "taxonomy_version": taxonomy, **answer,
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
           note: str = "", taxonomy_number: int | None = None, spans: Any = None,
           accept: list[int] | str | None = None) -> ReviewDecision:
    """Record a reviewer's decision on a candidate: keep the label, change it (a new annotation by the
    reviewer; the model retrains), send the item back for relabelling, or comment (the item stays).
    Span projects change with ``spans`` (the sentence's corrected span list) or ``accept`` (positions in the
    candidate's spans whose model reading is taken, or ``ACCEPT_ALL``).

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
    previous_spans = _latest_spans(example) if project.is_span else []
    new_spans = previous_spans
    note = note.strip()
    if len(note) > 5000:
        raise ActionError(f"The note has {len(note):,} characters; the limit is 5,000.")
    now = timezone.now()
    new = previous
    if action == ReviewAction.CHANGE and project.is_span:
        if spans is None and accept is None:
            raise ActionError("Send the corrected spans, or which spans in question to accept.")
        if spans is None:
            questions = list(candidate.spans)
            chosen: list[int] = (list(range(len(questions))) if accept == ACCEPT_ALL
                                 else [int(n) if isinstance(n, int) else -1 for n in accept or []])
            spans = accept_model_spans(previous_spans, questions, chosen)
        taxonomy = project.current_taxonomy()
        new_spans = actions.check_spans(project, taxonomy, example, spans, taxonomy_number)
        new = sorted({s["label"] for s in new_spans})
        if _same_spans(new_spans, previous_spans):
            action, new_spans, new = ReviewAction.KEEP, previous_spans, previous
        else:
            _correct(project, example, user=user, keys=new, now=now, spans=new_spans)
    elif action == ReviewAction.CHANGE:
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
        new_keys=new, previous_spans=previous_spans, new_spans=new_spans, note=note, decided_by=user, decided_at=now)
    if action in SETTLING:
        ReviewCandidate.objects.filter(example=example).delete()
    return decision


def conflict_count(project: Project) -> int:
    """Items several people labelled differently that nobody adjudicated yet: the adjudication page's list."""
    return adjudication.conflict_counts(project)["open"]
