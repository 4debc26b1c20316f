"""Export a project's examples and labels to a file, streamed (the same export as the page and the API)."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from labelhub.errors import ActionError
from learning import exports
from projects.models import Project


class Command(BaseCommand):
    help = ("Write project PROJECT_ID's examples and labels to FILE in FORMAT (classification projects: "
            + ", ".join(f.name for f in exports.FORMATS.values() if f.tasks == exports.CLASSIFICATION_TASKS)
            + "; span projects: "
            + ", ".join(f.name for f in exports.FORMATS.values() if f.tasks == exports.SPAN_TASKS)
            + "). '-' writes to standard output.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project_id", type=int)
        parser.add_argument("--format", required=True, choices=list(exports.FORMATS), dest="export_format")
        parser.add_argument("--out", required=True, help="the file to write ('-' for standard output)")
        parser.add_argument("--labelled-only", action="store_true", help="only examples with a label")
        parser.add_argument("--annotations", default="latest", choices=list(exports.ANNOTATION_MODES),
                            help="latest (default: the final answer, what the model trains on), majority, or each "
                                 "(one row per annotator). Span projects: majority keeps the spans (same start, end "
                                 "and label) more than half of the annotators gave, ties to the latest answer")
        parser.add_argument("--metadata", default="all",
                            help="all (default), none, or metadata keys separated by commas")
        parser.add_argument("--taxonomy-version", type=int, default=None,
                            help="label names as in this taxonomy version (default: the current one)")
        parser.add_argument("--predictions", action="store_true",
                            help="add the model's current suggestion, confidence and model version")

    def handle(self, *args: Any, project_id: int, export_format: str, out: str, **options: Any) -> None:
        project = Project.objects.filter(pk=project_id).first()
        if project is None:
            raise CommandError(f"There is no project {project_id}.")
        try:
            plan = exports.plan_export(project, exports.parse_options({
                "format": export_format, "labelled_only": options["labelled_only"],
                "annotations": options["annotations"], "metadata": options["metadata"],
                "taxonomy_version": options["taxonomy_version"], "predictions": options["predictions"],
            }))
        except ActionError as exc:
            raise CommandError(exc.message) from None
        started = time.perf_counter()
        if out == "-":
            written = self._write(plan, sys.stdout.buffer)
        else:
            target = Path(out)
            if target.is_dir():
                raise CommandError(f"{out} is a directory: give a file name, e.g. {target / plan.filename()}.")
            if not target.parent.is_dir():
                raise CommandError(f"The folder {target.parent} does not exist.")
            # Written beside the target and renamed at the end: an interrupted export leaves no half file.
            handle, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=".export-")
            try:
                with os.fdopen(handle, "wb") as file:
                    written = self._write(plan, file)
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        seconds = time.perf_counter() - started
        self.stderr.write(f"Wrote {written:,} bytes of {plan.format.title} ({export_format}) from project "
                          f"{project.pk} ({project.name}), labels as in taxonomy v{plan.version.number}, "
                          f"in {seconds:.1f}s.")

    def _write(self, plan: exports.ExportPlan, file: Any) -> int:
        written = 0
        for chunk in exports.stream_export(plan):
            file.write(chunk)
            written += len(chunk)
        file.flush()
        return written
