"""Imports: an uploaded file or an API push becomes examples (and, for labelled rows, annotations).

Two passes over the file: every row is checked first, then all are inserted in one
transaction, or none. Rows that carry labels are announced (`examples_imported`)
inside that transaction, and the annotation layer records them; the end of every
import is announced once (`dataset_imported`).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, reset_queries, transaction

from labelhub.errors import ActionError
from labelhub.jobs import enqueue
from projects import events, importing
from projects import taxonomy as taxonomy_actions
from projects.importing import ColumnMap, ImportFormatError, ParsedRow, RowError
from projects.models import Dataset, DatasetSource, DatasetStatus, Example, Project
from projects.taxonomy import LabelSpec

logger = logging.getLogger(__name__)

INSERT_BATCH = 2000
PROGRESS_EVERY = 5000


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
    enqueue("projects.jobs.import_dataset", dataset.pk)
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
    dataset = _run_import(dataset, progress=progress)
    # Every way in (upload page, API upload, bulk push, command line) announces the end, once:
    # the learning layer embeds the new examples, the serving layer tells the webhooks.
    events.dataset_imported.send(sender=Dataset, dataset=dataset, embed=embed)
    return dataset


def _run_import(dataset: Dataset, *, progress: ProgressCallback | None) -> Dataset:
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
        taxonomy_actions.add_labels(project, labels=[LabelSpec(name=name) for name in unknown],
                                    user=dataset.created_by)
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
            labels = {ids[h]: [key_of[name] for name in row.labels] for h, row in with_labels.items() if h in ids}
            # The annotation layer records these as imported annotations, in this transaction.
            events.examples_imported.send(sender=Dataset, dataset=dataset, taxonomy=taxonomy, labels=labels,
                                          annotator=dataset.created_by)
            labelled += len(labels)
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
