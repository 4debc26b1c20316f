"""The Explore page: the pool's clusters, the unexplored ones first; a manager adds a label from a cluster and
sends its items to the front of the queue. Managers only (403 for annotators and viewers): it shows the whole
pool and its actions change the taxonomy and the queue."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from annotation.stats import label_display, labels_by_key
from labelhub.errors import ActionError
from learning import explore
from projects import taxonomy as taxonomy_actions
from projects.access import AuthenticatedHttpRequest, get_project_for_user
from projects.models import Project, Role


def _context(project: Project) -> dict[str, Any]:
    result = explore.current(project)
    taxonomy = project.current_taxonomy()
    if result is not None:
        keys = {d["key"] for row in result["clusters"] for d in row["distribution"]}
        labels = labels_by_key(project, taxonomy, also=keys)
        for row in result["clusters"]:
            row["labels"] = [{**label_display(labels.get(d["key"]), d["key"]), "share": d["share"]}
                             for d in row["distribution"]]
    return {"project": project, "result": result, "progress": explore.progress(project), "taxonomy": taxonomy,
            "inline_limit": explore.INLINE_LIMIT, "radius_quantile": explore.RADIUS_QUANTILE}


def _answer(request: AuthenticatedHttpRequest, project: Project, *, error: str = "", notice: str = "") -> HttpResponse:
    if not request.htmx:
        if error:
            messages.error(request, error)
        elif notice:
            messages.success(request, notice)
        return redirect(reverse("learning:explore", args=[project.pk]))
    # 200 with the message in the region: htmx swaps no 4xx answer; nothing was changed on an error.
    return render(request, "learning/partials/explore-results.html",
                  {**_context(project), "error": error, "notice": notice})


@require_GET
@login_required
@vary_on_headers("HX-Request")
def explore_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    context = _context(project)
    if request.htmx and request.htmx.target == "explore-results":
        return render(request, "learning/partials/explore-results.html", context)
    return render(request, "learning/explore.html", context)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def explore_run(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Cluster the pool: at once for a small pool, else in the background (the page shows its progress)."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    try:
        how = explore.start(project)
    except ActionError as exc:
        return _answer(request, project, error=str(exc))
    return _answer(request, project, notice="Clustered." if how == "done" else
                   "Clustering in the background; this page shows its progress.")


@require_POST
@login_required
@vary_on_headers("HX-Request")
def explore_send(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Send one cluster's unlabelled items to the front of the annotation queue."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    try:
        sent = explore.send_to_front(project, key=request.POST.get("key", ""),
                                     cluster=int(request.POST.get("cluster", "")))
    except ValueError:
        return _answer(request, project, error="Which cluster? The form lost its cluster number; reload the page.")
    except ActionError as exc:
        return _answer(request, project, error=str(exc))
    return _answer(request, project, notice=f"{sent} item{'s' if sent != 1 else ''} of the cluster go to the front "
                   "of the labelling queue, nearest its centre first.")


@require_POST
@login_required
@vary_on_headers("HX-Request")
def explore_add_label(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Add a label to the taxonomy (a new version), named after what a cluster shows."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    name = request.POST.get("name", "").strip()
    description = request.POST.get("description", "").strip()[:500]
    try:
        expected = int(request.POST["taxonomy_version"]) if request.POST.get("taxonomy_version") else None
        version = taxonomy_actions.add_labels(
            project, labels=[taxonomy_actions.LabelSpec(name=name, description=description)], user=request.user,
            expected_number=expected)
    except ValueError:
        return _answer(request, project, error="The taxonomy version in the form is not a number; reload the page.")
    except ActionError as exc:
        return _answer(request, project, error=str(exc))
    return _answer(request, project, notice=f"Added the label “{name}” (taxonomy v{version.number}). "
                   "Send the cluster to the front of the queue to label its items with it.")
