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
import re
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connection, reset_queries, transaction
from django.utils import timezone

from labelhub.errors import ActionError
from labelhub.jobs import enqueue, job_waiting
from projects import events, importing, spanformats
from projects import taxonomy as taxonomy_actions
from projects.importing import ColumnMap, ImportFormatError, ParsedRow, RowError
from projects.models import Dataset, DatasetSource, DatasetStatus, Example, Project
from projects.taxonomy import LabelSpec

logger = logging.getLogger(__name__)

INSERT_BATCH = 2000
_COLUMN_NAME_MAX = 200  # Dataset.text_column, label_column, id_column
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
                               source: str = DatasetSource.UPLOAD, encoding: str = "", delimiter: str = "",
                               sheet: str = "") -> Dataset:
    """Store an uploaded file, sniff how to read it and read its column names; the import starts once
    columns are chosen. The file stays stored: the preview, the mapping and a retry all read it again.

    `encoding`, `delimiter` and `sheet` override what the sniffer finds.
    """
    name = os.path.basename(upload.name or "upload")
    try:
        file_format = importing.detect_format(name)
    except ImportFormatError as exc:
        raise ActionError(str(exc)) from exc
    if file_format == "conll" and not project.is_span:
        raise ActionError(f"{name} is a CoNLL file (tokens and entity tags), which only a span tagging project "
                          "imports; upload CSV, .xlsx, JSONL or JSON to a classification project.")
    _check_size(name, upload.size or 0)
    dataset = Dataset(project=project, name=name, file_format=file_format, source=source, created_by=user)
    dataset.file.save(name, upload, save=False)
    try:
        sniffed = importing.sniff(dataset.file.path, file_format, display_name=name)
        dataset.sniffed = {"encoding": sniffed.dialect.encoding, "encoding_reason": sniffed.encoding_reason,
                           "delimiter": sniffed.dialect.delimiter, "sheets": list(sniffed.sheets)}
        dataset.encoding = encoding or sniffed.dialect.encoding
        dataset.delimiter = delimiter or sniffed.dialect.delimiter
        dataset.sheet = sheet or sniffed.dialect.sheet
        if project.is_span and name.lower().endswith(".txt") and importing.looks_like_conll(
                dataset.file.path, dataset.encoding):
            dataset.file_format = "conll"
        _read_columns(dataset)
    except (ImportFormatError, ActionError) as exc:
        dataset.file.delete(save=False)
        raise ActionError(str(exc)) from exc
    dataset.save()
    return dataset


def dialect_of(dataset: Dataset) -> importing.Dialect:
    return importing.Dialect(encoding=dataset.encoding or "utf-8", delimiter=dataset.delimiter or ",",
                             sheet=dataset.sheet)


def _read_columns(dataset: Dataset) -> None:
    try:
        dataset.columns = importing.read_columns(dataset.file.path, dataset.file_format, display_name=dataset.name,
                                                 max_columns=settings.IMPORT_MAX_COLUMNS, dialect=dialect_of(dataset))
    except ImportFormatError as exc:
        raise ActionError(str(exc)) from exc
    if not dataset.columns:
        raise ActionError(f"{dataset.name} has no columns: the first row must name them (e.g. text,label).")


@transaction.atomic
def change_dialect(dataset: Dataset, *, encoding: str, delimiter: str, sheet: str = "") -> Dataset:
    """Read a draft's file another way (encoding, delimiter, sheet): its columns are read again."""
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    _require_draft(dataset)
    if delimiter and delimiter not in importing.DELIMITERS:
        raise ActionError(f"Choose a delimiter among: {', '.join(importing.DELIMITERS.values())}.")
    if sheet and sheet not in dataset.sniffed.get("sheets", []):
        raise ActionError(f"{dataset.name} has no sheet {sheet!r}; its sheets are: "
                          f"{', '.join(dataset.sniffed.get('sheets', []))}.")
    dataset.encoding, dataset.delimiter, dataset.sheet = encoding, delimiter, sheet
    _read_columns(dataset)
    dataset.save()
    return dataset


def preview(dataset: Dataset, rows: int = 10) -> tuple[list[str], list[list[str]]]:
    """The draft's header and first rows as the import will read them (ActionError if it cannot)."""
    try:
        return importing.preview(dataset.file.path, dataset.file_format, dialect_of(dataset), rows=rows,
                                 display_name=dataset.name, max_columns=settings.IMPORT_MAX_COLUMNS)
    except ImportFormatError as exc:
        raise ActionError(str(exc)) from exc


LABEL_SCAN_ROWS = 200_000


def scan_labels(dataset: Dataset, label_column: str, *, text_column: str = "", limit: int = LABEL_SCAN_ROWS
                ) -> tuple[dict[str, int], bool]:
    """({label in the file: rows}, whether the whole file was read) for the label panel of the upload page."""
    counts: dict[str, int] = {}
    if not label_column or label_column not in dataset.columns:
        return counts, True
    project = dataset.project
    text_column = text_column if text_column in dataset.columns else label_column
    if project.is_span:
        return _scan_entity_labels(dataset, text_column, label_column, limit)
    rows = importing.iter_rows(
        dataset.file.path, dataset.file_format,
        ColumnMap(text=text_column, label=label_column, metadata=()), known_labels=None,
        multi_label=project.is_multi_label, max_text_chars=settings.MAX_TEXT_CHARS, display_name=dataset.name,
        max_columns=settings.IMPORT_MAX_COLUMNS, dialect=dialect_of(dataset),
    )
    complete = True
    try:
        for n, item in enumerate(rows):
            if n >= limit:
                complete = False
                break
            if isinstance(item, ParsedRow):
                for name in item.labels:
                    counts[name] = counts.get(name, 0) + 1
    except ImportFormatError as exc:
        raise ActionError(str(exc)) from exc
    finally:
        rows.close()  # type: ignore[attr-defined]
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))), complete


def _scan_entity_labels(dataset: Dataset, text_column: str, label_column: str, limit: int
                        ) -> tuple[dict[str, int], bool]:
    """Span projects: {entity label of the file: rows that have it}, whether the whole file was read."""
    counts: dict[str, int] = {}
    if dataset.file_format in ("csv", "xlsx"):
        return counts, True
    rows = _span_rows(dataset, ColumnMap(text=text_column, label=label_column, metadata=()))
    complete = True
    try:
        for n, item in enumerate(rows):
            if n >= limit:
                complete = False
                break
            if isinstance(item, importing.SpanRow) and item.spans:
                for name in {span["label"] for span in item.spans}:
                    counts[name] = counts.get(name, 0) + 1
    except ImportFormatError as exc:
        raise ActionError(str(exc)) from exc
    finally:
        rows.close()
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))), complete


def _span_rows(dataset: Dataset, columns: ColumnMap) -> Any:
    return importing.iter_span_rows(
        dataset.file.path, dataset.file_format, columns, language=dataset.project.language,
        max_text_chars=settings.MAX_TEXT_CHARS, display_name=dataset.name, max_columns=settings.IMPORT_MAX_COLUMNS,
        dialect=dialect_of(dataset),
    )


def guess_column(columns: Sequence[str], candidates: Sequence[str]) -> str:
    lowered = {c.casefold(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return ""


TEXT_NAMES = ("text", "content", "body", "sentence", "question", "utterance", "description")
LABEL_NAMES = ("label", "labels", "category", "class", "intent", "gold", "target", "tag", "tags")
ID_NAMES = ("id", "external_id", "uid")
# Span projects: a pre-tokenized file's tokens, or a text; its tags, or character spans.
SPAN_TEXT_NAMES = ("tokens", "words", *TEXT_NAMES)
SPAN_LABEL_NAMES = ("tags", "ner_tags_iob", "spans", "entities", "label", "labels")


def column_names(project: Project) -> tuple[Sequence[str], Sequence[str]]:
    """(text names, label names) to guess a file's text and label columns from, for this project's task."""
    if project.is_span:
        return SPAN_TEXT_NAMES, SPAN_LABEL_NAMES
    return TEXT_NAMES, LABEL_NAMES


def default_hidden_columns(columns: Sequence[str], *, label_column: str) -> list[str]:
    """Columns hidden from annotators unless the manager says otherwise: a column that looks like a
    label (named label, category, class…) but is not used as the label would show the answer."""
    return [c for c in columns if c.casefold() in LABEL_NAMES and c != label_column]


def _require_draft(dataset: Dataset) -> None:
    if dataset.status != DatasetStatus.DRAFT:
        raise ActionError(f"{dataset.name} is already {dataset.get_status_display().lower()}.")


@transaction.atomic
def configure_import(dataset: Dataset, *, text_column: str, label_column: str = "", id_column: str = "",
                     add_unknown_labels: bool = False, hidden_columns: Sequence[str] | None = None,
                     dropped_columns: Sequence[str] = (), label_mapping: dict[str, str] | None = None) -> Dataset:
    """Check and record a draft dataset's column mapping, making it ready to import.

    `hidden_columns` are kept as metadata but not shown to annotators (None: the label-like columns not
    used as the label); `dropped_columns` are not kept. `label_mapping` maps a label of the file to a
    label of the taxonomy, created at import if it does not exist.
    """
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    _require_draft(dataset)
    for role, column in (("text", text_column), ("label", label_column), ("id", id_column)):
        if column and column not in dataset.columns:
            raise ActionError(f"Column '{column}' (chosen as {role}) is not in {dataset.name}; "
                              f"its columns are: {', '.join(dataset.columns)}.")
    if not text_column:
        raise ActionError("Choose the column that holds the text.")
    if dataset.project.is_span:
        _check_span_mapping(dataset, text_column=text_column, label_column=label_column)
    too_long = [c for c in (text_column, label_column, id_column) if len(c) > _COLUMN_NAME_MAX]
    if too_long:
        raise ActionError(f"A column name used for text, label or id may have at most {_COLUMN_NAME_MAX} "
                          "characters; rename the column in the file.")
    mapped = {c for c in (text_column, label_column, id_column) if c}
    if hidden_columns is None:
        hidden_columns = default_hidden_columns(dataset.columns, label_column=label_column)
    for role, chosen in (("hidden", hidden_columns), ("dropped", dropped_columns)):
        unknown = [c for c in chosen if c not in dataset.columns]
        if unknown:
            raise ActionError(f"Column {unknown[0]!r} (chosen as {role}) is not in {dataset.name}; "
                              f"its columns are: {', '.join(dataset.columns)}.")
    hidden = [c for c in dict.fromkeys(hidden_columns) if c not in mapped and c not in dropped_columns]
    dropped = [c for c in dict.fromkeys(dropped_columns) if c not in mapped]
    mapping = _check_label_mapping(dataset.project, label_mapping or {}) if label_column else {}
    dataset.text_column, dataset.label_column, dataset.id_column = text_column, label_column, id_column
    dataset.add_unknown_labels = add_unknown_labels
    dataset.hidden_columns, dataset.dropped_columns, dataset.label_mapping = hidden, dropped, mapping
    dataset.status = DatasetStatus.QUEUED
    dataset.save()
    return dataset


def _check_span_mapping(dataset: Dataset, *, text_column: str, label_column: str) -> None:
    if dataset.file_format == "conll" and (text_column, label_column) != importing.CONLL_COLUMNS:
        raise ActionError(f"{dataset.name} is a CoNLL file: its text is the 'tokens' column and its entities the "
                          "'tags' column.")
    if dataset.file_format in ("csv", "xlsx") and label_column:
        raise ActionError(f"A span project takes entities from JSON Lines ({{\"text\", \"spans\"}} or "
                          f"{{\"tokens\", \"tags\"}}) or a CoNLL file; a column of {dataset.name} cannot hold them. "
                          "Choose no label column to import the texts for labelling.")


def _check_label_mapping(project: Project, mapping: dict[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    labels = {label.name: label for label in project.current_taxonomy().labels.all()}
    for found, target in mapping.items():
        found, target = str(found).strip(), str(target).strip()
        if not found:
            continue
        if not target:
            raise ActionError(f"Say what the label {found!r} of the file becomes: a label of the taxonomy, or "
                              "a new label.")
        if len(target) > 100:
            raise ActionError(f"A label name has at most 100 characters; {target[:40]!r}… is longer.")
        if target in labels and labels[target].is_deprecated:
            raise ActionError(f"{found!r} is mapped to {target!r}, which is deprecated; map it to its replacement.")
        clean[found] = target
    return clean


@transaction.atomic
def retry_import(dataset: Dataset) -> Dataset:
    """A failed import goes back to its draft (the file is kept), to be mapped again and re-run."""
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    if not dataset.can_retry:
        raise ActionError(f"{dataset.name} is {dataset.get_status_display().lower()}; only a failed import "
                          "can be retried.")
    dataset.reopen()
    return dataset


@transaction.atomic
def start_import(dataset: Dataset, **mapping: Any) -> Dataset:
    """Record the column mapping and queue the import job (on the `imports` queue, so a long import never
    holds the worker that trains models)."""
    dataset = configure_import(dataset, **mapping)
    dataset_id = dataset.pk
    _mark_alive(dataset_id)
    enqueue("projects.jobs.import_dataset", dataset_id, queue=IMPORT_QUEUE, job_id=import_job_id(dataset_id),
            on_failure=lambda: fail_unqueued_import(dataset_id))
    return dataset


IMPORT_QUEUE = "imports"
UNQUEUED_REASON = ("The import could not be queued: the job queue (Redis) is unreachable. Nothing was imported; "
                   "retry it from this page once the queue is back (the file is kept).")
STALE_REASON = ("The import stopped: no worker made progress on it for {minutes} minutes (the worker was stopped "
                "or killed, or no worker listens on the 'imports' queue). Nothing was imported; retry it from the "
                "import's page (the file is kept).")
UNEXPECTED_REASON = ("The import stopped on an unexpected error ({error}). Nothing was imported; the details are "
                     "in the worker's log.")


def import_job_id(dataset_id: int) -> str:
    return f"labelhub-import-{dataset_id}"


def _alive_key(dataset_id: int) -> str:
    return f"labelhub:dataset-alive:{dataset_id}"


def _mark_alive(dataset_id: int) -> None:
    # A heartbeat outside the import's transaction, so `recover_stale_imports` can tell a slow
    # import from one whose worker died.
    cache.set(_alive_key(dataset_id), time.time(), timeout=2 * settings.IMPORT_STALE_SECONDS + 60)


def fail_unqueued_import(dataset_id: int) -> None:
    """The import job could not be queued (Redis down): fail the dataset at once rather than leave it queued."""
    dataset = Dataset.objects.filter(pk=dataset_id, status=DatasetStatus.QUEUED).select_related("project").first()
    if dataset is None:
        return
    _fail_and_announce(dataset, UNQUEUED_REASON)


def _fail_and_announce(dataset: Dataset, reason: str) -> None:
    dataset.mark_failed([_file_error(dataset, reason)])
    try:
        events.dataset_imported.send(sender=Dataset, dataset=dataset, embed=False)
    except Exception:  # noqa: BLE001 - a receiver's trouble (webhooks, Redis) must not undo the verdict
        logger.exception("announcing the end of import %s failed", dataset.pk)


def recover_stale_imports(project: Project | None = None) -> int:
    """Fail imports whose job was lost, with a reason and the `dataset_imported` announcement; returns how many.

    An import is all or nothing (one transaction), so a worker killed mid-import left no rows, only a
    dataset stuck "queued", "validating" or "importing". It is marked failed, not queued again: a file
    that kills the worker (memory) would otherwise kill every worker in turn. Stale means no sign of
    life (a heartbeat at every progress report) for LABELHUB_IMPORT_STALE_SECONDS, and, with Redis, no
    job waiting for it in the queue. An import in its insert phase holds a lock on the dataset row
    (its examples reference it), so a live one is skipped however long it takes.
    """
    stale_seconds = settings.IMPORT_STALE_SECONDS
    cutoff = time.time() - stale_seconds
    running = [DatasetStatus.QUEUED, DatasetStatus.VALIDATING, DatasetStatus.IMPORTING]
    candidates = Dataset.objects.filter(status__in=running,
                                        created_at__lt=timezone.now() - timedelta(seconds=stale_seconds))
    if project is not None:
        candidates = candidates.filter(project=project)
    recovered = 0
    for dataset_id in list(candidates.values_list("pk", flat=True)):
        alive = cache.get(_alive_key(dataset_id))
        if alive is not None and alive > cutoff:
            continue
        with transaction.atomic():
            dataset = (Dataset.objects.select_for_update(skip_locked=True).select_related("project")
                       .filter(pk=dataset_id, status__in=running).first())
            if dataset is None:
                continue
            if dataset.status == DatasetStatus.QUEUED and job_waiting(import_job_id(dataset_id), IMPORT_QUEUE):
                continue  # behind other imports in the queue: not lost
            logger.warning("dataset %s: import lost (%s), marking it failed", dataset_id, dataset.status)
            dataset.mark_failed([_file_error(dataset, STALE_REASON.format(minutes=max(stale_seconds // 60, 1)))])
        try:
            events.dataset_imported.send(sender=Dataset, dataset=dataset, embed=False)
        except Exception:  # noqa: BLE001
            logger.exception("announcing the end of import %s failed", dataset_id)
        recovered += 1
    return recovered


def check_stale_imports(project: Project) -> int:
    """`recover_stale_imports` for a page that shows a running import, at most once a minute per project."""
    if cache.add(f"labelhub:import-stale-check:{project.pk}", 1, timeout=60):
        return recover_stale_imports(project)
    return 0


def _column_map(dataset: Dataset) -> ColumnMap:
    return ColumnMap(text=dataset.text_column, label=dataset.label_column or None,
                     external_id=dataset.id_column or None, dropped=tuple(dataset.dropped_columns))


ProgressCallback = Callable[[int, int, str], None]


def run_import(dataset_id: int, *, progress: ProgressCallback | None = None, embed: bool = True) -> Dataset:
    """Check every row of a dataset's file, then insert them all in one transaction, or none.

    Always ends `done` or `failed` with a reason, and announces the end, whatever goes wrong.
    """
    dataset = Dataset.objects.select_related("project").get(pk=dataset_id)
    if dataset.status not in {DatasetStatus.QUEUED, DatasetStatus.VALIDATING, DatasetStatus.IMPORTING}:
        logger.info("dataset %s is %s; nothing to import", dataset.pk, dataset.status)
        return dataset
    try:
        dataset = _run_import(dataset, progress=progress)
    except Exception as exc:  # noqa: BLE001 - an import must never stay "validating" for ever
        logger.exception("import of dataset %s failed", dataset_id)
        if transaction.get_connection().in_atomic_block and transaction.get_rollback():
            raise  # inside a caller's broken transaction nothing can be recorded; the caller rolls back
        dataset = Dataset.objects.select_related("project").get(pk=dataset_id)
        dataset.mark_failed([_file_error(dataset, UNEXPECTED_REASON.format(error=type(exc).__name__))])
    # Every way in (upload page, API upload, bulk push, command line) announces the end, once:
    # the learning layer embeds the new examples, the serving layer tells the webhooks.
    events.dataset_imported.send(sender=Dataset, dataset=dataset, embed=embed)
    return dataset


def _run_import(dataset: Dataset, *, progress: ProgressCallback | None) -> Dataset:
    project = dataset.project
    path = dataset.file.path

    def report(done: int, total: int, phase: str) -> None:
        dataset.report_progress(done, total, phase)
        _mark_alive(dataset.pk)
        if progress:
            progress(done, total, phase)

    _mark_alive(dataset.pk)  # picked up: the time it waited in the queue is not held against it
    if project.is_span:
        return _import_spans(dataset, project, report)
    if connection.vendor == "postgresql":
        return _import_in_one_pass(dataset, project, report)
    try:
        dataset.total_rows = importing.count_rows(path, dataset.file_format, dialect_of(dataset))
        dataset.save(update_fields=["total_rows"])
        dataset.mark_started(DatasetStatus.VALIDATING)
        report(0, dataset.total_rows, DatasetStatus.VALIDATING)
        check = _validate(dataset, project, report)
    except ImportFormatError as exc:
        dataset.mark_failed([_file_error(dataset, str(exc))])
        return dataset
    dataset.labels_found = check.labels_found
    if check.error_count:
        dataset.mark_failed(check.errors, error_count=check.error_count, groups=check.groups())
        return dataset
    if check.valid == 0:
        dataset.mark_failed([_file_error(dataset, "The file has no data rows.")])
        return dataset
    dataset.total_rows = check.valid
    dataset.mark_started(DatasetStatus.IMPORTING)
    try:
        with transaction.atomic():
            imported, labelled = _insert(dataset, project, check.new_labels, report)
            dataset.mark_done(imported=imported, duplicates=check.valid - imported, labelled=labelled,
                              total=check.valid)
    except (ImportFormatError, ActionError, IntegrityError) as exc:
        # The file changed between the passes, or a label clash: nothing was kept.
        dataset.refresh_from_db()
        dataset.mark_failed([_file_error(dataset, str(exc))])
    return dataset


class _Refused(Exception):
    """The file has bad rows (or none): the transaction rolls back, and the check says why."""

    def __init__(self, check: _Check) -> None:
        super().__init__(f"{check.error_count} bad rows")
        self.check = check


def _import_in_one_pass(dataset: Dataset, project: Project, report: ProgressCallback, *,
                        check_and_write: Callable[[Dataset, Project, ProgressCallback], tuple[_Check, int, int]]
                        | None = None) -> Dataset:
    """PostgreSQL: check every row and COPY it into a staging table in the same pass, inside the import's
    transaction; a bad row stops the copying, the checks go on to the end for the report, and the
    transaction rolls back, so nothing is imported. One parse of the file instead of two."""
    try:
        dataset.total_rows = importing.count_rows(dataset.file.path, dataset.file_format, dialect_of(dataset))
        dataset.save(update_fields=["total_rows"])
        dataset.mark_started(DatasetStatus.IMPORTING)
        report(0, dataset.total_rows, DatasetStatus.VALIDATING)
        with transaction.atomic():
            check, imported, labelled = (check_and_write or _check_and_copy)(dataset, project, report)
            dataset.labels_found = check.labels_found
            dataset.mark_done(imported=imported, duplicates=check.valid - imported, labelled=labelled,
                              total=check.valid)
    except _Refused as refused:
        check = refused.check
        dataset.labels_found = check.labels_found
        if check.error_count:
            dataset.mark_failed(check.errors, error_count=check.error_count, groups=check.groups())
        else:
            dataset.mark_failed([_file_error(dataset, "The file has no data rows.")])
    except (ImportFormatError, ActionError, IntegrityError) as exc:
        # A file-level problem part-way through (bytes the encoding cannot read), or a label clash.
        dataset.mark_failed([_file_error(dataset, str(exc))])
    return dataset


# One row of the staging table, in the order the file has it; labels as a JSON list of names in the file.
_STAGING_NAMES = ("CREATE TEMPORARY TABLE {table} (ord bigint NOT NULL, text text NOT NULL, "
                  "metadata jsonb NOT NULL, external_id varchar(255) NOT NULL, content_hash varchar(64) NOT NULL, "
                  "label_names text) ON COMMIT DROP")


def _check_and_copy(dataset: Dataset, project: Project, report: ProgressCallback) -> tuple[_Check, int, int]:
    taxonomy = project.current_taxonomy()
    labels = {label.name: label for label in taxonomy.labels.all()}
    mapping: dict[str, str] = dataset.label_mapping or {}
    check_labels = bool(dataset.label_column) and not dataset.add_unknown_labels
    known = {name for name, label in labels.items() if not label.is_deprecated} | set(mapping)
    multi_label = project.is_multi_label
    check = _Check(dataset_name=dataset.name)
    found = check.labels_found
    new_labels: dict[str, None] = {}
    rows = importing.iter_rows(
        dataset.file.path, dataset.file_format, _column_map(dataset), known_labels=None,
        multi_label=multi_label, max_text_chars=settings.MAX_TEXT_CHARS, display_name=dataset.name,
        max_columns=settings.IMPORT_MAX_COLUMNS, dialect=dialect_of(dataset),
    )
    table = f"labelhub_import_{dataset.pk}"
    dumps = json.dumps
    total = dataset.total_rows
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: Django's wrapper has no copy()
        raw.execute(_STAGING_NAMES.format(table=table))
        with raw.copy(f"COPY {table} (ord, text, metadata, external_id, content_hash, label_names) "
                      "FROM STDIN") as copy:
            write = copy.write_row
            for n, item in enumerate(rows, start=1):
                if n % PROGRESS_EVERY == 0:
                    report(n, total, DatasetStatus.VALIDATING)
                if isinstance(item, RowError):
                    check.error(item.row, item.reason)
                    continue
                check.valid += 1
                names = item.labels
                names_json = None
                if names:
                    for name in names:
                        if name in found:
                            found[name] += 1
                        elif len(found) < LABELS_FOUND_MAX:
                            found[name] = 1
                    if check_labels and not known.issuperset(names):
                        reason = importing.unknown_label_reason(names, known, multi_label=multi_label)
                        check.error(item.row, reason or "unknown label")
                        continue
                    for name in names:
                        target = mapping.get(name, name)
                        if target not in labels:
                            new_labels.setdefault(target)
                        elif labels[target].is_deprecated:
                            check.error(item.row, f"label '{target}' is deprecated; use its replacement or "
                                                  "un-deprecate it")
                    names_json = dumps(names)
                if not check.error_count:  # after the first bad row nothing more is copied, only checked
                    write((n, item.text, dumps(item.metadata) if item.metadata else "{}", item.external_id,
                           item.content_hash, names_json))
        check.labels_found = dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))
        if check.error_count or not check.valid:
            raise _Refused(check)
        report(0, total, DatasetStatus.IMPORTING)
        if new_labels:
            taxonomy_actions.add_labels(project, labels=[LabelSpec(name=name) for name in new_labels],
                                        user=dataset.created_by)
            taxonomy = project.current_taxonomy()
        key_of = {label.name: label.key for label in taxonomy.labels.all()}
        key_of.update({found_name: key_of[target] for found_name, target in mapping.items() if target in key_of})
        raw.execute(f"ANALYZE {table}")
        raw.execute(_FROM_STAGING.format(table=table), [project.pk, dataset.pk, timezone.now()])
        imported = raw.rowcount
        report(total // 2, total, DatasetStatus.IMPORTING)
        labelled = 0
        # A named (server-side) cursor: the labelled rows come in batches, not all at once.
        with connection.connection.cursor(name=f"{table}_labelled") as labelled_rows:
            labelled_rows.itersize = ANNOUNCE_BATCH
            labelled_rows.execute(_LABELLED_NAMES.format(table=table), [project.pk, dataset.pk])
            loads = json.loads
            while batch := labelled_rows.fetchmany(ANNOUNCE_BATCH):
                batch_labels = {example_id: list(dict.fromkeys(key_of[name] for name in loads(names)))
                                for example_id, names in batch}
                # The annotation layer records these as imported annotations, in this transaction.
                events.examples_imported.send(sender=Dataset, dataset=dataset, taxonomy=taxonomy,
                                              labels=batch_labels, annotator=dataset.created_by)
                labelled += len(batch_labels)
        raw.execute(f"DROP TABLE {table}")
        report(total, total, DatasetStatus.IMPORTING)
    reset_queries()
    return check, imported, labelled


def _import_spans(dataset: Dataset, project: Project, report: ProgressCallback) -> Dataset:
    """Span projects: check each row (tokens, tags, spans, entity labels) and insert it with its tokens in the
    same pass, inside the import's transaction; a bad row stops the inserting, the checks go on to the end
    for the report, and the transaction rolls back, so nothing is imported."""
    return _import_in_one_pass(dataset, project, report, check_and_write=_check_and_insert_spans)


def _check_and_insert_spans(dataset: Dataset, project: Project, report: ProgressCallback
                            ) -> tuple[_Check, int, int]:
    taxonomy = project.current_taxonomy()
    labels = {label.name: label for label in taxonomy.labels.all()}
    mapping: dict[str, str] = dataset.label_mapping or {}
    check_labels = bool(dataset.label_column) and not dataset.add_unknown_labels
    known = {name for name, label in labels.items() if not label.is_deprecated} | set(mapping)
    check = _Check(dataset_name=dataset.name)
    new_labels: dict[str, None] = {}
    # The first labelled row of each text: its spans (the file's label names), announced once inserted.
    labelled_rows: dict[str, list[spanformats.Span]] = {}
    total = dataset.total_rows
    with _SpanExampleWriter(dataset, project) as writer:
        _check_span_rows(dataset, writer, report, check=check, known=known, labels=labels, mapping=mapping,
                         check_labels=check_labels, new_labels=new_labels, labelled_rows=labelled_rows)
    report(0, total, DatasetStatus.IMPORTING)
    if new_labels:
        taxonomy_actions.add_labels(project, labels=[LabelSpec(name=name) for name in new_labels],
                                    user=dataset.created_by)
        taxonomy = project.current_taxonomy()
    key_of = {label.name: label.key for label in taxonomy.labels.all()}
    key_of.update({found_name: key_of[target] for found_name, target in mapping.items() if target in key_of})
    imported = Example.objects.filter(dataset=dataset).count()
    labelled = 0
    hashes = list(labelled_rows)
    for start in range(0, len(hashes), ANNOUNCE_BATCH):
        chunk = hashes[start:start + ANNOUNCE_BATCH]
        ids = Example.objects.filter(project=project, dataset=dataset, content_hash__in=chunk).values_list(
            "content_hash", "id")
        spans: dict[int, list[dict[str, Any]]] = {
            example_id: [{"start": span["start"], "end": span["end"], "label": key_of[span["label"]]}
                         for span in labelled_rows[content]]
            for content, example_id in ids}
        keys = {example_id: sorted({span["label"] for span in example_spans})
                for example_id, example_spans in spans.items()}
        # The annotation layer records these as imported annotations (with their spans), in this transaction.
        events.examples_imported.send(sender=Dataset, dataset=dataset, taxonomy=taxonomy, labels=keys,
                                      spans=spans, annotator=dataset.created_by)
        labelled += len(spans)
        report(min(start + ANNOUNCE_BATCH, len(hashes)), len(hashes), DatasetStatus.IMPORTING)
    reset_queries()
    return check, imported, labelled


def _check_span_rows(dataset: Dataset, writer: _SpanExampleWriter, report: ProgressCallback, *, check: _Check,
                     known: set[str], labels: dict[str, Any], mapping: dict[str, str], check_labels: bool,
                     new_labels: dict[str, None], labelled_rows: dict[str, list[spanformats.Span]]) -> None:
    """The span import's one pass: every row checked, the good ones written until the first bad one."""
    total = dataset.total_rows
    found = check.labels_found
    rows = _span_rows(dataset, _column_map(dataset))
    for n, item in enumerate(rows, start=1):
        if n % PROGRESS_EVERY == 0:
            report(n, total, DatasetStatus.VALIDATING)
        if isinstance(item, RowError):
            check.error(item.row, item.reason)
            continue
        check.valid += 1
        if item.spans:
            names = tuple(dict.fromkeys(span["label"] for span in item.spans))
            for name in names:
                if name in found:
                    found[name] += 1
                elif len(found) < LABELS_FOUND_MAX:
                    found[name] = 1
            if check_labels and not known.issuperset(names):
                reason = importing.unknown_label_reason(names, known, multi_label=True)
                check.error(item.row, f"entity {reason or 'unknown label'}")
                continue
            refused = False
            for name in names:
                target = mapping.get(name, name)
                if target not in labels:
                    new_labels.setdefault(target)
                elif labels[target].is_deprecated:
                    check.error(item.row, f"entity label '{target}' is deprecated; use its replacement or "
                                          "un-deprecate it")
                    refused = True
            if refused:
                continue
        if check.error_count:
            continue  # after the first bad row nothing more is inserted, only checked
        writer.add(item)
        if item.spans is not None:
            labelled_rows.setdefault(item.content_hash, item.spans)
    check.labels_found = dict(sorted(found.items(), key=lambda pair: (-pair[1], pair[0])))
    if check.error_count or not check.valid:
        writer.discard()
        raise _Refused(check)
    writer.finish()


class _SpanExampleWriter:
    """Inserts a span import's examples with their tokens: on PostgreSQL COPY into a staging table and one
    INSERT ... SELECT ON CONFLICT DO NOTHING at the end (model instances and client-side quoting of every
    token list were most of the time), elsewhere batched bulk_create. The first row of each text wins."""

    _STAGING = ("CREATE TEMPORARY TABLE {table} (ord bigint NOT NULL, text text NOT NULL, metadata jsonb NOT NULL, "
                "external_id varchar(255) NOT NULL, content_hash varchar(64) NOT NULL, tokens jsonb NOT NULL) "
                "ON COMMIT DROP")
    _FROM_STAGING = """
INSERT INTO projects_example (project_id, dataset_id, text, metadata, external_id, content_hash, tokens, created_at)
SELECT %s, %s, text, metadata, external_id, content_hash, tokens, %s FROM {table} ORDER BY ord
ON CONFLICT DO NOTHING
"""

    def __init__(self, dataset: Dataset, project: Project) -> None:
        self.dataset, self.project = dataset, project
        self.batch: list[Example] = []
        self.table = f"labelhub_span_import_{dataset.pk}"
        self.ord = 0
        self._stack = ExitStack()
        self._copy: Any = None
        if connection.vendor == "postgresql":
            cursor = self._stack.enter_context(connection.cursor())
            self._raw = cursor.cursor  # psycopg's own cursor: Django's wrapper has no copy()
            self._raw.execute(self._STAGING.format(table=self.table))
            self._copy = self._stack.enter_context(self._raw.copy(
                f"COPY {self.table} (ord, text, metadata, external_id, content_hash, tokens) FROM STDIN"))

    def add(self, row: importing.SpanRow) -> None:
        if self._copy is not None:
            self.ord += 1
            self._copy.write_row((self.ord, row.text, json.dumps(row.metadata) if row.metadata else "{}",
                                  row.external_id, row.content_hash, json.dumps(row.tokens)))
            return
        self.batch.append(Example(project=self.project, dataset=self.dataset, text=row.text, metadata=row.metadata,
                                  external_id=row.external_id, content_hash=row.content_hash,
                                  tokens=[list(pair) for pair in row.tokens]))
        if len(self.batch) >= INSERT_BATCH:
            self._flush()

    def _flush(self) -> None:
        Example.objects.bulk_create(self.batch, ignore_conflicts=True)
        self.batch.clear()
        reset_queries()

    def finish(self) -> None:
        if self._copy is None:
            self._flush()
            return
        self._copy = None
        self._stack.pop_all().close()  # ends the COPY; the cursor closes
        with connection.cursor() as cursor:
            cursor.execute(self._FROM_STAGING.format(table=self.table),
                           [self.project.pk, self.dataset.pk, timezone.now()])
            cursor.execute(f"DROP TABLE {self.table}")

    def discard(self) -> None:
        """The import is refused: the staging table goes with the rolled-back transaction."""
        self._copy = None
        self._stack.close()
        self.batch.clear()

    def __enter__(self) -> _SpanExampleWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        # A file-level error part-way: the COPY is aborted (psycopg ends it with the error) before the
        # transaction rolls back.
        self._copy = None
        self._stack.__exit__(*exc)


ERROR_GROUP_ROWS = 5
LABELS_FOUND_MAX = 1000
# Quoted names and numbers vary from row to row; what is left says what kind of problem it is.
_VARYING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\d[\d,.]*")


def error_kind(reason: str) -> str:
    """A row error's reason without its particulars (label names, counts, line numbers), to group by."""
    return _VARYING.sub("…", reason)


@dataclass
class _Check:
    """What the check pass found."""

    dataset_name: str
    valid: int = 0
    error_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    # error kind -> {reason (the first), count, rows: [{row, reason}] (the first few)}
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels_found: dict[str, int] = field(default_factory=dict)
    new_labels: list[str] = field(default_factory=list)

    def error(self, row: int | None, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < Dataset.MAX_STORED_ERRORS:
            self.errors.append({"file": self.dataset_name, "row": row, "reason": reason})
        group = self.by_kind.get(kind := error_kind(reason))
        if group is None:
            if len(self.by_kind) >= Dataset.MAX_STORED_ERRORS:
                kind = "…"
                group = self.by_kind.setdefault(kind, {"reason": "other problems", "count": 0, "rows": []})
            else:
                group = self.by_kind[kind] = {"reason": reason, "count": 0, "rows": []}
        group["count"] += 1
        if len(group["rows"]) < ERROR_GROUP_ROWS:
            group["rows"].append({"row": row, "reason": reason})

    def groups(self) -> list[dict[str, Any]]:
        return sorted(self.by_kind.values(), key=lambda group: -group["count"])


def _validate(dataset: Dataset, project: Project, report: ProgressCallback) -> _Check:
    taxonomy = project.current_taxonomy()
    labels = {label.name: label for label in taxonomy.labels.all()}
    mapping: dict[str, str] = dataset.label_mapping or {}
    check_labels = bool(dataset.label_column) and not dataset.add_unknown_labels
    # A label of the file is known when the taxonomy has it (not deprecated) or the mapping says what it becomes.
    known = {name for name, label in labels.items() if not label.is_deprecated} | set(mapping)
    check = _Check(dataset_name=dataset.name)
    found = check.labels_found
    new_labels: dict[str, None] = {}
    rows = importing.iter_rows(
        dataset.file.path, dataset.file_format, _column_map(dataset), known_labels=None,
        multi_label=project.is_multi_label, max_text_chars=settings.MAX_TEXT_CHARS, display_name=dataset.name,
        max_columns=settings.IMPORT_MAX_COLUMNS, dialect=dialect_of(dataset),
    )
    for n, item in enumerate(rows, start=1):
        if isinstance(item, RowError):
            check.error(item.row, item.reason)
        else:
            check.valid += 1
            if item.labels:
                for name in item.labels:
                    if name in found:
                        found[name] += 1
                    elif len(found) < LABELS_FOUND_MAX:
                        found[name] = 1
                if check_labels and not known.issuperset(item.labels):
                    reason = importing.unknown_label_reason(item.labels, known, multi_label=project.is_multi_label)
                    check.error(item.row, reason or "unknown label")
                    continue
                for name in item.labels:
                    target = mapping.get(name, name)
                    if target not in labels:
                        new_labels.setdefault(target)
                    elif labels[target].is_deprecated:
                        check.error(item.row, f"label '{target}' is deprecated; use its replacement or "
                                              "un-deprecate it")
        if n % PROGRESS_EVERY == 0:
            report(n, dataset.total_rows, DatasetStatus.VALIDATING)
    check.labels_found = dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))
    check.new_labels = list(new_labels)
    return check


def _insert(dataset: Dataset, project: Project, unknown: list[str], report: ProgressCallback) -> tuple[int, int]:
    if unknown:
        taxonomy_actions.add_labels(project, labels=[LabelSpec(name=name) for name in unknown],
                                    user=dataset.created_by)
    taxonomy = project.current_taxonomy()
    key_of = {label.name: label.key for label in taxonomy.labels.all()}
    # A label of the file mapped to another name takes that label's key.
    key_of.update({found: key_of[target] for found, target in (dataset.label_mapping or {}).items()
                   if target in key_of})
    rows = importing.iter_rows(
        dataset.file.path, dataset.file_format, _column_map(dataset), known_labels=None,
        multi_label=project.is_multi_label, max_text_chars=settings.MAX_TEXT_CHARS, display_name=dataset.name,
        max_columns=settings.IMPORT_MAX_COLUMNS, dialect=dialect_of(dataset),
    )
    return _insert_in_batches(dataset, project, taxonomy, key_of, rows, report)


# The first row of each text wins, as it did with batched inserts; duplicates (in the file or already
# in the project) are skipped by the unique (project, content_hash) constraint.
_FROM_STAGING = """
INSERT INTO projects_example (project_id, dataset_id, text, metadata, external_id, content_hash, created_at)
SELECT %s, %s, text, metadata, external_id, content_hash, %s FROM {table} ORDER BY ord
ON CONFLICT DO NOTHING
"""
# The examples this import created that came with labels: the first labelled row of each text.
_LABELLED_NAMES = """
SELECT e.id, s.label_names FROM projects_example e
JOIN (SELECT DISTINCT ON (content_hash) content_hash, label_names FROM {table}
      WHERE label_names IS NOT NULL ORDER BY content_hash, ord) s ON s.content_hash = e.content_hash
WHERE e.project_id = %s AND e.dataset_id = %s
"""
ANNOUNCE_BATCH = 10_000


def _insert_in_batches(dataset: Dataset, project: Project, taxonomy: Any, key_of: dict[str, str],
                       rows: Any, report: ProgressCallback) -> tuple[int, int]:
    """Other databases (SQLite for a first look): batched INSERTs that skip duplicates."""
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
            labels = {ids[h]: list(dict.fromkeys(key_of[name] for name in row.labels))
                      for h, row in with_labels.items() if h in ids}
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
                   add_unknown_labels: bool = False, source: str = DatasetSource.API,
                   hidden_metadata: Sequence[str] = ()) -> Dataset:
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
        if project.is_span:
            # One key for the text (a list: tokens) and one for the entities (its tags, or spans on the text),
            # as a span project's JSON Lines file has them.
            labels = record.get("spans")
            if "tokens" in record:
                flat["text"], labels = record["tokens"], record.get("tags")
        else:
            labels = record.get("labels", record.get("label"))
        if labels is not None:
            flat["label"] = labels
            has_labels = True
        try:
            # ASCII escapes carry a lone surrogate or NUL through the file to the row checks, which
            # name the row; Infinity/NaN likewise (the checks refuse them).
            lines.append(json.dumps(flat))
        except (RecursionError, ValueError, TypeError):
            raise ActionError(f"example {len(lines) + 1}: its metadata is nested too deeply or is not JSON; "
                              f"nothing was imported.") from None
    dataset = Dataset(project=project, name=f"api-push-{len(records)}-rows.jsonl", file_format="jsonl",
                      source=source, created_by=user, columns=["text", "label", "external_id"],
                      text_column="text", label_column="label" if has_labels else "", id_column="external_id",
                      add_unknown_labels=add_unknown_labels, status=DatasetStatus.QUEUED,
                      hidden_columns=list(dict.fromkeys(hidden_metadata)))
    dataset.file.save(dataset.name, ContentFile(("\n".join(lines) + "\n").encode("utf-8")), save=False)
    dataset.save()
    # A push is small and bounded, so it is imported inside the request: the
    # caller gets the row errors in the response instead of polling.
    return run_import(dataset.pk)


RESERVED_KEYS = {"text", "label", "labels", "external_id", "spans", "tokens", "tags"}
