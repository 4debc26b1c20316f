"""Annotations: who gave which labels to which example, under which taxonomy version."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from projects.models import Example, Project, TaxonomyVersion


class AnnotationSource(models.TextChoices):
    UI = "ui", "Labelling page"
    IMPORT = "import", "Import"
    API = "api", "REST API"


class AnnotationQuerySet(models.QuerySet["Annotation"]):
    def in_project(self, project: Project | int) -> "AnnotationQuerySet":
        return self.filter(example__project=project)


class Annotation(models.Model):
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                  related_name="annotations")
    taxonomy_version = models.ForeignKey(TaxonomyVersion, on_delete=models.CASCADE, related_name="annotations")
    # Stable label keys (Label.key), so a rename never touches annotations.
    label_keys = models.JSONField(default=list)
    source = models.CharField(max_length=8, choices=AnnotationSource.choices, default=AnnotationSource.UI)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AnnotationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["example", "annotator", "taxonomy_version"],
                name="one_annotation_per_annotator_per_example_per_version",
                nulls_distinct=False,
            ),
        ]
        indexes = [models.Index(fields=["example", "-created_at"], name="annotation_example_recent")]

    def __str__(self) -> str:
        return f"{self.example_id}: {', '.join(self.label_keys)}"
