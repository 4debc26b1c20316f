"""Every file of the bad-input corpus (tests/badinput) through the upload API, the bulk API and predict:
never a 5xx, never a dataset left running once the jobs ran, no example added where the input was refused."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from projects.models import Dataset, DatasetStatus, Example

pytestmark = pytest.mark.django_db

CORPUS = sorted(p for p in (Path(__file__).parent / "badinput").iterdir() if p.name != "README.md")
RUNNING = [DatasetStatus.QUEUED, DatasetStatus.VALIDATING, DatasetStatus.IMPORTING]


def test_the_corpus_is_there():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_bad_input_is_answered_4xx_and_changes_nothing(path: Path, trained: Any, alice: Any, api_client: Any,
                                                       run_jobs: Any) -> None:
    project = trained
    client = api_client(alice)
    content = path.read_bytes()

    before = Example.objects.count()
    with run_jobs():
        response = client.post(reverse("api-file-import", args=[project.pk]),
                               {"file": SimpleUploadedFile(path.name, content)}, format="multipart")
    assert response.status_code < 500, response.content[:500]
    assert not Dataset.objects.filter(status__in=RUNNING).exists()
    refused = response.status_code >= 400 or Dataset.objects.filter(status=DatasetStatus.FAILED).exists()
    if refused:
        assert Example.objects.count() == before
    else:
        assert Dataset.objects.get().status == DatasetStatus.DONE

    for name in ("api-bulk-import", "api-predict"):
        before = Example.objects.count()
        with run_jobs():
            response = client.post(reverse(name, args=[project.pk]), data=content, content_type="application/json")
        assert response.status_code < 500, (name, response.content[:500])
        assert not Dataset.objects.filter(status__in=RUNNING).exists()
        if response.status_code >= 400:
            assert Example.objects.count() == before, name
