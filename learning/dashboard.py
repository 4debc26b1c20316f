"""The project dashboard: progress, annotators, label distribution, agreement, and the live model quality.

It lives in the learning layer because it shows both sides: the annotation
figures (`annotation.stats`) and the model's. A poll costs nothing when nothing
changed: the page sends back the fingerprint of what it shows and gets 204.
"""
from __future__ import annotations

import hashlib
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Max
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from annotation import stats
from learning.actions import embedding_state
from learning.models import Metrics, ModelVersion
from learning.views import learning_summary
from projects.access import AuthenticatedHttpRequest, ProjectAccess, get_access, get_project_for_user
from projects.models import Example, Label, Project


def fingerprint(project: Project) -> str:
    """Changes whenever anything the dashboard shows changes; cheap to compute."""
    parts = [*stats.fingerprint_parts(project),
             ModelVersion.objects.filter(project=project).aggregate(n=Max("number"))["n"]]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def model_quality(project: Project, latest: dict[str, Any] | None,
                  labels: dict[str, Label]) -> dict[str, Any] | None:
    """The latest model version's report, with label names as they read now."""
    if latest is None:
        return None
    metrics = Metrics(latest["metrics"] or {})
    keys = (ModelVersion.objects.filter(project=project, number=latest["number"])
            .values_list("label_keys", flat=True).first()) or []

    def name(index: int, fallback: str) -> str:
        key = keys[index] if index < len(keys) else None
        return labels[key].name if key in labels else fallback

    per_class = [
        {"label": name(i, row.get("label", "?")), "f1": row.get("f1"), "low": row.get("f1_low"),
         "high": row.get("f1_high"), "precision": row.get("precision"), "recall": row.get("recall"),
         "support": row.get("support")}
        for i, row in enumerate(metrics.per_class)
    ]
    confusion = metrics.confusion
    names = [name(i, label) for i, label in enumerate(confusion.get("labels") or [])]
    matrix = []
    for i, counts in enumerate(confusion.get("matrix") or []):
        total = sum(counts)
        matrix.append({"label": names[i] if i < len(names) else "?", "total": total, "cells": [
            {"count": n, "share": n / total if total else 0.0, "is_diagonal": i == j,
             "predicted": names[j] if j < len(names) else "?"}
            for j, n in enumerate(counts)
        ]})
    reliability = metrics.reliability
    points = [
        {"x": conf, "y": acc, "n": int(n)}
        for conf, acc, n in zip(reliability.get("confidence") or [], reliability.get("accuracy") or [],
                                reliability.get("count") or [], strict=False)
        if n and conf is not None and acc is not None
    ]
    return {
        "number": latest["number"], "n_labels": latest["n_labels"], "created_at": latest["created_at"],
        "n_eval": metrics.n_eval, "accuracy": metrics.interval("accuracy"),
        # After a fine-tune: measured only on labels its encoder never saw, or (too few of those) on all of them.
        "unseen_only": bool(metrics.raw.get("unseen_only")), "trained_on": int(metrics.raw.get("trained_on") or 0),
        "macro_f1": metrics.interval("macro_f1"), "ece": metrics.ece,
        "per_class": per_class, "has_intervals": any(row["low"] is not None for row in per_class),
        "confusion": {"labels": names, "rows": matrix}, "reliability": points,
        **(span_quality_figures(metrics, name) if metrics.is_span else {"is_span": False}),
    }


# learning.spans.error_breakdown's kinds, in the dashboard's order.
ERROR_TITLES = {"wrong_type": "Wrong type", "wrong_boundary": "Wrong boundary", "missed": "Missed",
                "spurious": "Spurious"}


def span_quality_figures(metrics: Metrics, name: Any) -> dict[str, Any]:
    """A span model's entity-level figures and error breakdown, with label names as they read now."""
    errors = metrics.errors
    kinds = list(ERROR_TITLES)
    rows = [{"label": name(i, row.get("label", "?")), "counts": [int(row.get(kind) or 0) for kind in kinds]}
            for i, row in enumerate(errors.get("per_label") or [])]
    span_precision = [
        {"threshold": p.get("threshold"), "coverage": p.get("coverage"), "precision": p.get("accuracy")}
        for p in metrics.raw.get("span_precision_coverage") or []
    ]
    return {
        "is_span": True,
        "entity_f1": metrics.interval("entity_f1"), "entity_precision": metrics.interval("entity_precision"),
        "entity_recall": metrics.interval("entity_recall"),
        "n_gold_entities": metrics.raw.get("n_gold_entities"),
        "n_predicted_entities": metrics.raw.get("n_predicted_entities"), "n_tokens": metrics.raw.get("n_tokens"),
        "errors": {"kinds": [ERROR_TITLES[k] for k in kinds], "totals": [int(errors.get(k) or 0) for k in kinds],
                   "correct": int(errors.get("correct") or 0),
                   "boundary_and_type": int(errors.get("wrong_boundary_and_type") or 0), "rows": rows},
        "span_precision": span_precision,
    }


def dashboard_context(access: ProjectAccess) -> dict[str, Any]:
    project = access.project
    summary = learning_summary(project)
    taxonomy = project.current_taxonomy()
    annotators = stats.annotator_stats(project)
    return {
        "taxonomy": taxonomy,
        "progress": {**stats.progress(project, examples=summary["examples"]),
                     "annotations": sum(row.total for row in annotators)},
        "annotators": annotators,
        "agreement": stats.project_agreement(project),
        "annotator_chart": [{"name": row.name, "in_app": row.in_app, "imported": row.imported} for row in annotators],
        "annotator_chart_height": 70 + 34 * len(annotators),
        "distribution": stats.label_distribution(project, taxonomy),
        "curve": summary["curve"],
        "embedding": embedding_state(project, examples=summary["examples"]),
        "quality": model_quality(project, summary["latest"], stats.labels_by_key(project, taxonomy)),
        "is_manager": access.is_manager,
    }


@require_GET
@login_required
@vary_on_headers("HX-Request")
def dashboard(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    access = get_access(request, pk)
    project = access.project
    polled = bool(request.htmx) and request.htmx.target == "dashboard-data"
    version = fingerprint(project)
    if polled and request.GET.get("v") == version:
        # Nothing changed: htmx leaves the region (and the chart someone is hovering) alone.
        return HttpResponse(status=204)
    context = {"project": project, "fingerprint": version, **dashboard_context(access)}
    if polled:
        return render(request, "learning/partials/dashboard-data.html", context)
    return render(request, "learning/dashboard.html", context)


def counters_context(project: Project) -> dict[str, Any]:
    """The project page's counters, counted now (no cache: they must be true right after a label)."""
    taxonomy = project.current_taxonomy()
    return {
        "progress": stats.progress(project, examples=Example.objects.in_project(project).count()),
        "taxonomy": taxonomy,
        "label_count": taxonomy.active_labels().count(),
    }


@require_GET
@login_required
def project_counters(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The project page's examples / labelled / re-review / labels figures; it polls every 5 s and gets 204
    while nothing changed (the same fingerprint as the dashboard's)."""
    project = get_project_for_user(request, pk)
    version = fingerprint(project)
    if request.GET.get("v") == version:
        return HttpResponse(status=204)
    return render(request, "learning/partials/project-counters.html",
                  {"project": project, "fingerprint": version, **counters_context(project)})
