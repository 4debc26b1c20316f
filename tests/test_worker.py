"""End to end through a real `manage.py rqworker` process, as production runs it."""
from __future__ import annotations

import csv
import io

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotation.models import Annotation, ExampleScore
from learning.models import ModelVersion, RunStatus, TrainingRun
from projects.models import Dataset, DatasetStatus, Example

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_it_imports_an_upload_through_a_real_rqworker(worker, project, alice, login, wait_for):
    client = login(alice)
    content = b"text,label\n" + b"".join(b"sentence number %d,%s\n" % (i, b"Yes" if i % 2 else b"No")
                                          for i in range(3000))
    client.post(reverse("projects:upload", args=[project.pk]), {"file": SimpleUploadedFile("rows.csv", content)})
    dataset = Dataset.objects.get(project=project)
    response = client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]),
                           {"text_column": "text", "label_column": "label"})
    assert response.status_code == 302
    wait_for(lambda: Dataset.objects.get(pk=dataset.pk).status in {DatasetStatus.DONE, DatasetStatus.FAILED},
             process=worker)
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert Example.objects.filter(project=project).count() == 3000
    assert Annotation.objects.in_project(project).count() == 3000
    assert dataset.progress()["percent"] == 100.0


def demo_rows(start: int, stop: int, labelled: int) -> bytes:
    """Rows of the shipped demo set (real legal sentences), the first `labelled` with their label."""
    with (settings.BASE_DIR / "demo" / "legal_overruling.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[start:stop]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    for i, row in enumerate(rows):
        writer.writerow([row["text"], row["label"] if i < labelled else ""])
    return out.getvalue().encode()


def upload_and_import(client, project, name: str, content: bytes) -> None:
    client.post(reverse("projects:upload", args=[project.pk]), {"file": SimpleUploadedFile(name, content)})
    dataset = Dataset.objects.get(project=project, name=name)
    client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]),
                {"text_column": "text", "label_column": "label"})


def test_it_learns_from_imported_labels_and_rescores_after_more(worker, project, alice, login, wait_for):
    client = login(alice)
    upload_and_import(client, project, "first.csv", demo_rows(0, 160, labelled=40))
    wait_for(lambda: ModelVersion.objects.filter(project=project).exists(), timeout=240, process=worker)
    # The quality report is a job of its own on the worker's `reports` queue, after the version serves.
    wait_for(lambda: ModelVersion.objects.filter(project=project, report_at__isnull=False).exists(), timeout=240,
             process=worker)
    first = ModelVersion.objects.get(project=project)
    assert first.n_labels == 40
    assert 0.0 <= first.metrics["accuracy"]["value"] <= 1.0
    before = dict(ExampleScore.objects.filter(project=project).values_list("example_id", "confidence"))
    assert len(before) == Example.objects.filter(project=project, annotations__isnull=True).count() > 0

    upload_and_import(client, project, "second.csv", demo_rows(160, 220, labelled=60))
    wait_for(lambda: ModelVersion.objects.filter(project=project, number=2).exists(), timeout=240, process=worker)
    second = ModelVersion.objects.get(project=project, number=2)
    assert second.n_labels > first.n_labels
    after = dict(ExampleScore.objects.filter(project=project).values_list("example_id", "confidence"))
    common = set(before) & set(after)
    assert common and sum(abs(before[i] - after[i]) > 1e-6 for i in common) > len(common) / 2
    assert not TrainingRun.objects.filter(project=project, status=RunStatus.FAILED).exists()
