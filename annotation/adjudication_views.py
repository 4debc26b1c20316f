"""The agreement page (every member reads it) and the adjudication page (managers decide disagreements).

The adjudication page is keyboard-first like the labelling page: the current item is outlined, a label's
key chooses its final label (multi-label: keys toggle, Enter saves), j / k move between items.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from annotation import adjudication, stats
from annotation.stats import label_display, labels_by_key
from labelhub.errors import ActionError
from projects.access import AuthenticatedHttpRequest, get_access, get_project_for_user
from projects.models import Project, Role

# Items shown at once; the list refills as decisions take items off it.
PAGE_SIZE = 30


@require_GET
@login_required
def agreement(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Agreement between annotators: kappa / alpha overall, per label, per pair (a heat map), per annotator."""
    access = get_access(request, pk)
    project = access.project
    context: dict[str, Any] = {"project": project, "details": stats.agreement_details(project),
                               "is_manager": access.is_manager}
    if access.is_manager:
        context["conflicts"] = adjudication.conflict_counts(project)
    return render(request, "annotation/agreement.html", context)


def _list_context(project: Project) -> dict[str, Any]:
    found = adjudication.conflicts(project)
    shown = found[:PAGE_SIZE]
    taxonomy = project.current_taxonomy()
    labels = labels_by_key(project, taxonomy, also={k for c in shown for a in c.answers for k in a.keys})
    for conflict in shown:
        for answer in conflict.answers:
            answer.shown = [label_display(labels.get(k), k) for k in answer.keys]
        keys = conflict.resolution.keys or ()
        conflict.majority = [label_display(labels.get(k), k) for k in keys]
    return {
        "project": project, "conflicts": shown, "open_count": len(found),
        "tie_count": sum(1 for c in found if c.is_tie), "taxonomy": taxonomy,
        "choices": list(taxonomy.active_labels().order_by("position", "id")),
    }


@require_GET
@login_required
@vary_on_headers("HX-Request")
def adjudication_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Disagreements nobody has decided yet, ties (left out of training) first."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    context = _list_context(project)
    if request.htmx and request.htmx.target == "adjudication-list":
        return render(request, "annotation/partials/adjudication-list.html", context)
    return render(request, "annotation/adjudication.html", context)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def adjudicate(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Save a manager's final label for one item (`example`, `label_keys`, optional `note`)."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    error = notice = ""
    try:
        example_id = int(request.POST.get("example", ""))
        taxonomy = request.POST.get("taxonomy_version")
        decided = adjudication.adjudicate(
            project, example_id=example_id, user=request.user, label_keys=request.POST.getlist("label_keys"),
            note=request.POST.get("note", ""), taxonomy_number=int(taxonomy) if taxonomy else None)
    except ValueError:
        error = "Which item? The form lost its item number; reload the page."
    except ActionError as exc:
        error = str(exc)
    else:
        names = dict(project.current_taxonomy().labels.values_list("key", "name"))
        notice = (f"Final label of “{decided.example.text[:60]}”: "
                  f"{', '.join(names.get(k, k) for k in decided.label_keys)}. The model retrains on it.")
    if not request.htmx:
        if error:
            messages.error(request, error)
        else:
            messages.success(request, notice)
        return redirect(reverse("annotation:adjudication", args=[project.pk]))
    # 200 with the message in the list, as htmx swaps no 4xx answer; the database is unchanged on an error.
    response = render(request, "annotation/partials/adjudication-list.html",
                      {**_list_context(project), "error": error, "notice": notice})
    if not error:
        response["HX-Trigger"] = "labels-changed"
    return response
