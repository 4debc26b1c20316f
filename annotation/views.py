"""The labelling page: one item at a time, keyboard first, every action an HTMX swap of `#label-item`.

Without JavaScript the same forms post and redirect, so the page works with a
mouse alone; with htmx each action answers with the next item in the same
response, so it is on screen as soon as the label is saved.
"""
from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.humanize.templatetags.humanize import intcomma
from django.db import connection
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from annotation import actions, progress, taxonomy
from annotation.actions import Item
from annotation.models import (
    Annotation,
    Assignment,
    Comment,
    ExampleScore,
    Flag,
    Relabel,
)
from annotation.taxonomy import MergePreview, merge_preview
from labelhub.errors import ActionError
from projects import taxonomy as project_taxonomy
from projects.access import AuthenticatedHttpRequest, ProjectAccess, get_project_for_user
from projects.forms import LabelEditForm, ProjectSettingsForm, taxonomy_editor_context
from projects.models import Example, Project, Role, TaxonomyVersion

# What the page shows beside an item, in one statement: the header's own and re-review counts (read
# fresh: they change with every label), the model's suggestion, and whether the item has comments or a
# flag of this annotator's (the comments are read only when there are some).
_ASSIGNMENT, _RELABEL, _COMMENT, _FLAG, _SCORE = (model._meta.db_table for model in
                                                   (Assignment, Relabel, Comment, Flag, ExampleScore))
_ITEM_FIGURES = f"""
SELECT (SELECT count(*) FROM {_ASSIGNMENT} WHERE project_id = %(project)s AND annotator_id = %(user)s
        AND status = 'submitted'),
       (SELECT count(*) FROM {_RELABEL} WHERE project_id = %(project)s AND done_at IS NULL),
       (SELECT count(*) FROM {_COMMENT} WHERE example_id = %(example)s),
       (SELECT reason FROM {_FLAG} WHERE example_id = %(example)s AND raised_by_id = %(user)s
        AND resolved_at IS NULL ORDER BY id LIMIT 1),
       (SELECT predicted_keys FROM {_SCORE} WHERE example_id = %(example)s AND model_version_number IS NOT NULL),
       (SELECT confidence FROM {_SCORE} WHERE example_id = %(example)s AND model_version_number IS NOT NULL),
       (SELECT suggested_spans FROM {_SCORE} WHERE example_id = %(example)s AND model_version_number IS NOT NULL)
"""


def _suggestion(predicted: Any, confidence: float | None, by_key: dict[str, Any]) -> dict[str, Any] | None:
    keys = json.loads(predicted) if isinstance(predicted, str | bytes) else predicted
    active = [key for key in keys or [] if key in by_key and not by_key[key].is_deprecated]
    if not active:
        return None
    return {"keys": active, "names": [by_key[k].name for k in active], "confidence": confidence}


def _item_context(request: AuthenticatedHttpRequest, project: Project, item: Item | None, *, error: str = "",
                  notice: str = "", taxonomy: TaxonomyVersion | None = None) -> dict[str, Any]:
    taxonomy = taxonomy or project.current_taxonomy()
    labels = progress.labels_of(taxonomy)
    by_key = {label.key: label for label in labels}
    example = item.example if item is not None else None
    with connection.cursor() as cursor:
        cursor.execute(_ITEM_FIGURES, {"project": project.pk, "user": request.user.pk,
                                       "example": example.pk if example is not None else None})
        my_count, relabel_open, n_comments, flag_reason, predicted, confidence, suggested = cursor.fetchone()
    context: dict[str, Any] = {
        "project": project, "item": item, "taxonomy": taxonomy,
        "labels": [label for label in labels if not label.is_deprecated],
        "progress": {**progress.project_counts(project), "relabel_open": relabel_open},
        "my_count": my_count,
        "error": error, "notice": notice,
        "is_manager": ProjectAccess(project=project, role=project.user_role).is_manager,
    }
    if example is not None:
        assert item is not None
        if project.is_span:
            context["span_data"] = _span_data(project, item, suggested, by_key)
            suggested_spans = context["span_data"]["suggested"]
            accepted = [{k: s[k] for k in ("start", "end", "label")} for s in suggested_spans if _accepted_on_enter(s)]
            context.update(span_suggestions=len(suggested_spans), span_accepted=len(accepted),
                           span_accept_percent=round(SPAN_ACCEPT_AT * 100), span_suggested_json=json.dumps(accepted))
        context.update(
            suggestion=None if project.is_span else _suggestion(predicted, confidence, by_key),
            comments=list(Comment.objects.filter(example=example).select_related("author")) if n_comments else [],
            open_flag={"reason": flag_reason} if flag_reason is not None else None,
            metadata=sorted(example.metadata_for_annotators().items()),
            previous=_previous_labels(example, by_key) if item.relabel is not None else None,
        )
    return context


# A suggested span this confident or more is taken by Enter; a weaker one is drawn fainter and is only
# kept when the annotator accepts it with `a`. Early models suggest spans at 10-20 %: accepting those
# with the item would store the model's guesses as people's labels.
SPAN_ACCEPT_AT = 0.5


def _accepted_on_enter(span: dict[str, Any]) -> bool:
    confidence = span.get("confidence")
    return confidence is None or float(confidence) >= SPAN_ACCEPT_AT


def _span_data(project: Project, item: Item, suggested: Any, by_key: dict[str, Any]) -> dict[str, Any]:
    """What the span page's script draws: the text, its tokens, the model's suggested spans (active labels only),
    a re-review item's previous spans, and each active label's name, colour and key (json_script, never run)."""
    example = item.example
    suggested = json.loads(suggested) if isinstance(suggested, str | bytes) else suggested
    active = {key: label for key, label in by_key.items() if not label.is_deprecated}
    previous: list[dict[str, Any]] = []
    if item.relabel is not None:
        latest = Annotation.objects.filter(example=example).order_by("-created_at", "-id").first()
        previous = [span for span in (latest.spans if latest else []) if span.get("label") in active]
    return {
        "text": example.text,
        "tokens": actions.example_tokens(example, project),
        "suggested": [{"start": s["start"], "end": s["end"], "label": s["label"],
                       "confidence": s.get("confidence")}
                      for s in suggested or [] if isinstance(s, dict) and s.get("label") in active],
        "initial": previous,
        "accept_at": SPAN_ACCEPT_AT,
        "labels": {key: {"name": label.name, "colour": label.colour, "shortcut": label.shortcut}
                   for key, label in active.items()},
    }


def _previous_labels(example: Example, by_key: dict[str, Any]) -> list[str]:
    latest = Annotation.objects.filter(example=example).order_by("-created_at", "-id").first()
    if latest is None:
        return []
    return [by_key[k].name if k in by_key else k for k in latest.label_keys]


def _render_item(request: AuthenticatedHttpRequest, project: Project, item: Item | None, *, status: int = 200,
                 error: str = "", notice: str = "", taxonomy: TaxonomyVersion | None = None) -> HttpResponse:
    context = _item_context(request, project, item, error=error, notice=notice, taxonomy=taxonomy)
    template = "annotation/partials/label-item.html" if request.htmx else "annotation/label.html"
    return render(request, template, context, status=status)


@require_GET
@login_required
@vary_on_headers("HX-Request")
def label(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The labelling page; `?example=ID` lets a manager open any item."""
    project = get_project_for_user(request, pk, role=Role.ANNOTATOR)
    picked = request.GET.get("example")
    if picked:
        project = get_project_for_user(request, pk, role=Role.MANAGER)
        example = get_object_or_404(Example, pk=picked if picked.isdigit() else 0, project=project)
        item: Item | None = actions.pick(project, example=example, user=request.user)
    else:
        item = actions.next_item(project, user=request.user)
    return _render_item(request, project, item)


def _after_action(request: AuthenticatedHttpRequest, project: Project, *, error: str = "", notice: str = "",
                  item: Item | None = None, taxonomy: TaxonomyVersion | None = None) -> HttpResponse:
    """HTMX: the next item (or the same one with a message). Plain: back to the page with a message."""
    if request.htmx:
        if item is None:
            item = actions.next_item(project, user=request.user)
        return _render_item(request, project, item, error=error, notice=notice, taxonomy=taxonomy)
    if error:
        messages.error(request, error)
    elif notice:
        messages.info(request, notice)
    return redirect("annotation:label", project.pk)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def submit(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.ANNOTATOR)
    version = request.POST.get("taxonomy_version", "")
    try:
        annotation = actions.submit_annotation(project, ticket=request.POST.get("ticket", ""), user=request.user,
                                               label_keys=request.POST.getlist("label"),
                                               taxonomy_number=int(version) if version.isdigit() else None,
                                               spans=_posted_spans(request))
    except actions.SpanError as exc:
        # The spans do not fit: say why and keep the annotator's tagging on screen (htmx swaps nothing on a
        # 4xx; the page's script shows this text), or re-render the page (without JavaScript).
        if request.htmx:
            return HttpResponse(str(exc), status=exc.status, content_type="text/plain; charset=utf-8")
        item = actions.next_item(project, user=request.user)
        return _render_item(request, project, item, status=exc.status, error=str(exc))
    except ActionError as exc:
        return _after_action(request, project, error=str(exc))
    # The taxonomy the label was checked against is the current one: render with it.
    return _after_action(request, project, taxonomy=annotation.taxonomy_version)


def _posted_spans(request: AuthenticatedHttpRequest) -> Any:
    """The form's `spans` field (JSON), None when absent; text that is not JSON becomes a clear refusal."""
    raw = request.POST.get("spans")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise actions.SpanError(f"The spans are not valid JSON ({exc}); reload the page and tag again.") from exc


@require_POST
@login_required
@vary_on_headers("HX-Request")
def skip(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.ANNOTATOR)
    try:
        actions.skip(project, ticket=request.POST.get("ticket", ""), user=request.user)
    except ActionError as exc:
        return _after_action(request, project, error=str(exc))
    return _after_action(request, project, notice="Skipped; it goes to someone else.")


@require_POST
@login_required
@vary_on_headers("HX-Request")
def undo(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.ANNOTATOR)
    try:
        item = actions.undo_last(project, user=request.user)
    except ActionError as exc:
        return _after_action(request, project, error=str(exc))
    return _after_action(request, project, item=item, notice="Undone: label this item again.")


def _example(project: Project, example_pk: int) -> Example:
    return get_object_or_404(Example, pk=example_pk, project=project)


def _safe_next(request: AuthenticatedHttpRequest, fallback: str) -> str:
    """The form's `next` when it is a path on this site; anything else (another host, javascript:) is ignored."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return fallback


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def comments(request: AuthenticatedHttpRequest, pk: int, example_pk: int) -> HttpResponse:
    """An example's comment thread; annotators and managers add to it."""
    project = get_project_for_user(request, pk, role=Role.ANNOTATOR if request.method == "POST" else Role.VIEWER)
    example = _example(project, example_pk)
    error = ""
    if request.method == "POST":
        try:
            actions.add_comment(example, user=request.user, body=request.POST.get("body", ""))
        except ActionError as exc:
            error = str(exc)
        if not request.htmx:
            if error:
                messages.error(request, error)
            return redirect(_safe_next(request, reverse("annotation:label", args=[project.pk])))
    context = {"project": project, "example": example, "comment_error": error,
               "comments": Comment.objects.filter(example=example).select_related("author")}
    return render(request, "annotation/partials/comment-thread.html", context, status=400 if error else 200)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def flag(request: AuthenticatedHttpRequest, pk: int, example_pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.ANNOTATOR)
    example = _example(project, example_pk)
    error = ""
    try:
        actions.flag_example(example, user=request.user, reason=request.POST.get("reason", ""))
    except ActionError as exc:
        error = str(exc)
    if not request.htmx:
        if error:
            messages.error(request, error)
        else:
            messages.success(request, "Flagged for a manager's review.")
        return redirect("annotation:label", project.pk)
    context = {"project": project, "example": example, "flag_error": error,
               "open_flag": Flag.objects.filter(example=example, raised_by=request.user,
                                                resolved_at__isnull=True).first()}
    return render(request, "annotation/partials/flag-box.html", context, status=400 if error else 200)


# --- Taxonomy editor (its operations move annotations, so they are this layer's) -------------------------------


def _apply_label_op(project: Project, data: dict[str, Any], user: Any) -> str:
    """Run one taxonomy editor operation; returns the changelog of the new version."""
    key, expected = data["key"], data["expected_version"]
    op = data["op"]
    if op == "edit":
        version = project_taxonomy.edit_label(project, key=key, user=user, expected_number=expected, name=data["name"],
                                     description=data["description"], colour=data["colour"] or None,
                                     shortcut=data["shortcut"])
    elif op == "merge":
        version = taxonomy.merge_labels(project, into=key, merged=data["merged"], user=user, expected_number=expected)
    elif op == "split":
        into = project_taxonomy.parse_label_lines(data["into"])
        version = taxonomy.split_label(project, key=key, into=into, user=user, expected_number=expected)
    else:
        version = taxonomy.set_label_deprecated(project, key=key, deprecated=op == "deprecate", user=user,
                                               expected_number=expected)
    return " ".join(version.changelog)


@require_POST
@login_required
@vary_on_headers("HX-Request")
def taxonomy_edit_label(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project_for_user(request, pk, role=Role.MANAGER)
    taxonomy = project.current_taxonomy()
    form = LabelEditForm(request.POST, keys=[(lab.key, lab.name) for lab in taxonomy.labels.all()])
    status, error, done = 200, "", ""
    merge_confirm: MergePreview | None = None
    if form.is_valid():
        try:
            if form.cleaned_data["op"] == "merge" and request.POST.get("confirm") != "1":
                # A merge rewrites annotations and cannot be undone: first say how many, and ask.
                merge_confirm = merge_preview(project, into=form.cleaned_data["key"],
                                              merged=form.cleaned_data["merged"])
            else:
                done = _apply_label_op(project, form.cleaned_data, request.user)
        except ActionError as exc:
            error = str(exc)
            status = exc.status
    else:
        error = "; ".join(f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items())
        status = 400
    extra = {"merge_confirm": merge_confirm, "expected_version": form.data.get("expected_version")}
    if request.htmx:
        # htmx does not swap 4xx answers by default; the editor shows the message instead.
        context = taxonomy_editor_context(project)
        context.update(edit_error=error, edit_done=done, edit_key=form.data.get("key"), **extra)
        response = render(request, "projects/partials/taxonomy-editor.html", context)
        if merge_confirm is None:
            response["HX-Trigger"] = "taxonomy-changed"
        return response
    if error or merge_confirm:
        if error:
            messages.error(request, error)
        context = {"form": ProjectSettingsForm(instance=project), **taxonomy_editor_context(project), **extra}
        return render(request, "projects/project_settings.html", context, status=status)
    messages.success(request, done)
    return redirect("projects:settings", project.pk)


@require_GET
@login_required
def labelled_count(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """How many examples of the project are labelled (the project page's counter, loaded by htmx)."""
    project = get_project_for_user(request, pk)
    count = Annotation.objects.in_project(project).labelled_count()
    return HttpResponse(format_html('<b id="labelled-count">{}</b>', intcomma(count)))
