"""Know sooner: the dashboard's projection region. Where macro-F1 is heading at 2× and 5× the labels, and a
plain "when to stop" signal against the manager's threshold (`ProjectionSetting`).

The fit (`learning.feasibility`) runs once per newest reported model version and threshold and is cached;
the region polls and gets 204 while neither changed.
"""
from __future__ import annotations

import math
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods
from django.views.decorators.vary import vary_on_headers

from learning import feasibility
from learning.models import Metrics, ModelVersion, ProjectionSetting
from projects.access import AuthenticatedHttpRequest, get_access
from projects.models import Example, Project, Role

CACHE_SECONDS = 24 * 3600


def curve_points(project: Project) -> list[dict[str, Any]]:
    """The learning curve the projection fits: versions with their own quality report, trained on the same labels
    as the newest (a merge or split makes a new task, whose curve starts again)."""
    versions = list(ModelVersion.objects.filter(project=project, report_at__isnull=False).order_by("number")
                    .values("number", "n_labels", "metrics", "label_keys"))
    if not versions:
        return []
    labels = sorted(versions[-1]["label_keys"])
    points = []
    for v in versions:
        report = Metrics(v["metrics"] or {})
        f1 = report.interval("macro_f1")
        own = report.report_version in (None, v["number"])
        if sorted(v["label_keys"]) != labels or not own or f1.get("value") is None:
            continue
        points.append({"version": v["number"], "n_labels": v["n_labels"], "macro_f1": f1["value"],
                       "low": f1.get("low"), "high": f1.get("high")})
    return points


def _sigma(point: dict[str, Any]) -> float:
    """The spread of one point from its own 95 % interval (nan without one: every point then weighs the same)."""
    if point["low"] is None or point["high"] is None or point["high"] <= point["low"]:
        return math.nan
    return (point["high"] - point["low"]) / 3.92


def fingerprint(project: Project) -> str:
    newest = (ModelVersion.objects.filter(project=project, report_at__isnull=False).order_by("-number")
              .values_list("number", "report_at").first())
    if newest is None or newest[1] is None:
        return "none"
    return f"{newest[0]}-{newest[1].timestamp():.0f}"


def projection_context(project: Project) -> dict[str, Any]:
    """What the region shows: the curve, the projection (or why there is none yet), the threshold and the verdict."""
    threshold = ProjectionSetting.stop_gain_points_of(project)
    version = fingerprint(project)
    key = f"labelhub:projection:{project.pk}:{version}"
    fitted = cache.get(key)
    if fitted is None:
        points = curve_points(project)
        fitted = {"points": points, "projection": None, "reason": ""}
        try:
            projection = feasibility.project([p["n_labels"] for p in points], [p["macro_f1"] for p in points],
                                             sigma=[_sigma(p) for p in points])
        except feasibility.NotEnoughCurve as exc:
            fitted["reason"] = str(exc)
        else:
            fitted["projection"] = {
                "n_now": projection.n_now, "ceiling": projection.ceiling, "level": projection.level,
                "at": [{"multiple": round(n / projection.n_now), "n": n, "value": e.value, "low": e.low,
                        "high": e.high} for n, e in sorted(projection.at.items())],
                "gain": {"value": 100 * projection.gain_per_step.value, "low": 100 * projection.gain_per_step.low,
                         "high": 100 * projection.gain_per_step.high},
                "band": projection.band,
            }
        cache.set(key, fitted, CACHE_SECONDS)
    projection = fitted["projection"]
    context: dict[str, Any] = {"points": fitted["points"], "projection": projection, "reason": fitted["reason"],
                               "threshold": threshold, "threshold_text": f"{threshold:g}",
                               "fingerprint": f"{version}-{threshold:g}"}
    if projection is not None:
        examples = Example.objects.in_project(project).count()
        context["examples"] = examples
        context["beyond_pool"] = [row for row in projection["at"] if row["n"] > examples]
        context["should_stop"] = projection["gain"]["value"] < threshold
        context["chart"] = {"points": fitted["points"], "band": projection["band"], "n_now": projection["n_now"]}
    return context


def _parse_threshold(raw: str) -> float:
    try:
        value = float(raw.replace(",", "."))
    except ValueError:
        raise ValueError(f"“{raw[:20]}” is not a number: give the macro-F1 points per 100 labels, e.g. 0.5.") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise ValueError("The threshold is in macro-F1 points per 100 labels: a number from 0 to 100, e.g. 0.5.")
    return value


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def projection_panel(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """GET: the projection region (204 to a poll while nothing changed). POST (managers): set the threshold."""
    access = get_access(request, pk, role=Role.MANAGER if request.method == "POST" else Role.VIEWER)
    project = access.project
    error, status = "", 200
    if request.method == "POST":
        try:
            value = _parse_threshold(request.POST.get("stop_gain_points", "").strip())
        except ValueError as exc:
            error, status = str(exc), 400
        else:
            ProjectionSetting.objects.update_or_create(
                project=project, defaults={"stop_gain_points": value, "updated_at": timezone.now()})
            if not request.htmx:
                return redirect("learning:dashboard", project.pk)
    elif request.htmx and request.GET.get("v"):
        if request.GET["v"] == f"{fingerprint(project)}-{ProjectionSetting.stop_gain_points_of(project):g}":
            return HttpResponse(status=204)
    context = {"project": project, "is_manager": access.is_manager, "error": error,
               **projection_context(project)}
    template = "learning/partials/feasibility-panel.html" if request.htmx else "learning/projection.html"
    return render(request, template, context, status=status)
