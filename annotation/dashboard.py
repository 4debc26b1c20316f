"""The project dashboard (progress, annotators, label distribution, live model quality) and recent activity.

Every figure is aggregated in the database: a poll costs a handful of small
queries at 100k examples / 10k annotations, and none when nothing changed (the
page sends back the fingerprint of what it shows and gets 204 No Content).
"""
from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import Count, Max, Q
from django.db.models.fields.json import KT
from django.db.models.functions import Substr
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from annotation.agreement import Agreement, fleiss
from annotation.models import Annotation, AnnotationSource, Comment, Flag, Relabel
from learning.models import ModelVersion
from learning.views import learning_summary
from projects.access import get_project_for_user
from projects.models import DatasetStatus, Label, Project, Role, TaxonomyVersion

# A longer pause between two labels of one annotator is a break, not labelling time.
BREAK = timedelta(minutes=10)
DEPRECATED_COLOUR = "#afb8c1"
SNIPPET = 90

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
            label.is_removed = True  # type: ignore[attr-defined]
            labels[label.key] = label
    return labels


def label_display(label: Label | None, key: str) -> dict[str, Any]:
    """How a label key reads on a page: its current name, with a note when it is no longer in use."""
    if label is None:
        return {"key": key, "name": f"unknown label {key}", "colour": DEPRECATED_COLOUR, "note": "removed"}
    note = "removed" if getattr(label, "is_removed", False) else "deprecated" if label.is_deprecated else ""
    return {"key": key, "name": label.name, "colour": DEPRECATED_COLOUR if note else label.colour, "note": note}


def fingerprint(project: Project) -> str:
    """Changes whenever anything the dashboard shows changes; cheap to compute."""
    annotations = Annotation.objects.in_project(project).aggregate(n=Count("id"), last_id=Max("id"),
                                                                    last_at=Max("created_at"))
    parts = [
        annotations, project.examples.count(),
        ModelVersion.objects.filter(project=project).aggregate(n=Max("number"))["n"],
        project.taxonomy_versions.aggregate(n=Max("number"))["n"],
        Flag.objects.filter(example__project=project, resolved_at__isnull=True).count(),
        Relabel.objects.filter(project=project, done_at__isnull=True).count(),
    ]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


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


def model_quality(project: Project, latest: dict[str, Any] | None,
                  labels: dict[str, Label]) -> dict[str, Any] | None:
    """The latest model version's report, with label names as they read now."""
    if latest is None:
        return None
    metrics = latest["metrics"] or {}
    keys = (ModelVersion.objects.filter(project=project, number=latest["number"])
            .values_list("label_keys", flat=True).first()) or []

    def name(index: int, fallback: str) -> str:
        key = keys[index] if index < len(keys) else None
        return labels[key].name if key in labels else fallback

    per_class = [
        {"label": name(i, row.get("label", "?")), "f1": row.get("f1"), "low": row.get("f1_low"),
         "high": row.get("f1_high"), "precision": row.get("precision"), "recall": row.get("recall"),
         "support": row.get("support")}
        for i, row in enumerate(metrics.get("per_class") or [])
    ]
    confusion = metrics.get("confusion") or {}
    names = [name(i, label) for i, label in enumerate(confusion.get("labels") or [])]
    matrix = []
    for i, counts in enumerate(confusion.get("matrix") or []):
        total = sum(counts)
        matrix.append({"label": names[i] if i < len(names) else "?", "total": total, "cells": [
            {"count": n, "share": n / total if total else 0.0, "is_diagonal": i == j,
             "predicted": names[j] if j < len(names) else "?"}
            for j, n in enumerate(counts)
        ]})
    reliability = metrics.get("reliability") or {}
    points = [
        {"x": conf, "y": acc, "n": int(n)}
        for conf, acc, n in zip(reliability.get("confidence") or [], reliability.get("accuracy") or [],
                                reliability.get("count") or [], strict=False)
        if n and conf is not None and acc is not None
    ]
    return {
        "number": latest["number"], "n_labels": latest["n_labels"], "created_at": latest["created_at"],
        "n_eval": metrics.get("n_eval"), "accuracy": metrics.get("accuracy") or {},
        "macro_f1": metrics.get("macro_f1") or {}, "ece": metrics.get("ece"),
        "per_class": per_class, "has_intervals": any(row["low"] is not None for row in per_class),
        "confusion": {"labels": names, "rows": matrix}, "reliability": points,
    }


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


def dashboard_context(project: Project) -> dict[str, Any]:
    summary = learning_summary(project)
    taxonomy = project.current_taxonomy()
    examples, labelled = summary["examples"], summary["labelled"]
    annotators = annotator_stats(project)
    distribution = label_distribution(project, taxonomy)
    return {
        "taxonomy": taxonomy,
        "progress": {
            "examples": examples, "labelled": labelled, "unlabelled": examples - labelled,
            "percent": round(100 * labelled / examples, 1) if examples else 0.0,
            "annotations": sum(row.total for row in annotators),
            "relabel_open": Relabel.objects.filter(project=project, done_at__isnull=True).count(),
            "flags_open": Flag.objects.filter(example__project=project, resolved_at__isnull=True).count(),
        },
        "annotators": annotators,
        "agreement": project_agreement(project),
        "annotator_chart": [{"name": row.name, "in_app": row.in_app, "imported": row.imported} for row in annotators],
        "annotator_chart_height": 70 + 34 * len(annotators),
        "distribution": distribution,
        "curve": summary["curve"],
        "quality": model_quality(project, summary["latest"], labels_by_key(project, taxonomy)),
        "is_manager": project.user_role == Role.MANAGER,  # type: ignore[attr-defined]
    }


@require_GET
@login_required
@vary_on_headers("HX-Request")
def dashboard(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk)
    polled = bool(request.htmx) and request.htmx.target == "dashboard-data"
    version = fingerprint(project)
    if polled and request.GET.get("v") == version:
        # Nothing changed: htmx leaves the region (and the chart someone is hovering) alone.
        return HttpResponse(status=204)
    context = {"project": project, "fingerprint": version, **dashboard_context(project)}
    if polled:
        return render(request, "annotation/partials/dashboard-data.html", context)
    return render(request, "annotation/dashboard.html", context)


# --- Recent activity (the project page) -------------------------------------------------------------------------


@dataclass
class Activity:
    at: datetime
    kind: str
    actor: str
    action: str
    subject: str = ""
    detail: str = ""
    url: str = ""
    count: int = 1


def _name(user: Any) -> str:
    return user.get_username() if user is not None else "someone"


# Labels are fetched further back than other events and folded into one line per annotator
# between other events, so a busy labelling session does not push everything else out.
LABELS_FETCHED = 300


def recent_activity(project: Project, *, limit: int = 15, is_manager: bool = False) -> list[Activity]:
    """The latest labels, comments, flags, taxonomy changes, model versions and imports, newest first."""
    taxonomy = project.current_taxonomy()
    items: list[Activity] = []
    annotations = list(Annotation.objects.in_project(project).exclude(source=AnnotationSource.IMPORT)
                       .select_related("annotator").annotate(snippet=Substr("example__text", 1, SNIPPET))
                       .order_by("-created_at", "-id")[:LABELS_FETCHED])
    labels = labels_by_key(project, taxonomy, also={k for a in annotations for k in a.label_keys})
    for a in annotations:
        names = ", ".join(label_display(labels.get(k), k)["name"] for k in a.label_keys)
        via = " (API)" if a.source == AnnotationSource.API else ""
        items.append(Activity(a.created_at, "label", _name(a.annotator), f"labelled{via}", a.snippet,  # type: ignore[attr-defined]
                              names))
    for c in (Comment.objects.filter(example__project=project).select_related("author")
              .annotate(snippet=Substr("example__text", 1, SNIPPET)).order_by("-created_at", "-id")[:limit]):
        items.append(Activity(c.created_at, "comment", _name(c.author), "commented on", c.snippet,  # type: ignore[attr-defined]
                              c.body[:200]))
    review = reverse("annotation:review", args=[project.pk]) if is_manager else ""
    flags = Flag.objects.filter(example__project=project).annotate(snippet=Substr("example__text", 1, SNIPPET))
    for f in flags.select_related("raised_by").order_by("-created_at", "-id")[:limit]:
        items.append(Activity(f.created_at, "flag", _name(f.raised_by), "flagged", f.snippet,  # type: ignore[attr-defined]
                              f.reason, review))
    for f in (flags.filter(resolved_at__isnull=False).select_related("resolved_by")
              .order_by("-resolved_at", "-id")[:limit]):
        assert f.resolved_at is not None
        items.append(Activity(f.resolved_at, "resolve", _name(f.resolved_by), "resolved a flag on",
                              f.snippet, f.resolution, review))  # type: ignore[attr-defined]
    settings_url = reverse("projects:settings", args=[project.pk]) if is_manager else ""
    for v in project.taxonomy_versions.select_related("created_by").order_by("-number")[:limit]:
        items.append(Activity(v.created_at, "taxonomy", _name(v.created_by), f"made taxonomy v{v.number}",
                              detail=" ".join(v.changelog), url=settings_url))
    model_url = reverse("learning:model", args=[project.pk])
    for m in (ModelVersion.objects.filter(project=project).order_by("-number")
              .values("number", "n_labels", "created_at", f1=KT("metrics__macro_f1__value"))[:limit]):
        f1 = f"macro-F1 {float(m['f1']):.2f}" if m["f1"] is not None else ""
        items.append(Activity(m["created_at"], "model", "The model", f"was retrained (v{m['number']}) on "
                              f"{m['n_labels']:,} labels", detail=f1, url=model_url))
    for d in project.datasets.select_related("created_by").defer("errors", "columns").order_by("-created_at")[:limit]:
        if d.status == DatasetStatus.DONE:
            action, detail = "imported", f"{d.imported_count:,} examples, {d.labelled_count:,} labelled"
        elif d.status == DatasetStatus.FAILED:
            action, detail = "tried to import", f"{d.error_count:,} errors, nothing imported"
        else:
            action, detail = "started importing", d.get_status_display().lower()
        items.append(Activity(d.finished_at or d.created_at, "import", _name(d.created_by), action, d.name, detail,
                              d.get_absolute_url()))
    if len(annotations) == LABELS_FETCHED:
        # Older than the labels fetched, the timeline would silently miss labels: stop there.
        horizon = annotations[-1].created_at
        items = [item for item in items if item.at >= horizon]
    items.sort(key=lambda item: item.at, reverse=True)
    return _fold_label_runs(items)[:limit]


def _fold_label_runs(items: list[Activity]) -> list[Activity]:
    """Between two other events, one line per annotator for their labels: 'labelled 12 items — Yes ×7, No ×5'."""
    groups: list[list[Activity]] = []
    open_runs: dict[str, list[Activity]] = {}
    for item in items:
        if item.kind != "label":
            open_runs = {}
            groups.append([item])
        elif item.actor in open_runs:
            open_runs[item.actor].append(item)
        else:
            open_runs[item.actor] = [item]
            groups.append(open_runs[item.actor])
    return [group[0] if len(group) == 1 else Activity(
        group[0].at, "label", group[0].actor, f"labelled {len(group)} items", count=len(group),
        detail=", ".join(f"{name} ×{n}" for name, n in Counter(item.detail for item in group).most_common()),
    ) for group in groups]
