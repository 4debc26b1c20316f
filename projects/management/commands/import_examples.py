"""Import a CSV / TSV / Excel .xlsx / JSONL / JSON file (span projects: also CoNLL) into a project from the command
line, with a progress bar."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError

from labelhub.errors import ActionError
from projects import imports
from projects.models import Dataset, DatasetSource, DatasetStatus, Project

DELIMITER_NAMES = {"": "", ",": ",", "comma": ",", ";": ";", "semicolon": ";", "tab": "\t", "\t": "\t",
                   "|": "|", "pipe": "|"}


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


class Command(BaseCommand):
    help = ("Import examples from a file. Checks every row first; if any row is bad nothing is imported and "
            "the errors are listed with their row numbers.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project", type=int, help="Project id")
        parser.add_argument("file", type=Path)
        parser.add_argument("--text-column", default="",
                            help="Column (key) holding the text (default: text; span projects: tokens or text, "
                                 "whichever the file has).")
        parser.add_argument("--label-column", default="",
                            help="Column (key) holding the label (span projects: the tags or the spans; default "
                                 "there: tags or spans, whichever the file has).")
        parser.add_argument("--id-column", default="")
        parser.add_argument("--add-unknown-labels", "--create-labels", dest="add_unknown_labels",
                            action="store_true",
                            help="Create the labels of the file that the taxonomy lacks (else such a row is an error).")
        parser.add_argument("--delimiter", default="", choices=list(DELIMITER_NAMES),
                            help="Delimiter of a CSV/TSV file (default: detected).")
        parser.add_argument("--encoding", default="",
                            help="Text encoding, e.g. utf-8, cp1252, utf-16 (default: detected).")
        parser.add_argument("--sheet", default="", help="Sheet of an .xlsx workbook (default: the first).")
        parser.add_argument("--hidden-columns", default="",
                            help="Comma-separated columns kept as metadata but never shown to annotators "
                                 "(default: label-like columns not used as the label).")
        parser.add_argument("--drop-columns", default="", help="Comma-separated columns not to keep.")
        parser.add_argument("--user", default="", help="Username recorded as the importer (and annotator of labels).")
        parser.add_argument("--background", action="store_true",
                            help="Queue the import for a worker and follow its progress instead of running it here.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            project = Project.objects.get(pk=options["project"])
        except Project.DoesNotExist:
            raise CommandError(f"No project with id {options['project']}.") from None
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user called {options['user']}.")
        try:
            with path.open("rb") as handle:
                upload = File(handle, name=path.name)
                upload.size = path.stat().st_size
                dataset = imports.create_dataset_from_upload(
                    project, upload=upload, user=user, source=DatasetSource.CLI,  # type: ignore[arg-type]
                    encoding=options["encoding"], delimiter=DELIMITER_NAMES.get(options["delimiter"], ""),
                    sheet=options["sheet"])
            self.stderr.write(self._reading(dataset))
            text_column, label_column = options["text_column"], options["label_column"]
            if project.is_span:
                # A span file says what it holds by its keys ({"tokens", "tags"}, {"text", "spans"}, CoNLL).
                text_names, label_names = imports.column_names(project)
                text_column = text_column or imports.guess_column(dataset.columns, text_names)
                label_column = label_column or imports.guess_column(dataset.columns, label_names)
            mapping: dict[str, Any] = {
                "text_column": text_column or "text", "label_column": label_column,
                "id_column": options["id_column"], "add_unknown_labels": options["add_unknown_labels"],
                "dropped_columns": _names(options["drop_columns"])}
            if options["hidden_columns"]:
                mapping["hidden_columns"] = _names(options["hidden_columns"])
            if options["background"]:
                dataset = imports.start_import(dataset, **mapping)
                dataset = self._follow(dataset)
            else:
                imports.configure_import(dataset, **mapping)
                dataset = imports.run_import(dataset.pk, progress=self._bar)
        except ActionError as exc:
            raise CommandError(str(exc)) from exc
        sys.stderr.write("\n")
        self._report(dataset)

    def _reading(self, dataset: Dataset) -> str:
        if dataset.file_format == "xlsx":
            return f"Reading sheet {dataset.sheet!r} of {dataset.name}."
        how = f"Reading {dataset.name} as {dataset.encoding}"
        if dataset.file_format == "csv":
            how += f", {'tab' if dataset.delimiter == chr(9) else repr(dataset.delimiter)}-separated"
        return how + f" (columns: {', '.join(dataset.columns)})."

    def _bar(self, done: int, total: int, phase: str) -> None:
        total = max(total, 1)
        fraction = min(done / total, 1.0)
        filled = int(30 * fraction)
        sys.stderr.write(f"\r{phase:<10} [{'#' * filled}{'.' * (30 - filled)}] {done:>10,} / {total:,} rows")
        sys.stderr.flush()

    def _follow(self, dataset: Dataset) -> Dataset:
        while True:
            dataset.refresh_from_db()
            progress = dataset.progress()
            self._bar(int(progress["done"]), int(progress["total"]), str(progress["phase"]))
            if not dataset.is_running:
                return dataset
            time.sleep(0.5)

    def _report(self, dataset: Dataset) -> None:
        if dataset.status == DatasetStatus.DONE:
            self.stdout.write(self.style.SUCCESS(
                f"Imported {dataset.imported_count:,} examples into dataset {dataset.pk} "
                f"({dataset.duplicate_count:,} duplicates skipped, {dataset.labelled_count:,} with labels)."))
            return
        for error in dataset.errors:
            row = f"row {error['row']}: " if error.get("row") else ""
            self.stderr.write(f"{error['file']}: {row}{error['reason']}")
        if len(dataset.error_groups) > 0:
            self.stderr.write("Problems by kind:")
            for group in dataset.error_groups:
                rows = ", ".join(str(r["row"]) for r in group["rows"]) + (", …" if group["count"] > len(group["rows"])
                                                                            else "")
                self.stderr.write(f"  {group['count']:,} row(s), e.g. rows {rows}: {group['reason']}")
        taxonomy = set(dataset.project.current_taxonomy().labels.values_list("name", flat=True))
        missing = {name: n for name, n in dataset.labels_found.items() if name not in taxonomy}
        if missing:
            self.stderr.write("Labels of the file that the taxonomy lacks (--create-labels creates them): "
                              + ", ".join(f"{name} ({n:,} rows)" for name, n in missing.items()))
        raise CommandError(f"Nothing was imported: {dataset.error_count:,} problem(s) in {dataset.name}.")
