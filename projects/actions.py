"""Writes that span models or have side effects: projects, taxonomies, imports."""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connection, reset_queries, transaction

from annotation.models import Annotation, AnnotationSource
from labelhub.jobs import enqueue
from projects import importing
from projects.importing import ColumnMap, ImportFormatError, ParsedRow, RowError
from projects.models import (
    Dataset,
    DatasetSource,
    DatasetStatus,
    Example,
    Label,
    Project,
    TaskType,
    TaxonomyVersion,
    Team,
)

logger = logging.getLogger(__name__)

INSERT_BATCH = 2000
PROGRESS_EVERY = 5000
PALETTE = ["#4f6bed", "#e5534b", "#2da44e", "#bf8700", "#8250df", "#1b7c83", "#cf222e", "#6e7781",
           "#d4a72c", "#0969da"]


class ActionError(Exception):
    """A user-facing refusal: the message says what is wrong and what to do."""


class StaleTaxonomyError(ActionError):
    """Someone else changed the taxonomy since the editor loaded it."""


@dataclass(frozen=True)
class LabelSpec:
    name: str
    description: str = ""
    colour: str = ""
    shortcut: str = ""


def parse_label_lines(text: str) -> list[LabelSpec]:
    """'name' or 'name | description' per line, as typed in the project form."""
    specs: list[LabelSpec] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, description = line.partition("|")
        specs.append(LabelSpec(name=name.strip(), description=description.strip()))
    return specs


# Keys the labelling page keeps for itself (skip, undo, flag, comment, help, submit).
RESERVED_SHORTCUTS = frozenset("sufc?")


def _default_shortcut(position: int) -> str:
    return str(position + 1) if position < 9 else ""


def _validate_label_specs(specs: Sequence[LabelSpec], existing: Iterable[str] = ()) -> None:
    seen = {name.casefold() for name in existing}
    for spec in specs:
        if not spec.name:
            raise ActionError("A label needs a name.")
        if len(spec.name) > 100:
            raise ActionError(f"Label name '{spec.name[:40]}…' is longer than 100 characters.")
        if spec.name.casefold() in seen:
            raise ActionError(f"Label '{spec.name}' appears twice; label names must be unique.")
        seen.add(spec.name.casefold())


@transaction.atomic
def create_project(team: Team, *, name: str, task_type: str, labels: Sequence[LabelSpec], created_by: Any,
                   description: str = "", guidelines: str = "") -> Project:
    """Create a project and its first taxonomy version."""
    if task_type not in TaskType.values:
        raise ActionError(f"Unknown task type '{task_type}'.")
    _validate_label_specs(labels)
    if Project.objects.filter(team=team, name=name).exists():
        raise ActionError(f"Team {team} already has a project called '{name}'.")
    project = Project.objects.create(team=team, name=name, task_type=task_type, created_by=created_by,
                                     description=description, guidelines=guidelines)
    version = TaxonomyVersion.objects.create(
        project=project, number=1, created_by=created_by,
        changelog=[f"Created with {len(labels)} label{'s' if len(labels) != 1 else ''}."],
    )
    Label.objects.bulk_create(
        Label(version=version, name=spec.name, description=spec.description,
              colour=spec.colour or PALETTE[i % len(PALETTE)], shortcut=spec.shortcut or _default_shortcut(i),
              position=i)
        for i, spec in enumerate(labels)
    )
    return project


def _copy_version(project: Project, *, user: Any, expected_number: int | None, changelog: list[str]
                  ) -> tuple[TaxonomyVersion, TaxonomyVersion]:
    """Lock the project's taxonomy and start a new version holding a copy of the current labels."""
    # Locking the project row serialises taxonomy edits: two managers editing at
    # once queue up here, and the second one sees the version number move.
    Project.objects.select_for_update().get(pk=project.pk)
    current = project.current_taxonomy()
    if expected_number is not None and current.number != expected_number:
        raise StaleTaxonomyError(
            f"The taxonomy changed while you were editing (you had version {expected_number}, it is now "
            f"version {current.number}). Reload the page and apply your change again."
        )
    new = TaxonomyVersion.objects.create(project=project, number=current.number + 1, created_by=user,
                                         changelog=changelog)
    Label.objects.bulk_create(
        Label(version=new, key=label.key, name=label.name, description=label.description, colour=label.colour,
              shortcut=label.shortcut, is_deprecated=label.is_deprecated, position=label.position)
        for label in current.labels.all()
    )
    return current, new


@transaction.atomic
def add_labels(project: Project, *, labels: Sequence[LabelSpec], user: Any,
               expected_number: int | None = None) -> TaxonomyVersion:
    """Add labels to the project's taxonomy as a new version."""
    if not labels:
        raise ActionError("No labels to add.")
    current = project.current_taxonomy()
    _validate_label_specs(labels, existing=current.labels.values_list("name", flat=True))
    changelog = [f"Added label '{spec.name}'." for spec in labels]
    _, new = _copy_version(project, user=user, expected_number=expected_number, changelog=changelog)
    used_shortcuts = set(new.labels.exclude(shortcut="").values_list("shortcut", flat=True))
    start = new.labels.count()
    created = []
    for offset, spec in enumerate(labels):
        position = start + offset
        shortcut = spec.shortcut or _default_shortcut(position)
        if shortcut in used_shortcuts:
            shortcut = ""
        used_shortcuts.add(shortcut)
        created.append(Label(version=new, name=spec.name, description=spec.description,
                             colour=spec.colour or PALETTE[position % len(PALETTE)], shortcut=shortcut,
                             position=position))
    try:
        Label.objects.bulk_create(created)
    except IntegrityError as exc:
        raise ActionError(f"Could not add the labels: {exc}") from exc
    return new


def _label_in(version: TaxonomyVersion, key: str) -> Label:
    try:
        return version.labels.get(key=key)
    except Label.DoesNotExist:
        raise ActionError(f"Taxonomy v{version.number} has no label with key '{key}'.") from None


def _retrain_after_taxonomy_change(project: Project, reason: str) -> None:
    from learning.actions import request_training

    transaction.on_commit(lambda: request_training(project, reason=reason))


@transaction.atomic
def edit_label(project: Project, *, key: str, user: Any, expected_number: int | None = None,
               name: str | None = None, description: str | None = None, colour: str | None = None,
               shortcut: str | None = None) -> TaxonomyVersion:
    """Rename a label or change its description, colour or shortcut, as a new version."""
    current = project.current_taxonomy()
    old = _label_in(current, key)
    changes: list[str] = []
    if name is not None and name.strip() != old.name:
        name = name.strip()
        _validate_label_specs([LabelSpec(name=name)],
                              existing=current.labels.exclude(key=key).values_list("name", flat=True))
        changes.append(f"Renamed '{old.name}' to '{name}'.")
    if description is not None and description.strip() != old.description:
        changes.append(f"Changed the description of '{name or old.name}'.")
    if colour is not None and colour != old.colour:
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            raise ActionError(f"Colour '{colour}' is not a #rrggbb hex colour.")
        changes.append(f"Changed the colour of '{name or old.name}' to {colour}.")
    if shortcut is not None and shortcut != old.shortcut:
        if len(shortcut) > 1 or shortcut in RESERVED_SHORTCUTS:
            raise ActionError(f"Shortcut '{shortcut}' cannot be used: pick one character other than "
                              f"{', '.join(sorted(RESERVED_SHORTCUTS))} (they are the labelling page's own keys).")
        clash = current.labels.exclude(key=key).filter(shortcut=shortcut).first() if shortcut else None
        if clash is not None:
            raise ActionError(f"Shortcut '{shortcut}' already belongs to '{clash.name}'.")
        changes.append(f"Shortcut of '{name or old.name}' is now " + (f"'{shortcut}'." if shortcut else "none."))
    if not changes:
        raise ActionError("Nothing changed.")
    _, new = _copy_version(project, user=user, expected_number=expected_number, changelog=changes)
    label = new.labels.get(key=key)
    for field, value in (("name", name), ("description", description), ("colour", colour), ("shortcut", shortcut)):
        if value is not None:
            setattr(label, field, value.strip() if field == "description" else value)
    label.save()
    return new


@transaction.atomic
def merge_labels(project: Project, *, into: str, merged: Sequence[str], user: Any,
                 expected_number: int | None = None) -> TaxonomyVersion:
    """Merge labels into one (A + B → A): their annotations move to A and they are retired."""
    current = project.current_taxonomy()
    target = _label_in(current, into)
    sources = [_label_in(current, key) for key in dict.fromkeys(merged) if key != into]
    if not sources:
        raise ActionError("Choose at least one other label to merge into this one.")
    if target.is_deprecated:
        raise ActionError(f"'{target.name}' is deprecated; restore it before merging into it.")
    source_keys = {label.key for label in sources}
    moved = _rewrite_annotation_keys(project, {key: into for key in source_keys})
    changelog = [f"Merged {', '.join(repr(s.name) for s in sources)} into '{target.name}' "
                 f"({moved} annotation{'s' if moved != 1 else ''} moved)."]
    _, new = _copy_version(project, user=user, expected_number=expected_number, changelog=changelog)
    for label in new.labels.filter(key__in=source_keys):
        label.is_deprecated = True
        label.shortcut = ""
        label.description = f"Merged into '{target.name}' in v{new.number}. {label.description}".strip()
        label.save()
    _retrain_after_taxonomy_change(project, f"labels merged into {target.name}")
    return new


def _rewrite_annotation_keys(project: Project, mapping: dict[str, str]) -> int:
    """Replace label keys in every annotation of the project; returns how many annotations changed."""
    annotations = Annotation.objects.in_project(project).only("id", "label_keys")
    if connection.features.supports_json_field_contains:
        from django.db.models import Q

        query = Q()
        for key in mapping:
            query |= Q(label_keys__contains=[key])
        annotations = annotations.filter(query)
    changed: list[Annotation] = []
    total = 0
    for annotation in annotations.iterator(chunk_size=5000):
        keys = list(dict.fromkeys(mapping.get(k, k) for k in annotation.label_keys))
        if keys != annotation.label_keys:
            annotation.label_keys = keys
            changed.append(annotation)
        if len(changed) >= 5000:
            Annotation.objects.bulk_update(changed, ["label_keys"])
            total += len(changed)
            changed = []
    Annotation.objects.bulk_update(changed, ["label_keys"])
    return total + len(changed)


@transaction.atomic
def split_label(project: Project, *, key: str, into: Sequence[LabelSpec], user: Any,
                expected_number: int | None = None) -> TaxonomyVersion:
    """Split a label into new ones (A → B, C): A is retired and its items go to re-review."""
    from annotation.models import Relabel

    current = project.current_taxonomy()
    old = _label_in(current, key)
    if old.is_deprecated:
        raise ActionError(f"'{old.name}' is already deprecated.")
    if len(into) < 2:
        raise ActionError(f"Splitting '{old.name}' needs at least two new labels.")
    _validate_label_specs(into, existing=current.labels.exclude(key=key).values_list("name", flat=True))
    example_ids = _examples_whose_latest_label_has(project, key)
    names = ", ".join(repr(spec.name) for spec in into)
    changelog = [f"Split '{old.name}' into {names}; its {len(example_ids)} labelled "
                 f"item{'s' if len(example_ids) != 1 else ''} go to re-review."]
    _, new = _copy_version(project, user=user, expected_number=expected_number, changelog=changelog)
    retired = new.labels.get(key=key)
    retired.is_deprecated = True
    retired.shortcut = ""
    retired.description = f"Split into {names} in v{new.number}. {retired.description}".strip()
    retired.save()
    used = set(new.labels.exclude(shortcut="").values_list("shortcut", flat=True))
    position = new.labels.count()
    created = []
    for offset, spec in enumerate(into):
        shortcut = spec.shortcut or (old.shortcut if offset == 0 else "") or _default_shortcut(position + offset)
        if shortcut in used:
            shortcut = next((s for s in "123456789" if s not in used), "")
        used.add(shortcut)
        created.append(Label(version=new, name=spec.name, description=spec.description,
                             colour=spec.colour or (old.colour if offset == 0 else PALETTE[(position + offset) % 10]),
                             shortcut=shortcut, position=position + offset))
    Label.objects.bulk_create(created)
    Relabel.objects.bulk_create(
        [Relabel(project=project, example_id=example_id, reason=f"'{old.name}' was split into {names}")
         for example_id in example_ids],
        ignore_conflicts=True,
    )
    _retrain_after_taxonomy_change(project, f"{old.name} split")
    return new


def _examples_whose_latest_label_has(project: Project, key: str) -> list[int]:
    latest: dict[int, list[str]] = {}
    rows = (Annotation.objects.in_project(project).order_by("example_id", "-created_at", "-id")
            .values_list("example_id", "label_keys"))
    for example_id, keys in rows.iterator(chunk_size=10000):
        latest.setdefault(example_id, keys)
    return [example_id for example_id, keys in latest.items() if key in keys]


@transaction.atomic
def set_label_deprecated(project: Project, *, key: str, deprecated: bool, user: Any,
                         expected_number: int | None = None) -> TaxonomyVersion:
    """Retire a label (its annotations stop training the model) or bring it back."""
    current = project.current_taxonomy()
    label = _label_in(current, key)
    if label.is_deprecated == deprecated:
        raise ActionError(f"'{label.name}' is already {'deprecated' if deprecated else 'active'}.")
    if deprecated:
        count = Annotation.objects.in_project(project).with_label(key).count()
        line = (f"Deprecated '{label.name}': annotators no longer see it and its {count} "
                f"annotation{'s' if count != 1 else ''} no longer train the model.")
    else:
        line = f"Restored '{label.name}'."
    _, new = _copy_version(project, user=user, expected_number=expected_number, changelog=[line])
    copy = new.labels.get(key=key)
    copy.is_deprecated = deprecated
    if deprecated:
        copy.shortcut = ""
    copy.save()
    _retrain_after_taxonomy_change(project, f"{label.name} {'deprecated' if deprecated else 'restored'}")
    return new


def taxonomy_diff(old: TaxonomyVersion, new: TaxonomyVersion) -> list[dict[str, Any]]:
    """What changed between two versions, label by label (matched by stable key)."""
    fields = ("name", "description", "colour", "shortcut", "is_deprecated")
    before = {label.key: label for label in old.labels.all()}
    after = {label.key: label for label in new.labels.all()}
    changes: list[dict[str, Any]] = []
    for key, label in after.items():
        if key not in before:
            changes.append({"change": "added", "key": key, "name": label.name})
            continue
        diff = {f: {"from": getattr(before[key], f), "to": getattr(label, f)}
                for f in fields if getattr(before[key], f) != getattr(label, f)}
        if diff:
            kind = "edited"
            if "is_deprecated" in diff:
                kind = "deprecated" if label.is_deprecated else "restored"
            elif "name" in diff:
                kind = "renamed"
            changes.append({"change": kind, "key": key, "name": label.name, "fields": diff})
    for key, label in before.items():
        if key not in after:
            changes.append({"change": "removed", "key": key, "name": label.name})
    return changes


# --- Import -----------------------------------------------------------------------------------------------------


def _file_error(dataset: Dataset, message: str, row: int | None = None) -> dict[str, Any]:
    return {"file": dataset.name, "row": row, "reason": message}


def _check_size(name: str, size: int) -> None:
    limit = settings.MAX_UPLOAD_MB * 1024 * 1024
    if size > limit:
        raise ActionError(
            f"{name} is {size / 1024 / 1024:,.1f} MB; the upload limit is {settings.MAX_UPLOAD_MB} MB. "
            "Split the file, or raise LABELHUB_MAX_UPLOAD_MB."
        )


@transaction.atomic
def create_dataset_from_upload(project: Project, *, upload: UploadedFile, user: Any,
                               source: str = DatasetSource.UPLOAD) -> Dataset:
    """Store an uploaded file and read its column names; the import starts once columns are chosen."""
    name = os.path.basename(upload.name or "upload")
    try:
        file_format = importing.detect_format(name)
    except ImportFormatError as exc:
        raise ActionError(str(exc)) from exc
    _check_size(name, upload.size or 0)
    dataset = Dataset(project=project, name=name, file_format=file_format, source=source, created_by=user)
    dataset.file.save(name, upload, save=False)
    try:
        dataset.columns = importing.read_columns(dataset.file.path, file_format, display_name=name)
    except ImportFormatError as exc:
        dataset.file.delete(save=False)
        raise ActionError(str(exc)) from exc
    if not dataset.columns:
        dataset.file.delete(save=False)
        raise ActionError(f"{name} has no columns: the first row must name them (e.g. text,label).")
    dataset.save()
    return dataset


def guess_column(columns: Sequence[str], candidates: Sequence[str]) -> str:
    lowered = {c.casefold(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return ""


@transaction.atomic
def configure_import(dataset: Dataset, *, text_column: str, label_column: str = "", id_column: str = "",
                     add_unknown_labels: bool = False) -> Dataset:
    """Check and record a draft dataset's column mapping, making it ready to import."""
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    if dataset.status != DatasetStatus.DRAFT:
        raise ActionError(f"{dataset.name} is already {dataset.get_status_display().lower()}.")
    for role, column in (("text", text_column), ("label", label_column), ("id", id_column)):
        if column and column not in dataset.columns:
            raise ActionError(f"Column '{column}' (chosen as {role}) is not in {dataset.name}; "
                              f"its columns are: {', '.join(dataset.columns)}.")
    if not text_column:
        raise ActionError("Choose the column that holds the text.")
    dataset.text_column, dataset.label_column, dataset.id_column = text_column, label_column, id_column
    dataset.add_unknown_labels = add_unknown_labels
    dataset.status = DatasetStatus.QUEUED
    dataset.save()
    return dataset


@transaction.atomic
def start_import(dataset: Dataset, **mapping: Any) -> Dataset:
    """Record the column mapping and queue the import job."""
    dataset = configure_import(dataset, **mapping)
    from projects.jobs import import_dataset

    enqueue(import_dataset, dataset.pk)
    return dataset


def _column_map(dataset: Dataset) -> ColumnMap:
    return ColumnMap(text=dataset.text_column, label=dataset.label_column or None,
                     external_id=dataset.id_column or None)


ProgressCallback = Callable[[int, int, str], None]


def run_import(dataset_id: int, *, progress: ProgressCallback | None = None, embed: bool = True) -> Dataset:
    """Check every row of a dataset's file, then insert them all in one transaction, or none."""
    dataset = Dataset.objects.select_related("project").get(pk=dataset_id)
    if dataset.status not in {DatasetStatus.QUEUED, DatasetStatus.VALIDATING, DatasetStatus.IMPORTING}:
        logger.info("dataset %s is %s; nothing to import", dataset.pk, dataset.status)
        return dataset
    dataset = _run_import(dataset, progress=progress, embed=embed)
    # Every way in (upload page, API upload, bulk push, command line) tells the webhooks, once.
    from learning.webhooks import import_finished

    import_finished(dataset)
    return dataset


def _run_import(dataset: Dataset, *, progress: ProgressCallback | None, embed: bool) -> Dataset:
    project = dataset.project
    path = dataset.file.path

    def report(done: int, total: int, phase: str) -> None:
        dataset.report_progress(done, total, phase)
        if progress:
            progress(done, total, phase)

    try:
        dataset.total_rows = importing.count_rows(path, dataset.file_format)
        dataset.save(update_fields=["total_rows"])
        dataset.mark_started(DatasetStatus.VALIDATING)
        report(0, dataset.total_rows, DatasetStatus.VALIDATING)
        errors, error_count, valid, unknown = _validate(dataset, project, report)
    except ImportFormatError as exc:
        dataset.mark_failed([_file_error(dataset, str(exc))])
        return dataset
    if error_count:
        dataset.mark_failed(errors, error_count=error_count)
        return dataset
    if valid == 0:
        dataset.mark_failed([_file_error(dataset, "The file has no data rows.")])
        return dataset
    dataset.total_rows = valid
    dataset.mark_started(DatasetStatus.IMPORTING)
    try:
        with transaction.atomic():
            imported, labelled = _insert(dataset, project, unknown, report)
            dataset.mark_done(imported=imported, duplicates=valid - imported, labelled=labelled, total=valid)
            if imported and embed:
                # New examples need embeddings before the model can learn from or score them.
                from learning.jobs import embed_project

                enqueue(embed_project, project.pk)
    except (ImportFormatError, ActionError, IntegrityError) as exc:
        # The file changed between the passes, or a label clash: nothing was kept.
        dataset.refresh_from_db()
        dataset.mark_failed([_file_error(dataset, str(exc))])
    return dataset


def _validate(dataset: Dataset, project: Project, report: ProgressCallback
              ) -> tuple[list[dict[str, Any]], int, int, list[str]]:
    taxonomy = project.current_taxonomy()
    labels = {label.name: label for label in taxonomy.labels.all()}
    check_labels = bool(dataset.label_column) and not dataset.add_unknown_labels
    errors: list[dict[str, Any]] = []
    error_count = valid = 0
    unknown: dict[str, None] = {}
    rows = importing.iter_rows(
        dataset.file.path, dataset.file_format, _column_map(dataset),
        known_labels=[name for name, label in labels.items() if not label.is_deprecated] if check_labels else None,
        multi_label=project.is_multi_label, max_text_chars=settings.MAX_TEXT_CHARS, display_name=dataset.name,
    )

    def error(row: int, reason: str) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < Dataset.MAX_STORED_ERRORS:
            errors.append({"file": dataset.name, "row": row, "reason": reason})

    for n, item in enumerate(rows, start=1):
        if isinstance(item, RowError):
            error(item.row, item.reason)
        else:
            valid += 1
            for name in item.labels:
                if name not in labels:
                    unknown.setdefault(name)
                elif labels[name].is_deprecated and not check_labels:
                    error(item.row, f"label '{name}' is deprecated; use its replacement or un-deprecate it")
        if n % PROGRESS_EVERY == 0:
            report(n, dataset.total_rows, DatasetStatus.VALIDATING)
    return errors, error_count, valid, list(unknown)


def _insert(dataset: Dataset, project: Project, unknown: list[str], report: ProgressCallback) -> tuple[int, int]:
    if unknown:
        add_labels(project, labels=[LabelSpec(name=name) for name in unknown], user=dataset.created_by)
    taxonomy = project.current_taxonomy()
    key_of = {label.name: label.key for label in taxonomy.labels.all()}
    rows = importing.iter_rows(
        dataset.file.path, dataset.file_format, _column_map(dataset), known_labels=None,
        multi_label=project.is_multi_label, max_text_chars=settings.MAX_TEXT_CHARS, display_name=dataset.name,
    )
    done = labelled = 0
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, INSERT_BATCH)):
        parsed: list[ParsedRow] = []
        for item in batch:
            if isinstance(item, RowError):
                raise ActionError(f"row {item.row}: {item.reason} (the file changed during the import)")
            parsed.append(item)
        # Duplicates (in the file or already in the project) are skipped by the
        # unique (project, content_hash) constraint and counted at the end.
        Example.objects.bulk_create(
            [Example(project=project, dataset=dataset, text=row.text, metadata=row.metadata,
                     external_id=row.external_id, content_hash=row.content_hash) for row in parsed],
            ignore_conflicts=True,
        )
        with_labels = {row.content_hash: row for row in parsed if row.labels}
        if with_labels:
            ids = dict(Example.objects.filter(project=project, dataset=dataset, content_hash__in=list(with_labels))
                       .values_list("content_hash", "id"))
            annotations = [
                Annotation(example_id=ids[h], annotator=dataset.created_by, taxonomy_version=taxonomy,
                           label_keys=[key_of[name] for name in row.labels], source=AnnotationSource.IMPORT)
                for h, row in with_labels.items() if h in ids
            ]
            Annotation.objects.bulk_create(annotations, ignore_conflicts=True)
            labelled += len(annotations)
        done += len(batch)
        report(done, dataset.total_rows, DatasetStatus.IMPORTING)
        # With DEBUG on, Django keeps every query's SQL; a million-row import
        # would hold gigabytes of INSERT text.
        reset_queries()
    imported = Example.objects.filter(dataset=dataset).count()
    return imported, labelled


def import_records(project: Project, *, records: Sequence[dict[str, Any]], user: Any,
                   add_unknown_labels: bool = False, source: str = DatasetSource.API) -> Dataset:
    """Import JSON records pushed over the API, through the same checks as a file; all or nothing."""
    if not records:
        raise ActionError('No examples given: send {"examples": [{"text": "..."}, ...]}.')
    if len(records) > settings.BULK_IMPORT_MAX_ROWS:
        raise ActionError(f"{len(records):,} examples in one request; the limit is "
                          f"{settings.BULK_IMPORT_MAX_ROWS:,}. Send them in batches or upload a file.")
    lines = []
    has_labels = False
    for record in records:
        # Metadata travels as the record's extra keys, which is how a file carries it.
        flat = {key: value for key, value in (record.get("metadata") or {}).items()
                if key not in RESERVED_KEYS}
        flat.update({key: record[key] for key in ("text", "external_id") if key in record})
        labels = record.get("labels", record.get("label"))
        if labels is not None:
            flat["label"] = labels
            has_labels = True
        lines.append(json.dumps(flat, ensure_ascii=False))
    dataset = Dataset(project=project, name=f"api-push-{len(records)}-rows.jsonl", file_format="jsonl",
                      source=source, created_by=user, columns=["text", "label", "external_id"],
                      text_column="text", label_column="label" if has_labels else "", id_column="external_id",
                      add_unknown_labels=add_unknown_labels, status=DatasetStatus.QUEUED)
    dataset.file.save(dataset.name, ContentFile(("\n".join(lines) + "\n").encode("utf-8")), save=False)
    dataset.save()
    # A push is small and bounded, so it is imported inside the request: the
    # caller gets the row errors in the response instead of polling.
    return run_import(dataset.pk)


RESERVED_KEYS = {"text", "label", "labels", "external_id"}
