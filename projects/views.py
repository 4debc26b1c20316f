"""Pages of the projects app: project list, create, settings, taxonomy, datasets."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from rest_framework.authtoken.models import Token

from annotation.models import Annotation
from projects import actions
from projects.access import get_project_for_user, managed_teams
from projects.forms import (
    ColumnMapForm,
    LabelAddForm,
    LabelEditForm,
    ProjectCreateForm,
    ProjectSettingsForm,
    UploadForm,
)
from projects.models import Dataset, DatasetStatus, Example, Project, Role


@require_GET
@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    projects = (
        Project.objects.visible_to(request.user).select_related("team").distinct()
        .annotate(example_count=Count("examples", distinct=True))
    )
    return render(request, "projects/project_list.html", {
        "projects": projects, "can_create": managed_teams(request.user).exists(),
    })


@require_http_methods(["GET", "POST"])
@login_required
def project_create(request: HttpRequest) -> HttpResponse:
    teams = managed_teams(request.user)
    if not teams.exists():
        messages.error(request, "Only a team manager can create projects. Ask an admin to make you one.")
        return redirect("projects:list")
    form = ProjectCreateForm(request.POST or None, teams=teams)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            project = actions.create_project(
                data["team"], name=data["name"], task_type=data["task_type"], labels=data["labels"],
                created_by=request.user, description=data["description"], guidelines=data["guidelines"],
            )
        except actions.ActionError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Project “{project.name}” created. Upload data to start.")
            return redirect("projects:upload", project.pk)
    return render(request, "projects/project_create.html", {"form": form})


@require_GET
@login_required
@vary_on_headers("HX-Request")
def project_detail(request: HttpRequest, pk: int) -> HttpResponse:
    from annotation.dashboard import recent_activity

    project = get_project_for_user(request, pk)
    is_manager = project.user_role == Role.MANAGER  # type: ignore[attr-defined]
    if request.htmx and request.htmx.target == "project-activity":
        return render(request, "projects/partials/project-activity.html", {
            "project": project, "activity": recent_activity(project, is_manager=is_manager)})
    datasets = list(project.datasets.all()[:20])
    context = {
        "project": project,
        "taxonomy": project.current_taxonomy(),
        "datasets": datasets,
        "example_count": Example.objects.in_project(project).count(),
        "labelled_count": Annotation.objects.in_project(project).values("example").distinct().count(),
        "is_manager": is_manager,
        "has_running_import": any(d.is_running for d in datasets),
    }
    if request.htmx and request.htmx.target == "project-datasets":
        return render(request, "projects/partials/project-datasets.html", context)
    context["activity"] = recent_activity(project, is_manager=is_manager)
    return render(request, "projects/project_detail.html", context)


def _taxonomy_context(project: Project, form: LabelAddForm | None = None) -> dict[str, object]:
    taxonomy = project.current_taxonomy()
    return {
        "project": project,
        "taxonomy": taxonomy,
        "label_form": form or LabelAddForm(initial={"expected_version": taxonomy.number}),
        "versions": project.taxonomy_versions.all()[:10],
    }


@require_http_methods(["GET", "POST"])
@login_required
def project_settings(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = ProjectSettingsForm(request.POST or None, instance=project)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Settings saved.")
        return redirect("projects:settings", project.pk)
    return render(request, "projects/project_settings.html", {"form": form, **_taxonomy_context(project)})


@require_POST
@login_required
@vary_on_headers("HX-Request")
def taxonomy_add_label(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = LabelAddForm(request.POST)
    status = 200
    if form.is_valid():
        try:
            actions.add_labels(
                project,
                labels=[actions.LabelSpec(name=form.cleaned_data["name"],
                                          description=form.cleaned_data["description"])],
                user=request.user, expected_number=form.cleaned_data["expected_version"],
            )
        except actions.ActionError as exc:
            form.add_error(None, str(exc))
            status = 409 if isinstance(exc, actions.StaleTaxonomyError) else 400
        else:
            form = None
            if not request.htmx:
                messages.success(request, "Label added.")
                return redirect("projects:settings", project.pk)
    else:
        status = 400
    if request.htmx:
        # htmx does not swap 4xx answers by default; the form shows the error instead.
        return render(request, "projects/partials/taxonomy-editor.html", _taxonomy_context(project, form))
    return render(request, "projects/project_settings.html",
                  {"form": ProjectSettingsForm(instance=project), **_taxonomy_context(project, form)}, status=status)


def _apply_label_op(project: Project, data: dict[str, Any], user: Any) -> str:
    """Run one taxonomy editor operation; returns the changelog of the new version."""
    key, expected = data["key"], data["expected_version"]
    op = data["op"]
    if op == "edit":
        version = actions.edit_label(project, key=key, user=user, expected_number=expected, name=data["name"],
                                     description=data["description"], colour=data["colour"] or None,
                                     shortcut=data["shortcut"])
    elif op == "merge":
        version = actions.merge_labels(project, into=key, merged=data["merged"], user=user, expected_number=expected)
    elif op == "split":
        version = actions.split_label(project, key=key, into=actions.parse_label_lines(data["into"]), user=user,
                                      expected_number=expected)
    else:
        version = actions.set_label_deprecated(project, key=key, deprecated=op == "deprecate", user=user,
                                               expected_number=expected)
    return " ".join(version.changelog)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def taxonomy_edit_label(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    taxonomy = project.current_taxonomy()
    form = LabelEditForm(request.POST, keys=[(lab.key, lab.name) for lab in taxonomy.labels.all()])
    status, error, done = 200, "", ""
    if form.is_valid():
        try:
            done = _apply_label_op(project, form.cleaned_data, request.user)
        except actions.ActionError as exc:
            error = str(exc)
            status = 409 if isinstance(exc, actions.StaleTaxonomyError) else 400
    else:
        error = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
        status = 400
    if request.htmx:
        # htmx does not swap 4xx answers by default; the editor shows the message instead.
        context = _taxonomy_context(project)
        context.update(edit_error=error, edit_done=done, edit_key=form.data.get("key"))
        response = render(request, "projects/partials/taxonomy-editor.html", context)
        response["HX-Trigger"] = "taxonomy-changed"
        return response
    if error:
        messages.error(request, error)
        return render(request, "projects/project_settings.html",
                      {"form": ProjectSettingsForm(instance=project), **_taxonomy_context(project)}, status=status)
    messages.success(request, done)
    return redirect("projects:settings", project.pk)


@require_http_methods(["GET", "POST"])
@login_required
def dataset_upload(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            dataset = actions.create_dataset_from_upload(project, upload=form.cleaned_data["file"], user=request.user)
        except actions.ActionError as exc:
            form.add_error("file", str(exc))
        else:
            return redirect("projects:dataset", project.pk, dataset.pk)
    return render(request, "projects/dataset_upload.html", {"project": project, "form": form}, 
                  status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def dataset_detail(request: HttpRequest, pk: int, dataset_pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk)
    dataset = get_object_or_404(Dataset, pk=dataset_pk, project=project)
    form = None
    if dataset.status == DatasetStatus.DRAFT:
        project = get_project_for_user(request, pk, role=Role.MANAGER)
        initial = {
            "text_column": actions.guess_column(dataset.columns, ["text", "content", "body", "sentence"]),
            "label_column": actions.guess_column(dataset.columns, ["label", "labels", "category", "class"]),
            "id_column": actions.guess_column(dataset.columns, ["id", "external_id", "uid"]),
        }
        form = ColumnMapForm(request.POST or None, dataset=dataset, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                actions.start_import(dataset, **form.cleaned_data)
            except actions.ActionError as exc:
                form.add_error(None, str(exc))
            else:
                return redirect("projects:dataset", project.pk, dataset.pk)
    elif request.method == "POST":
        messages.info(request, f"{dataset.name} is already {dataset.get_status_display().lower()}.")
        return redirect("projects:dataset", project.pk, dataset.pk)
    context = {"project": project, "dataset": dataset, "form": form, "progress": dataset.progress()}
    if request.htmx and request.htmx.target == "dataset-status":
        response = render(request, "projects/partials/dataset-status.html", context)
        if not dataset.is_running:
            # Finished: refresh the whole page once so the report and counts show.
            response["HX-Refresh"] = "true"
        return response
    return render(request, "projects/dataset_detail.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def api_token(request: HttpRequest) -> HttpResponse:
    """The user's REST API token: shown, created or replaced."""
    token = Token.objects.filter(user=request.user).first()
    if request.method == "POST":
        if token:
            token.delete()
        token = Token.objects.create(user=request.user)
        messages.success(request, "A new token was created; the old one no longer works.")
        return redirect("api-token")
    return render(request, "projects/api_token.html", {"token": token})
