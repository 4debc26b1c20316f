"""End to end through a real `manage.py rqworker` process, as production runs it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse

from annotation.models import Annotation
from projects.models import Dataset, DatasetStatus, Example
from tests.conftest import login

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(tmp_path: Path, settings):
    if not settings.REDIS_URL or connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL and Redis (make test sets them up)")
    db = connection.settings_dict
    settings.MEDIA_ROOT = tmp_path / "media"
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "LABELHUB_DATA_DIR": str(tmp_path),
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "default", "--name", f"test-worker-{os.getpid()}"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for(predicate, timeout: float = 60.0, *, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"worker exited: {process.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_it_imports_an_upload_through_a_real_rqworker(worker, project, alice):
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
