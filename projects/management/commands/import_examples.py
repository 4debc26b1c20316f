"""Import a CSV / JSONL / JSON file into a project from the command line, with a progress bar."""
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


class Command(BaseCommand):
    help = ("Import examples from a file. Checks every row first; if any row is bad nothing is imported and "
            "the errors are listed with their row numbers.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project", type=int, help="Project id")
        parser.add_argument("file", type=Path)
        parser.add_argument("--text-column", default="text")
        parser.add_argument("--label-column", default="")
        parser.add_argument("--id-column", default="")
        parser.add_argument("--add-unknown-labels", action="store_true")
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
                dataset = imports.create_dataset_from_upload(project, upload=upload, user=user,  # type: ignore[arg-type]
                                                             source=DatasetSource.CLI)
            mapping = {"text_column": options["text_column"], "label_column": options["label_column"],
                       "id_column": options["id_column"], "add_unknown_labels": options["add_unknown_labels"]}
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
        raise CommandError(f"Nothing was imported: {dataset.error_count:,} problem(s) in {dataset.name}.")
