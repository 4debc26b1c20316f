"""Pages of the prediction API: serving threshold, model versions, API keys, webhooks, monitoring.

Each page is one view that also renders its named partial for htmx (the partial's
name is the id of the element it replaces). Members read; managers change things.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from labelhub.errors import ActionError
from learning.models import FinetuneRun, ModelVersion
from projects.access import AuthenticatedHttpRequest, ProjectAccess, get_access, get_project_for_user
from projects.models import Project, Role
from serving import keys, monitoring, webhooks
from serving import served as serving
from serving.forms import ApiKeyForm, ThresholdForm, WebhookForm
from serving.models import ApiKey, ModelPromotion, ThresholdMode, WebhookDelivery, WebhookEndpoint

# --- Serving: threshold and accuracy vs coverage ------------------------------------------------------------------


def _serving_context(access: ProjectAccess, form: ThresholdForm | None = None) -> dict[str, Any]:
    project = access.project
    summary = serving.serving_summary(project)
    if form is None:
        form = ThresholdForm(initial={
            "threshold_mode": summary["threshold_mode"], "confidence_threshold": summary["confidence_threshold"],
            "target_accuracy": round(summary["target_accuracy"] * 100, 2) if summary["target_accuracy"] else 95,
        })
    return {"project": project, "summary": summary, "form": form, "is_manager": access.is_manager,
            "curve_data": {"points": summary["accuracy_coverage"], "threshold": summary["threshold"],
                           "target": summary["target_accuracy"] if summary["threshold_mode"] == "target" else None}}


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def serving_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    access = get_access(request, pk, role=Role.MANAGER if request.method == "POST" else Role.VIEWER)
    project = access.project
    form = None
    status = 200
    if request.method == "POST":
        form = ThresholdForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            target = data["target_accuracy"] / 100 if data["target_accuracy"] is not None else None
            serving.set_threshold(project, mode=data["threshold_mode"],
                                  confidence_threshold=data["confidence_threshold"], target_accuracy=target)
            if not request.htmx:
                messages.success(request, "Threshold saved: it applies from the next prediction.")
                return redirect("serving:serving", project.pk)
            form = None
        else:
            status = 400
    context = _serving_context(access, form)
    if request.htmx:
        # htmx does not swap 4xx answers by default: the form shows its errors with a 200.
        return render(request, "serving/partials/serving-threshold.html", context)
    return render(request, "serving/serving.html", context, status=status)


# --- Model versions: list, compare, promote, roll back ------------------------------------------------------------


def with_heldout_figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each version without a quality report that a fine-tune compared (a candidate that lost, whose report
    is never run; a winner until its report lands) the held-out figures of that comparison: macro-F1 and
    accuracy with their 95 % intervals and ECE on the held-out labels, and how many (``row["heldout"]``).

    Not cross-validated figures: they are shown labelled as held-out, beside the others. Running the quality
    report for a version that serves nothing would cost a cross-validation and make it the project's "latest
    reported" model on the dashboard; the comparison measured it already, on labels it never saw."""
    missing = {row["id"]: row for row in rows if row["macro_f1"] is None}
    if not missing:
        return rows
    for run in (FinetuneRun.objects.filter(candidate_version_id__in=list(missing)).exclude(comparison={})
                .only("number", "candidate_version_id", "comparison")):
        comparison = run.comparison
        candidate = comparison.get("candidate") or {}
        if "macro_f1" not in candidate:
            continue
        missing[run.candidate_version_id]["heldout"] = {
            "finetune": run.number, "n": comparison.get("n_heldout"), "macro_f1": candidate["macro_f1"],
            "accuracy": candidate.get("accuracy"), "ece": candidate.get("ece"),
            "won": bool(comparison.get("candidate_wins")),
        }
    return rows


def _versions_context(request: AuthenticatedHttpRequest, access: ProjectAccess) -> dict[str, Any]:
    project = access.project
    rows = with_heldout_figures(serving.version_rows(project, limit=50))
    compare = []
    for param in ("a", "b"):
        number = request.GET.get(param)
        if number and number.isdigit():
            version = ModelVersion.objects.filter(project=project, number=int(number)).first()
            if version is not None:
                compare.append(version)
    if not compare and len(rows) >= 2:
        serving_row = next((r for r in rows if r["is_serving"]), rows[0])
        other = rows[0] if rows[0]["id"] != serving_row["id"] else rows[1]
        compare = list(ModelVersion.objects.filter(pk__in=[serving_row["id"], other["id"]]).order_by("number"))
    names = dict(project.current_taxonomy().labels.values_list("name", "name"))
    compared: list[dict[str, Any]] = []
    for version in compare:
        metrics = version.report
        threshold = serving.threshold_for(serving.serving_state(project.pk), metrics)
        compared.append({
            "number": version.number, "n_labels": version.n_labels, "created_at": version.created_at,
            "accuracy": metrics.interval("accuracy"), "macro_f1": metrics.interval("macro_f1"),
            "ece": metrics.ece,
            "per_class": {row.get("label"): row.get("f1") for row in metrics.per_class},
            "automation": threshold.expected_coverage, "has_curve": bool(metrics.accuracy_coverage),
        })
    classes = sorted({label for c in compared for label in c["per_class"]}, key=lambda n: (n not in names, n))
    state = serving.serving_state(project.pk)
    return {
        "project": project, "rows": rows, "compared": compared, "classes": classes,
        "is_manager": access.is_manager, "state": state,
        "promotions": ModelPromotion.objects.filter(project=project).select_related("version", "previous", "by")[:10],
        "total": ModelVersion.objects.filter(project=project).count(),
    }


@require_GET
@login_required
@vary_on_headers("HX-Request")
def versions_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    context = _versions_context(request, get_access(request, pk))
    if request.htmx:
        return render(request, "serving/partials/model-versions.html", context)
    return render(request, "serving/versions.html", context)


def _after_version_change(request: AuthenticatedHttpRequest, access: ProjectAccess, message: str) -> HttpResponse:
    if request.htmx:
        return render(request, "serving/partials/model-versions.html",
                      {**_versions_context(request, access), "flash": message})
    messages.success(request, message)
    return redirect("serving:versions", access.project.pk)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def version_promote(request: AuthenticatedHttpRequest, pk: int, number: int) -> HttpResponse:
    access = get_access(request, pk, role=Role.MANAGER)
    project = access.project
    version = get_object_or_404(ModelVersion, project=project, number=number)
    serving.promote_version(project, version=version, user=request.user)
    pinned = not serving.serving_state(project.pk).auto_promote
    return _after_version_change(request, access, f"Version {number} serves now." + (
        " New versions are not promoted automatically until you promote the newest again." if pinned else ""))


@require_POST
@login_required
@vary_on_headers("HX-Request")
def version_rollback(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    access = get_access(request, pk, role=Role.MANAGER)
    project = access.project
    try:
        promotion = serving.rollback(project, user=request.user)
    except ActionError as exc:
        return _after_version_change(request, access, str(exc))
    return _after_version_change(request, access, f"Rolled back: version {promotion.version.number} serves now, "
                                                   "and new versions wait for you to promote them.")


@require_POST
@login_required
@vary_on_headers("HX-Request")
def version_auto_promote(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    access = get_access(request, pk, role=Role.MANAGER)
    project = access.project
    enabled = request.POST.get("auto_promote") == "on"
    serving.set_auto_promote(project, enabled=enabled, user=request.user)
    return _after_version_change(request, access, "New versions are promoted as they are trained." if enabled
                                 else "New versions now wait for a manager to promote them.")


# --- API keys -------------------------------------------------------------------------------------------------------


def _keys_context(project: Project, form: ApiKeyForm | None = None, new_key: str | None = None) -> dict[str, Any]:
    return {"project": project, "form": form or ApiKeyForm(), "new_key": new_key,
            "keys": ApiKey.objects.filter(project=project).select_related("created_by"),
            "rate": settings.API_KEY_RATE}


@require_http_methods(["GET", "POST"])
@login_required
@never_cache  # shows secrets: the new key, the endpoints' signing secrets
@vary_on_headers("HX-Request")
def api_keys_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = ApiKeyForm(request.POST or None)
    new_key = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            _, new_key = keys.create_api_key(project, name=form.cleaned_data["name"],
                                             scopes=form.cleaned_data["scopes"], user=request.user)
            form = ApiKeyForm()
        else:
            status = 400
    # The new key is in this response only: never stored, never shown again (so no redirect here).
    context = _keys_context(project, form, new_key)
    if request.htmx:
        return render(request, "serving/partials/api-keys.html", context)
    return render(request, "serving/api_keys.html", context, status=status)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def api_key_revoke(request: AuthenticatedHttpRequest, pk: int, key_id: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    get_object_or_404(ApiKey, pk=key_id, project=project).revoke()
    if request.htmx:
        return render(request, "serving/partials/api-keys.html", _keys_context(project))
    messages.success(request, "Key revoked: requests with it now get 401.")
    return redirect("serving:api-keys", project.pk)


# --- Webhooks -------------------------------------------------------------------------------------------------------


def _webhooks_context(project: Project, form: WebhookForm | None = None) -> dict[str, Any]:
    return {
        "project": project, "form": form or WebhookForm(),
        "endpoints": WebhookEndpoint.objects.filter(project=project),
        "deliveries": WebhookDelivery.objects.filter(endpoint__project=project).select_related("endpoint")[:50],
        "retry_delays": settings.WEBHOOK_RETRY_DELAYS,
    }


@require_http_methods(["GET", "POST"])
@login_required
@never_cache  # shows secrets: the new key, the endpoints' signing secrets
@vary_on_headers("HX-Request")
def webhooks_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = WebhookForm(request.POST or None)
    shown_form: WebhookForm | None = form  # None after a success: the page then offers a fresh form
    status = 200
    if request.method == "POST":
        registered = False
        if form.is_valid():
            try:
                webhooks.register_endpoint(project, url=form.cleaned_data["url"],
                                           events=form.cleaned_data["events"], user=request.user)
                registered = True
            except ActionError as exc:
                # ftp://, an internal address (SSRF), an unknown event: the form says why.
                form.add_error("url", str(exc))
        if registered:
            if not request.htmx:
                messages.success(request, "Webhook registered.")
                return redirect("serving:webhooks", project.pk)
            shown_form = None
        else:
            status = 400
    context = _webhooks_context(project, shown_form)
    if request.htmx:
        target = request.htmx.target
        if target == "webhook-deliveries":
            return render(request, "serving/partials/webhook-deliveries.html", context)
        return render(request, "serving/partials/webhooks.html", context)
    return render(request, "serving/webhooks.html", context, status=status)


@require_POST
@login_required
@never_cache  # shows secrets: the new key, the endpoints' signing secrets
@vary_on_headers("HX-Request")
def webhook_change(request: AuthenticatedHttpRequest, pk: int, endpoint_id: int) -> HttpResponse:
    """Pause, resume or delete an endpoint."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    endpoint = get_object_or_404(WebhookEndpoint, pk=endpoint_id, project=project)
    action = request.POST.get("action", "")
    if action in {"delete", "pause", "resume"}:
        webhooks.change_endpoint(endpoint, action=action)
    if request.htmx:
        return render(request, "serving/partials/webhooks.html", _webhooks_context(project))
    return redirect("serving:webhooks", project.pk)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def webhook_redeliver(request: AuthenticatedHttpRequest, pk: int, delivery_id: str) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id, endpoint__project=project)
    webhooks.retry_now(delivery)
    if request.htmx:
        return render(request, "serving/partials/webhook-deliveries.html", _webhooks_context(project))
    return redirect("serving:webhooks", project.pk)


# --- Monitoring -----------------------------------------------------------------------------------------------------


@require_GET
@login_required
@vary_on_headers("HX-Request")
def monitoring_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk)
    try:
        days = min(max(int(request.GET.get("days", 14)), 1), 90)
    except ValueError:
        days = 14
    state = serving.serving_state(project.pk)
    context = {
        "project": project, "days": days, "timeline": monitoring.timeline(project, days=days),
        "drift": monitoring.drift(project, version_id=state.version_id),
        "serving_version": (ModelVersion.objects.filter(pk=state.version_id).values_list("number", flat=True).first()
                            if state.version_id is not None else None),
        "threshold_mode": ThresholdMode(state.threshold_mode).label,
    }
    if request.htmx:
        return render(request, "serving/partials/monitoring.html", context)
    return render(request, "serving/monitoring.html", context)
