"""Fault injection with real processes: a worker killed with SIGKILL in the middle of an import."""
from __future__ import annotations

import os
import signal
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from projects import imports
from projects.models import Dataset, DatasetStatus, Example

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_worker_killed_mid_import_leaves_no_rows_and_the_import_ends_failed(
        worker, project, alice, login, wait_for, settings):
    client = login(alice)
    content = b"text\n" + b"".join(b"sentence number %d of a long file\n" % i for i in range(300_000))
    client.post(reverse("projects:upload", args=[project.pk]), {"file": SimpleUploadedFile("big.csv", content)})
    dataset = Dataset.objects.get(project=project)
    response = client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]), {"text_column": "text"})
    assert response.status_code == 302
    wait_for(lambda: Dataset.objects.get(pk=dataset.pk).status == DatasetStatus.IMPORTING, timeout=120,
             process=worker)
    time.sleep(0.5)  # some batches inserted, none committed
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)

    assert Dataset.objects.get(pk=dataset.pk).status == DatasetStatus.IMPORTING  # stuck, as before the fix
    assert Example.objects.filter(project=project).count() == 0  # one transaction: nothing half-imported
    settings.IMPORT_STALE_SECONDS = 1
    time.sleep(1.5)
    # PostgreSQL ends the dead worker's transaction (and its lock on the dataset row) when it notices.
    wait_for(lambda: imports.recover_stale_imports(project) == 1, timeout=60)
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.FAILED
    assert "no worker made progress on it" in dataset.errors[0]["reason"]
    assert Example.objects.filter(project=project).count() == 0
    page = client.get(reverse("projects:dataset", args=[project.pk, dataset.pk]))
    assert page.status_code == 200 and b"retry it" in page.content
