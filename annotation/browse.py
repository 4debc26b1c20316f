"""The Examples page (managers): find items by text, metadata, label, state or dataset, open any to label it,
and act on a selection: delete, send back for re-labelling, label as; delete a dataset with its examples.

The filters live in the URL's query string, so a filtered view can be shared and survives a reload.
Every bulk action is a POST that first answers a confirmation stating what it will touch (how many
examples, annotations, comments, flags); the confirming POST carries that count back, and the action
refuses (409) if the selection no longer holds as many.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, QuerySet
from django.http import HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from annotation import bulk
from annotation.models import BROWSE_STATES, Annotation, browse_examples
from labelhub.errors import ActionError
from projects.access import AuthenticatedHttpRequest, get_project_for_user
from projects.models import Dataset, Example, Project, Role

FILTERS = ("q", "state", "label", "dataset")
ACTIONS = {"delete": "Delete examples", "relabel": "Send back for re-labelling", "label": "Label as"}
PAGE_SIZE = 25


def _filters(data: QueryDict) -> dict[str, str]:
    """The page's filters as given (unknown values are dropped, so a shared link never errors)."""
    filters = {name: data.get(name, "").strip() for name in FILTERS}
    if filters["state"] not in BROWSE_STATES:
        filters["state"] = ""
    if not filters["dataset"].isdigit():
        filters["dataset"] = ""
    return filters


def _matching(project: Project, filters: dict[str, str]) -> QuerySet[Example]:
    return browse_examples(project, query=filters["q"], state=filters["state"], label_key=filters["label"],
                           dataset_id=int(filters["dataset"]) if filters["dataset"] else None)


def _page_url(project: Project, filters: dict[str, str]) -> str:
    query = urlencode({k: v for k, v in filters.items() if v})
    return reverse("annotation:browse", args=[project.pk]) + (f"?{query}" if query else "")


def _datasets(project: Project) -> list[Dataset]:
    return list(Dataset.objects.filter(project=project).annotate(n_examples=Count("examples")).order_by("-created_at"))


@require_GET
@login_required
@vary_on_headers("HX-Request")
def browse(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Find items by text, metadata, label, prediction, state or dataset; a manager opens any of them to label."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    taxonomy = project.current_taxonomy()
    filters = _filters(request.GET)
    examples = _matching(project, filters)
    page = Paginator(examples.select_related("score"), PAGE_SIZE).get_page(request.GET.get("page"))
    names = {key: label.name for key, label in taxonomy.labels_by_key().items()}
    latest = {example_id: [names.get(k, k) for k in keys] for example_id, keys in
              Annotation.objects.filter(example__in=[e.pk for e in page]).latest_label_keys().items()}
    rows = [{"example": e, "labels": latest.get(e.pk, []),
             "predicted": [names.get(k, k) for k in getattr(getattr(e, "score", None), "predicted_keys", []) or []]}
            for e in page]
    context = {"project": project, "page": page, "rows": rows, "filters": filters, "q": filters["q"],
               "state": filters["state"], "label_key": filters["label"], "labels": taxonomy.labels.all(),
               "active_labels": taxonomy.active_labels(), "datasets": _datasets(project),
               "filter_fields": [(k, v) for k, v in filters.items() if v]}
    template = "annotation/partials/browse-results.html" if request.htmx else "annotation/browse.html"
    return render(request, template, context)


def _selection(project: Project, data: QueryDict, filters: dict[str, str]) -> tuple[QuerySet[Example], list[str]]:
    """The examples a bulk form names: every one matching the filters, or the ticked ids."""
    if data.get("all_matching") == "1":
        return _matching(project, filters), []
    raw = data.getlist("ids")
    bad = [value for value in raw if not value.isdigit()]
    if bad:
        raise ActionError(f"“{bad[0][:40]}” is not an example id; reload the Examples page and tick again.")
    if not raw:
        raise ActionError("No example is selected: tick some, or “all matching”, then choose the action again.")
    return Example.objects.in_project(project).filter(pk__in=[int(v) for v in raw]), raw


@require_POST
@login_required
def bulk_action(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Delete, send back for re-labelling or label a selection: first a confirmation with the count, then the
    action on the confirming POST."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    filters = _filters(request.POST)
    action = request.POST.get("action", "")
    back = _page_url(project, filters)
    context: dict[str, Any] = {"project": project, "action": action, "action_name": ACTIONS.get(action, action),
                               "back": back, "filter_fields": [(k, v) for k, v in filters.items() if v],
                               "all_matching": request.POST.get("all_matching") == "1"}
    examples: QuerySet[Example] | None = None
    try:
        if action not in ACTIONS:
            raise ActionError("Choose an action: delete, send back for re-labelling, or label as a label.")
        examples, ids = _selection(project, request.POST, filters)
        context["ids"] = ids
        label = None
        if action == "label":
            key = request.POST.get("as_label", "")
            label = project.current_taxonomy().active_labels().filter(key=key).first()
            if label is None:
                raise ActionError("Choose the label to give (an active label of the current taxonomy).")
            context["label"] = label
        expected_raw = request.POST.get("expected", "")
        if request.POST.get("confirm") != "1" or not expected_raw.isdigit():
            return _confirm(request, project, context, examples)
        expected = int(expected_raw)
        if action == "delete":
            impact = bulk.delete_examples(project, examples=examples, expected=expected)
            messages.success(request, f"Deleted {impact.examples:,} example{'s' * (impact.examples != 1)} "
                                      f"and {impact.annotations:,} annotation{'s' * (impact.annotations != 1)}; "
                                      "the model updates without them.")
        elif action == "relabel":
            added = bulk.send_to_relabel(project, examples=examples, expected=expected, user=request.user)
            messages.success(request, f"{added:,} example{'s' * (added != 1)} sent back for re-labelling "
                                      f"({expected - added:,} were waiting there already).")
        else:
            assert label is not None
            done = bulk.label_as(project, examples=examples, expected=expected, user=request.user,
                                 label_key=label.key)
            messages.success(request, f"Labelled {done:,} example{'s' * (done != 1)} as “{label.name}”.")
    except ActionError as exc:
        context["error"] = exc.message
        if examples is not None and exc.status == 409:
            # The selection moved under the manager: show it as it is now, to confirm again.
            return _confirm(request, project, context, examples, status=409)
        return render(request, "annotation/bulk_confirm.html", context, status=exc.status)
    return HttpResponseRedirect(back)


def _confirm(request: AuthenticatedHttpRequest, project: Project, context: dict[str, Any],
             examples: QuerySet[Example], *, status: int = 200) -> HttpResponse:
    impact = bulk.impact_of(examples) if context["action"] == "delete" else None
    count = impact.examples if impact is not None else examples.count()
    if not count and "error" not in context:
        context["error"] = "No example matches this selection any more; nothing to do."
        status = 400
    context.update({"count": count, "impact": impact, "confirmable": count > 0})
    return render(request, "annotation/bulk_confirm.html", context, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def delete_dataset(request: AuthenticatedHttpRequest, pk: int, dataset_pk: int) -> HttpResponse:
    """GET: what deleting the dataset takes with it; POST (with that count): delete it, all or nothing."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    dataset = get_object_or_404(Dataset, pk=dataset_pk, project=project)
    back = reverse("annotation:browse", args=[project.pk])
    context: dict[str, Any] = {"project": project, "dataset": dataset, "back": back}
    status = 200
    if request.method == "POST":
        expected_raw = request.POST.get("expected", "")
        try:
            if not expected_raw.isdigit():
                raise ActionError("Confirm from the dataset's delete page: it states what goes with it.")
            impact = bulk.delete_dataset(project, dataset=dataset, expected=int(expected_raw))
        except ActionError as exc:
            context["error"] = exc.message
            status = exc.status
        else:
            messages.success(request, f"Deleted dataset “{dataset.name}” with {impact.examples:,} "
                                      f"example{'s' * (impact.examples != 1)} and {impact.annotations:,} "
                                      f"annotation{'s' * (impact.annotations != 1)}; the model updates without them.")
            return HttpResponseRedirect(back)
    context["impact"] = bulk.impact_of(Example.objects.filter(project=project, dataset=dataset))
    return render(request, "annotation/dataset_delete.html", context, status=status)
