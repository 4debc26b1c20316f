"""Reads over a project's annotations that pages above show: label distribution, annotators and their
pace, agreement, progress counts, and how a label key reads now.

Every figure is aggregated in the database: a handful of small queries at
100k examples / 10k annotations.
"""
from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Max, Q

from annotation import adjudication
from annotation.agreement import Agreement, AgreementReport, agreement_report, fleiss
from annotation.models import Adjudication, Annotation, AnnotationSource, Flag, Relabel
from projects.models import Label, Project, TaxonomyVersion

# A longer pause between two labels of one annotator is a break, not labelling time.
BREAK = timedelta(minutes=10)
DEPRECATED_COLOUR = "#afb8c1"

# Labelled examples per label key; a multi-label annotation counts for each of its keys.
_KEY_COUNTS = {
    # The set-returning function sits in the select list, not in a LATERAL join: there the
    # planner guesses 100 keys per annotation, and the inflated cost switches on JIT (+20 ms).
    "postgresql": """
        SELECT k.key, count(DISTINCT k.example_id) FROM (
            SELECT a.example_id, jsonb_array_elements_text(a.label_keys) AS key
            FROM annotation_annotation a JOIN projects_example e ON e.id = a.example_id
            WHERE e.project_id = %s) AS k
        GROUP BY k.key""",
    "sqlite": """
        SELECT k.value, count(DISTINCT a.example_id)
        FROM annotation_annotation a
        JOIN projects_example e ON e.id = a.example_id, json_each(a.label_keys) AS k
        WHERE e.project_id = %s GROUP BY k.value""",
}

# Seconds between an annotator's consecutive labels on the labelling page (imports have no pace).
_GAPS = """
    SELECT a.annotator_id, {gap} AS gap
    FROM annotation_annotation a JOIN projects_example e ON e.id = a.example_id
    WHERE e.project_id = %s AND a.source = 'ui' AND a.annotator_id IS NOT NULL
    WINDOW w AS (PARTITION BY a.annotator_id ORDER BY a.created_at, a.id)"""
_GAP = {
    "postgresql": "EXTRACT(EPOCH FROM a.created_at - LAG(a.created_at) OVER w)::float8",
    "sqlite": "(julianday(a.created_at) - julianday(LAG(a.created_at) OVER w)) * 86400.0",
}
_PACE_PG = """
    SELECT annotator_id,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) FILTER (WHERE gap <= %s),
           coalesce(sum(gap) FILTER (WHERE gap <= %s), 0),
           count(gap) FILTER (WHERE gap <= %s)
    FROM ({gaps}) AS g GROUP BY annotator_id"""


# --- Dashboard figures ------------------------------------------------------------------------------------------


@dataclass
class AnnotatorRow:
    name: str
    total: int
    in_app: int
    imported: int
    last_at: datetime | None
    median_seconds: float | None = None
    per_hour: float | None = None


def labels_by_key(project: Project, taxonomy: TaxonomyVersion, also: Iterable[str] = ()) -> dict[str, Label]:
    """The current taxonomy's labels by key, plus the newest older label for keys no longer in it."""
    labels = {label.key: label for label in taxonomy.labels.all()}
    missing = set(also) - labels.keys()
    if missing:
        older = Label.objects.filter(version__project=project, key__in=missing).order_by("version__number")
        for label in older:
            label.is_removed = True
            labels[label.key] = label
    return labels


def label_display(label: Label | None, key: str) -> dict[str, Any]:
    """How a label key reads on a page: its current name, with a note when it is no longer in use."""
    if label is None:
        return {"key": key, "name": f"unknown label {key}", "colour": DEPRECATED_COLOUR, "note": "removed"}
    note = "removed" if getattr(label, "is_removed", False) else "deprecated" if label.is_deprecated else ""
    return {"key": key, "name": label.name, "colour": DEPRECATED_COLOUR if note else label.colour, "note": note}


def label_distribution(project: Project, taxonomy: TaxonomyVersion) -> list[dict[str, Any]]:
    """Labelled examples per label: current labels in taxonomy order (zeros included), then retired ones."""
    with connection.cursor() as cursor:
        cursor.execute(_KEY_COUNTS[connection.vendor], [project.pk])
        counts = dict(cursor.fetchall())
    labels = labels_by_key(project, taxonomy, also=counts)
    rows = []
    for key, label in labels.items():
        shown = label_display(label, key)
        if shown["note"] and not counts.get(key):
            continue
        rows.append({**shown, "count": counts.get(key, 0)})
    rows += [{**label_display(None, key), "count": n} for key, n in counts.items() if key not in labels]
    # Retired labels after the ones in use, so the chart reads as the taxonomy does.
    return sorted(rows, key=lambda row: bool(row["note"]))


def annotator_stats(project: Project) -> list[AnnotatorRow]:
    """Per annotator: labels given (in the app / imported or by API), pace on the labelling page."""
    rows = (Annotation.objects.in_project(project).values("annotator", "annotator__username")
            .annotate(total=Count("id"), in_app=Count("id", filter=Q(source=AnnotationSource.UI)),
                      last_at=Max("created_at"))
            .order_by("-total", "annotator__username"))
    result = {row["annotator"]: AnnotatorRow(name=row["annotator__username"] or "deleted user", total=row["total"],
                                             in_app=row["in_app"], imported=row["total"] - row["in_app"],
                                             last_at=row["last_at"]) for row in rows}
    for annotator_id, median, active_seconds, n_gaps in _pace(project):
        row = result.get(annotator_id)
        if row is not None and n_gaps:
            row.median_seconds = median
            row.per_hour = n_gaps / active_seconds * 3600 if active_seconds else None
    return list(result.values())


def _pace(project: Project) -> list[tuple[int, float | None, float, int]]:
    """(annotator, median seconds between labels, active seconds, labels timed) without breaks > BREAK."""
    limit = BREAK.total_seconds()
    gaps = _GAPS.format(gap=_GAP[connection.vendor])
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_PACE_PG.format(gaps=gaps), [limit, limit, limit, project.pk])
            return [(a, float(m) if m is not None else None, float(s), n) for a, m, s, n in cursor.fetchall()]
        # SQLite (the first-look setup) has no percentile: the median is taken here.
        cursor.execute(gaps, [project.pk])
        per_annotator: dict[int, list[float]] = {}
        for annotator_id, gap in cursor.fetchall():
            if gap is not None and gap <= limit:
                per_annotator.setdefault(annotator_id, []).append(gap)
    return [(a, statistics.median(g), sum(g), len(g)) for a, g in per_annotator.items()]


def project_agreement(project: Project, *, max_items: int = 20000) -> Agreement | None:
    """Agreement between annotators on the items several of them labelled (each one's latest answer)."""
    shared = (Annotation.objects.in_project(project).exclude(annotator=None).values("example_id")
              .annotate(raters=Count("annotator", distinct=True)).filter(raters__gte=2)
              .values_list("example_id", flat=True)[:max_items])
    answers: dict[int, dict[int, tuple[str, ...]]] = {}
    rows = (Annotation.objects.filter(example_id__in=shared).exclude(annotator=None)
            .order_by("example_id", "annotator_id", "-created_at", "-id")
            .values_list("example_id", "annotator_id", "label_keys"))
    for example_id, annotator_id, keys in rows.iterator(chunk_size=5000):
        answers.setdefault(example_id, {}).setdefault(annotator_id, tuple(sorted(keys)))
    return fleiss([list(by_annotator.values()) for by_annotator in answers.values()])


# The agreement page's figures are cached until an annotation or an adjudication changes.
AGREEMENT_CACHE_SECONDS = 3600


def agreement_details(project: Project, *, max_items: int = 20000) -> dict[str, Any] | None:
    """The agreement page's figures: overall, per label, per annotator pair and per annotator against the final
    label (adjudicated, else unanimous, else majority), on up to `max_items` items several people labelled;
    None when no item has two annotators."""
    parts = [Annotation.objects.in_project(project).aggregate(n=Count("id"), last_id=Max("id"), at=Max("created_at")),
             Adjudication.objects.filter(project=project).aggregate(n=Count("pk"), at=Max("decided_at")),
             project.taxonomy_versions.aggregate(n=Max("number"))["n"], max_items]
    key = f"labelhub:agreement:{project.pk}:{hashlib.sha1(repr(parts).encode()).hexdigest()[:16]}"
    cached = cache.get(key)
    if cached is not None:
        return cached or None
    shared = (Annotation.objects.in_project(project).exclude(annotator=None).values("example_id")
              .annotate(raters=Count("annotator", distinct=True)).filter(raters__gte=2)
              .order_by("example_id").values_list("example_id", flat=True)[:max_items])
    by_example = adjudication.newest_answers(project, list(shared), with_names=True)
    final = dict(Adjudication.objects.filter(project=project, example_id__in=list(by_example))
                 .values_list("example_id", "label_keys"))
    taxonomy = project.current_taxonomy()
    active = set(taxonomy.active_labels().values_list("key", flat=True))
    answers, targets, adjudicated, names = [], [], [], {}
    for example_id, given in by_example.items():
        people = {a.annotator_id: a.keys for a, _ in given.values() if a.annotator_id is not None}
        names.update({a.annotator_id: a.username for a, _ in given.values()})
        chosen = final.get(example_id)
        result = adjudication.resolve(list(people.values()), active=active,
                                      adjudicated=tuple(sorted(chosen)) if chosen is not None else None)
        answers.append(people)
        targets.append(result.keys)
        adjudicated.append(chosen is not None)
    all_keys = {k for item in answers for keys in item.values() for k in keys}
    labels = labels_by_key(project, taxonomy, also=all_keys)
    order = [k for k in labels if k in all_keys]
    report = agreement_report(answers, label_keys=order, targets=targets, adjudicated=adjudicated, seed=project.pk)
    details = None if report is None else _with_names(report, names, labels)
    cache.set(key, details or {}, AGREEMENT_CACHE_SECONDS)
    return details


def _with_names(report: AgreementReport, names: dict[Any, str], labels: dict[str, Label]) -> dict[str, Any]:
    """The report with annotator and label names, and the pair heat map as rows of cells."""
    raters = sorted({p.a for p in report.pairs} | {p.b for p in report.pairs}, key=lambda r: names.get(r, ""))
    by_pair = {(p.a, p.b): p for p in report.pairs} | {(p.b, p.a): p for p in report.pairs}
    heat = [{"name": names.get(r, "?"), "cells": [
        {"is_self": r == c, "pair": by_pair.get((r, c)), "share": max(0.0, (by_pair[(r, c)].kappa.value or 0.0))
         if (r, c) in by_pair else 0.0} for c in raters]} for r in raters]
    return {
        "report": report,
        "per_label": [{"label": label_display(labels.get(row.key), row.key), "row": row} for row in report.per_label],
        "pairs": [{"a": names.get(p.a, "?"), "b": names.get(p.b, "?"), "row": p} for p in report.pairs],
        "annotators": [{"name": names.get(a.rater, "?"), "row": a} for a in report.annotators],
        "heat": {"names": [names.get(r, "?") for r in raters], "rows": heat},
    }


def progress(project: Project, *, examples: int) -> dict[str, Any]:
    """How far labelling is: labelled and unlabelled examples, open re-reviews and flags."""
    labelled = Annotation.objects.in_project(project).labelled_count()
    return {
        "examples": examples, "labelled": labelled, "unlabelled": examples - labelled,
        "percent": round(100 * labelled / examples, 1) if examples else 0.0,
        "relabel_open": Relabel.objects.filter(project=project).open().count(),
        "flags_open": Flag.objects.in_project(project).open().count(),
    }


def fingerprint_parts(project: Project) -> list[Any]:
    """What changes whenever an annotation-side figure changes; cheap to compute."""
    return [
        Annotation.objects.in_project(project).aggregate(n=Count("id"), last_id=Max("id"), last_at=Max("created_at")),
        project.examples.count(),
        project.taxonomy_versions.aggregate(n=Max("number"))["n"],
        Flag.objects.in_project(project).open().count(),
        Relabel.objects.filter(project=project).open().count(),
    ]
