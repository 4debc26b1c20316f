"""Pages of the projects app: project list, create, settings, taxonomy, datasets."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Count
from django.http import HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from labelhub.errors import ActionError
from projects import imports, taxonomy, tokens
from projects.access import AuthenticatedHttpRequest, get_access, get_project_for_user, managed_teams
from projects.forms import (
    ColumnMapForm,
    LabelAddForm,
    PersonalTokenForm,
    ProjectCreateForm,
    ProjectSettingsForm,
    UploadForm,
    taxonomy_editor_context,
)
from projects.models import Dataset, DatasetStatus, Example, PersonalToken, Project, Role


@require_GET
@login_required
def project_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    projects = (
        Project.objects.visible_to(request.user).select_related("team").distinct()
        .annotate(example_count=Count("examples", distinct=True))
    )
    return render(request, "projects/project_list.html", {
        "projects": projects, "can_create": managed_teams(request.user).exists(),
    })


@require_http_methods(["GET", "POST"])
@login_required
def project_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    teams = managed_teams(request.user)
    if not teams.exists():
        messages.error(request, "Only a team manager can create projects. Ask an admin to make you one.")
        return redirect("projects:list")
    form = ProjectCreateForm(request.POST or None, teams=teams)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            with transaction.atomic():
                project = taxonomy.create_project(
                    data["team"], name=data["name"], task_type=data["task_type"], labels=data["labels"],
                    created_by=request.user, description=data["description"], guidelines=data["guidelines"],
                )
                if project.is_span:
                    project.language = data["language"]
                    project.save(update_fields=["language"])
        except ActionError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Project “{project.name}” created. Upload data to start.")
            return redirect("projects:upload", project.pk)
    return render(request, "projects/project_create.html", {"form": form})


@require_GET
@login_required
@vary_on_headers("HX-Request")
def project_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    access = get_access(request, pk)
    project = access.project
    datasets = list(project.datasets.all()[:20])
    # The list polls while an import runs, so an import whose worker died is ended here too.
    if any(d.is_running for d in datasets) and imports.check_stale_imports(project):
        datasets = list(project.datasets.all()[:20])
    context = {
        "project": project,
        "taxonomy": project.current_taxonomy(),
        "datasets": datasets,
        "example_count": Example.objects.in_project(project).count(),
        "is_manager": access.is_manager,
        "has_running_import": any(d.is_running for d in datasets),
    }
    if request.htmx and request.htmx.target == "project-datasets":
        return render(request, "projects/partials/project-datasets.html", context)
    return render(request, "projects/project_detail.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def project_settings(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = ProjectSettingsForm(request.POST or None, instance=project)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Settings saved.")
        return redirect("projects:settings", project.pk)
    return render(request, "projects/project_settings.html", {"form": form, **taxonomy_editor_context(project)})


@require_POST
@login_required
@vary_on_headers("HX-Request")
def taxonomy_add_label(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = LabelAddForm(request.POST)
    shown_form: LabelAddForm | None = form  # None after a success: the editor then offers a fresh form
    status = 200
    if form.is_valid():
        try:
            taxonomy.add_labels(
                project,
                labels=[taxonomy.LabelSpec(name=form.cleaned_data["name"],
                                          description=form.cleaned_data["description"])],
                user=request.user, expected_number=form.cleaned_data["expected_version"],
            )
        except ActionError as exc:
            form.add_error(None, str(exc))
            status = exc.status
        else:
            shown_form = None
            if not request.htmx:
                messages.success(request, "Label added.")
                return redirect("projects:settings", project.pk)
    else:
        status = 400
    if request.htmx:
        # htmx does not swap 4xx answers by default; the form shows the error instead.
        return render(request, "projects/partials/taxonomy-editor.html", taxonomy_editor_context(project, shown_form))
    context = {"form": ProjectSettingsForm(instance=project), **taxonomy_editor_context(project, shown_form)}
    return render(request, "projects/project_settings.html", context, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def dataset_upload(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    form = UploadForm(request.POST or None, request.FILES or None, project=project)
    if request.method == "POST" and form.is_valid():
        try:
            dataset = imports.create_dataset_from_upload(project, upload=form.cleaned_data["file"], user=request.user)
        except ActionError as exc:
            form.add_error("file", str(exc))
        else:
            return redirect("projects:dataset", project.pk, dataset.pk)
    return render(request, "projects/dataset_upload.html", {"project": project, "form": form}, 
                  status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def dataset_detail(request: AuthenticatedHttpRequest, pk: int, dataset_pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk)
    dataset = get_object_or_404(Dataset, pk=dataset_pk, project=project)
    if dataset.status == DatasetStatus.DRAFT:
        get_project_for_user(request, pk, role=Role.MANAGER)
        return _dataset_draft(request, project, dataset)
    if request.method == "POST":
        messages.info(request, f"{dataset.name} is already {dataset.get_status_display().lower()}.")
        return redirect("projects:dataset", project.pk, dataset.pk)
    if dataset.is_running:
        # The progress page polls: it is where an import whose worker died is noticed and ended.
        imports.check_stale_imports(project)
        dataset.refresh_from_db()
    taxonomy_names = set(project.current_taxonomy().labels.values_list("name", flat=True))
    missing_labels = {name: count for name, count in dataset.labels_found.items()
                      if name not in taxonomy_names and name not in dataset.label_mapping}
    context = {"project": project, "dataset": dataset, "form": None, "progress": dataset.progress(),
               "is_manager": project.role_of(request.user) == Role.MANAGER, "missing_labels": missing_labels}
    if request.htmx and request.htmx.target == "dataset-status":
        response = render(request, "projects/partials/dataset-status.html", context)
        if not dataset.is_running:
            # Finished: refresh the whole page once so the report and counts show.
            response["HX-Refresh"] = "true"
        return response
    return render(request, "projects/dataset_detail.html", context)


def _dataset_draft(request: AuthenticatedHttpRequest, project: Project, dataset: Dataset) -> HttpResponse:
    """The upload's second step: a preview of the rows as read, the reading options, the column roles and
    what each label of the file becomes; "Update preview" re-reads the stored file, "Import" starts."""
    data: QueryDict | None = request.POST if request.method == "POST" else None
    text_names, label_names = imports.column_names(project)
    error = ""
    status = 200
    if data is not None:
        current = {"encoding": dataset.encoding, "delimiter": dataset.delimiter, "sheet": dataset.sheet}
        wanted = {key: data.get(key, value) for key, value in current.items()}
        if wanted != current:
            try:
                dataset = imports.change_dialect(dataset, **wanted)
            except ActionError as exc:
                error, status = str(exc), exc.status
                dataset.refresh_from_db()
            else:
                # Read another way, the file has other columns: a choice they lack (or none) is guessed again.
                data = data.copy()
                for field, names in (("text_column", text_names), ("label_column", label_names),
                                     ("id_column", imports.ID_NAMES)):
                    if data.get(field, "") not in dataset.columns:
                        data[field] = imports.guess_column(dataset.columns, names)
    initial = {
        "encoding": dataset.encoding, "delimiter": dataset.delimiter, "sheet": dataset.sheet,
        "text_column": dataset.text_column or imports.guess_column(dataset.columns, text_names),
        "label_column": dataset.label_column or imports.guess_column(dataset.columns, label_names),
        "id_column": dataset.id_column or imports.guess_column(dataset.columns, imports.ID_NAMES),
        "add_unknown_labels": dataset.add_unknown_labels,
    }
    for i, column in enumerate(dataset.columns):
        if column in dataset.hidden_columns:
            initial[f"role_{i}"] = "hidden"
        elif column in dataset.dropped_columns:
            initial[f"role_{i}"] = "dropped"
    label_column = str((data.get("label_column", "") if data is not None else initial["label_column"]) or "")
    text_column = str((data.get("text_column", "") if data is not None else initial["text_column"]) or "")
    labels_found: dict[str, int] = {}
    labels_complete = True
    header: list[str] = []
    rows: list[list[str]] = []
    try:
        header, rows = imports.preview(dataset)
        labels_found, labels_complete = imports.scan_labels(dataset, label_column, text_column=text_column)
    except ActionError as exc:
        error, status = str(exc), exc.status
    taxonomy_labels = [label.name for label in project.current_taxonomy().labels.all() if not label.is_deprecated]
    form = ColumnMapForm(data, dataset=dataset, initial=initial, labels_found=labels_found,
                         taxonomy_labels=taxonomy_labels)
    wants_import = data is not None and data.get("action", "import") == "import" and not error
    if wants_import and form.is_valid():
        try:
            imports.start_import(dataset, **form.mapping())
        except ActionError as exc:
            form.add_error(None, str(exc))
            status = exc.status
        else:
            return redirect("projects:dataset", project.pk, dataset.pk)
    context = {
        "project": project, "dataset": dataset, "form": form, "header": header, "rows": rows, "error": error,
        "labels_found": labels_found, "labels_complete": labels_complete, "label_scan_rows": imports.LABEL_SCAN_ROWS,
        "taxonomy_labels": taxonomy_labels, "label_column": label_column,
    }
    return render(request, "projects/dataset_detail.html", context, status=status)


@require_POST
@login_required
def dataset_retry(request: AuthenticatedHttpRequest, pk: int, dataset_pk: int) -> HttpResponse:
    """A failed import back to its mapping, without uploading again; with `create_labels`, the labels of the
    file that the taxonomy lacks are created and the import runs again at once."""
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    dataset = get_object_or_404(Dataset, pk=dataset_pk, project=project)
    try:
        dataset = imports.retry_import(dataset)
        if request.POST.get("create_labels"):
            imports.start_import(dataset, text_column=dataset.text_column, label_column=dataset.label_column,
                                 id_column=dataset.id_column, add_unknown_labels=True,
                                 hidden_columns=dataset.hidden_columns, dropped_columns=dataset.dropped_columns,
                                 label_mapping=dataset.label_mapping)
            messages.success(request, "The missing labels will be created; the import runs again.")
    except ActionError as exc:
        messages.error(request, str(exc))
    return redirect("projects:dataset", project.pk, dataset.pk)


@require_http_methods(["GET", "POST"])
@login_required
@never_cache
def api_token(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The user's personal API tokens: listed, created (the key shown in this response only)."""
    form = PersonalTokenForm(request.POST or None)
    new_key = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                _, new_key = tokens.create_personal_token(request.user, name=form.cleaned_data["name"],
                                                          expires_in_days=form.cleaned_data["expires_in_days"])
                form = PersonalTokenForm()
            except ActionError as exc:
                form.add_error(None, str(exc))
                status = 400
        else:
            status = 400
    # No redirect after creating: the key is never stored, so this response is the only one that has it
    # (and never_cache keeps it out of the browser's and any proxy's cache).
    return render(request, "projects/api_token.html", {
        "form": form, "new_key": new_key, "tokens": PersonalToken.objects.filter(user=request.user),
    }, status=status)


@require_POST
@login_required
def api_token_revoke(request: AuthenticatedHttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(PersonalToken, pk=token_id, user=request.user)
    token.revoke()
    messages.success(request, f"Token “{token.name}” revoked: it no longer works.")
    return redirect("api-token")
