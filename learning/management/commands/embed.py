"""Embed the examples that lack embeddings for the configured encoder (after switching encoder or backend)."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from learning import actions
from projects.models import Project


class Command(BaseCommand):
    help = ("Encode every example without an embedding for the current encoder (LABELHUB_ENCODER, "
            "LABELHUB_ENCODER_BACKEND), project by project; then each project with labels trains again.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project_ids", nargs="*", type=int, help="only these projects (default: all)")

    def handle(self, *args: Any, project_ids: list[int], **options: Any) -> None:
        encoder = actions.current_encoder()
        self.stdout.write(f"Encoder: {encoder.name}")
        projects = Project.objects.order_by("pk")
        if project_ids:
            projects = projects.filter(pk__in=project_ids)
        for project in projects:
            count = actions.embed_project(project.pk)
            self.stdout.write(f"Project {project.pk} ({project.name}): {count:,} examples embedded")
