"""Create the admin user and a demo project from data shipped in the repository (idempotent).

It lives in `learning` (not `projects`) because it also embeds the demo examples, and `projects`
sits below `learning` in the layers.
"""
from __future__ import annotations

import csv
import io
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand

from learning.actions import embed_project
from projects import imports, taxonomy
from projects.models import DatasetSource, Membership, Project, Role, Team

DEMO_FILE = Path(settings.BASE_DIR) / "demo" / "legal_overruling.csv"
LABELLED_ROWS = 24


class Command(BaseCommand):
    help = "Create an admin user and the demo project (Overruling sentences) if they do not exist."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--url", default="http://127.0.0.1:8000/",
                            help="where the server will answer, for the banner (`make run` passes its HOST and PORT)")

    def handle(self, *args: Any, username: str, url: str, **options: Any) -> None:
        password_file = settings.DATA_DIR / "admin-password.txt"
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=username, email="", password=password)
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        team, _ = Team.objects.get_or_create(name="Demo law firm")
        Membership.objects.get_or_create(team=team, user=user, defaults={"role": Role.MANAGER})
        project = Project.objects.filter(team=team, name="Overruling sentences").first()
        if project is None:
            project = taxonomy.create_project(
                team, name="Overruling sentences", task_type="single_label", created_by=user,
                description="Does this sentence from a US court opinion overrule a previous case? "
                "(LegalBench overruling task, CC BY 4.0)",
                guidelines="Label Yes if the sentence itself overrules, abrogates or disapproves a prior "
                "decision (e.g. 'we overrule X to the extent…'). Label No if it only cites, distinguishes "
                "or discusses a case.",
                labels=[taxonomy.LabelSpec("Yes", "The sentence overrules a previous case."),
                        taxonomy.LabelSpec("No", "It cites, follows or distinguishes a case without overruling it.")],
            )
            upload = SimpleUploadedFile("legal_overruling.csv", self._demo_csv(), content_type="text/csv")
            dataset = imports.create_dataset_from_upload(project, upload=upload, user=user,
                                                         source=DatasetSource.DEMO)
            imports.configure_import(dataset, text_column="text", label_column="label")
            dataset = imports.run_import(dataset.pk, embed=False)
            # The shipped file has 1,920 rows but LegalBench repeats some sentences (up to six times, always
            # with the same label); an import keeps each text once, so the project has 1,311 examples.
            rows = dataset.imported_count + dataset.duplicate_count
            self.stdout.write(
                f"Demo project: {dataset.imported_count:,} examples, {dataset.labelled_count:,} labelled "
                f"({rows:,} rows in {DEMO_FILE.name}; {dataset.duplicate_count:,} repeat a sentence already "
                "imported and were skipped).")
            # Embedded here, with a progress bar, so the first model is ready when the page opens.
            embed_project(project.pk, progress=self._bar)
            self.stderr.write("\n")
        self.stdout.write(self.style.SUCCESS("=" * 64))
        self.stdout.write(self.style.SUCCESS(f" LabelHub is at {url}"))
        if password_file.exists():
            self.stdout.write(self.style.SUCCESS(f" Log in as {username} / {password_file.read_text().strip()}"))
        else:
            self.stdout.write(self.style.SUCCESS(f" Log in as {username} (password set earlier)"))
        self.stdout.write(self.style.SUCCESS("=" * 64))

    def _bar(self, done: int, total: int) -> None:
        filled = int(30 * done / max(total, 1))
        bar = "#" * filled + "." * (30 - filled)
        self.stderr.write(f"\rEmbedding demo examples [{bar}] {done:,}/{total:,}", ending="")
        self.stderr.flush()

    def _demo_csv(self) -> bytes:
        """The shipped file with only the first rows' labels kept: the rest is the pool to label."""
        out = io.StringIO()
        writer = csv.writer(out)
        with DEMO_FILE.open(newline="", encoding="utf-8") as handle:
            for i, row in enumerate(csv.DictReader(handle)):
                if i == 0:
                    writer.writerow(["text", "label"])
                writer.writerow([row["text"], row["label"] if i < LABELLED_ROWS else ""])
        return out.getvalue().encode("utf-8")
