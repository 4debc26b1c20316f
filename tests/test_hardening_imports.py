"""Imports that always end: bad cells give row-numbered errors, crashes and dead workers end in `failed`
with a reason, an unreachable queue fails the upload at once, and wide files are refused fast."""
from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import django_rq
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from labelhub import jobs
from projects import events, importing, imports
from projects.importing import ColumnMap
from projects.models import Dataset, DatasetStatus, Example, Project

pytestmark = pytest.mark.django_db

RUNNING = [DatasetStatus.QUEUED, DatasetStatus.VALIDATING, DatasetStatus.IMPORTING]


@pytest.fixture
def announced() -> Any:
    """The datasets whose end was announced (`dataset_imported`), in order."""
    seen: list[tuple[int, str]] = []

    def receiver(*, dataset: Dataset, **_: Any) -> None:
        seen.append((dataset.pk, dataset.status))

    events.dataset_imported.connect(receiver, sender=Dataset, dispatch_uid="tests.announced")
    yield seen
    events.dataset_imported.disconnect(sender=Dataset, dispatch_uid="tests.announced")


def queued_dataset(project: Project, alice: Any, name: str, content: bytes, **mapping: Any) -> Dataset:
    dataset = imports.create_dataset_from_upload(project, upload=SimpleUploadedFile(name, content), user=alice)
    return imports.configure_import(dataset, **{"text_column": "text", **mapping})


LONG_ID = "x" * 300
BAD_CELLS = [
    pytest.param("nul.csv", b"text,source\nfine text,a\nhas a \x00 NUL,b\n", {}, 3, "NUL", id="nul-in-text"),
    pytest.param("nul-meta.csv", b"text,source\nfine text,a\nsecond text,b\x00c\n", {}, 3, "NUL",
                 id="nul-in-metadata-cell"),
    pytest.param("nan.jsonl", b'{"text": "one"}\n{"text": "two", "score": NaN}\n', {}, 2, "NaN",
                 id="nan-in-metadata"),
    pytest.param("inf.jsonl", b'{"text": "one", "score": 1e999}\n', {}, 1, "1e999", id="1e999-in-metadata"),
    pytest.param("surrogate.jsonl", b'{"text": "one"}\n{"text": "broken \\ud800 text"}\n', {}, 2, "surrogate",
                 id="lone-surrogate-in-text"),
    pytest.param("surrogate-meta.json", b'[{"text": "one", "note": {"deep": ["\\udfff"]}}]', {}, 1, "surrogate",
                 id="lone-surrogate-in-metadata"),
    pytest.param("nul-key.jsonl", b'{"text": "one", "meta": {"a\\u0000b": 1}}\n', {}, 1, "NUL",
                 id="nul-in-a-nested-metadata-key"),
    pytest.param("long-id.csv", f"text,id\nfirst,1\nsecond,{LONG_ID}\n".encode(), {"id_column": "id"}, 3, "255",
                 id="external-id-over-255"),
    pytest.param("long-label.csv", f"text,label\nfirst,{'L' * 101}\n".encode(),
                 {"label_column": "label", "add_unknown_labels": True}, 2, "100", id="label-over-100"),
    pytest.param("deep-meta.jsonl", ('{"text": "one", "m": ' + "[" * 50 + "]" * 50 + "}\n").encode(), {}, 1,
                 "nested", id="metadata-nested-50-deep"),
    pytest.param("deeper.jsonl", ('{"text": "a"}\n{"text": "b", "m": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
                 .encode(), {}, 2, "nested too deeply", id="jsonl-line-nested-100000-deep"),
]


@pytest.mark.parametrize(("name", "content", "mapping", "row", "words"), BAD_CELLS)
def test_it_fails_a_bad_cell_with_a_row_numbered_reason_and_imports_nothing(
        project, alice, announced, name, content, mapping, row, words):
    dataset = queued_dataset(project, alice, name, content, **mapping)
    dataset = imports.run_import(dataset.pk)
    assert dataset.status == DatasetStatus.FAILED
    assert Example.objects.filter(project=project).count() == 0
    assert any(error["row"] == row and words in error["reason"] for error in dataset.errors), dataset.errors
    # The reasons are stored: the report itself must be storable (no NUL, no surrogate).
    json.dumps(dataset.errors).encode("utf-8")
    assert announced == [(dataset.pk, DatasetStatus.FAILED)]


def test_a_json_array_nested_100000_deep_fails_with_a_reason(project, alice, announced):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(imports.ActionError, match="nested too deeply"):  # seen at upload when it comes early
        queued_dataset(project, alice, "early.json", f'[{{"text": "a"}}, {deep}]'.encode())
    # Past the rows the upload samples, the import finds it.
    rows = ", ".join(json.dumps({"text": f"row {i}"}) for i in range(60))
    dataset = queued_dataset(project, alice, "deep.json", f"[{rows}, {deep}]".encode())
    dataset = imports.run_import(dataset.pk)
    assert dataset.status == DatasetStatus.FAILED
    assert "nested too deeply" in dataset.errors[0]["reason"]
    assert announced == [(dataset.pk, DatasetStatus.FAILED)]


def test_an_unexpected_error_fails_the_import_with_a_reason_and_announces_the_end(
        project, alice, announced, monkeypatch):
    dataset = queued_dataset(project, alice, "fine.csv", b"text\nfirst\nsecond\n")

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(imports, "_insert", crash)  # the insert pass (SQLite)
    monkeypatch.setattr(imports, "_check_and_copy", crash)  # the one pass that checks and copies (PostgreSQL)
    dataset = imports.run_import(dataset.pk)
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.FAILED and dataset.finished_at is not None
    assert "unexpected error (ZeroDivisionError)" in dataset.errors[0]["reason"]
    assert "Nothing was imported" in dataset.errors[0]["reason"]
    assert Example.objects.count() == 0
    assert announced == [(dataset.pk, DatasetStatus.FAILED)]


def _age(dataset: Dataset, seconds: float) -> None:
    Dataset.objects.filter(pk=dataset.pk).update(created_at=timezone.now() - timedelta(seconds=seconds))
    cache.delete(imports._alive_key(dataset.pk))


@pytest.mark.parametrize("status", RUNNING)
def test_a_stale_import_is_failed_with_a_reason_and_announced(project, alice, announced, settings, status):
    settings.IMPORT_STALE_SECONDS = 60
    dataset = queued_dataset(project, alice, "lost.csv", b"text\nfirst\n")
    Dataset.objects.filter(pk=dataset.pk).update(status=status)
    _age(dataset, 120)
    assert imports.recover_stale_imports(project) == 1
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.FAILED
    assert "no worker made progress on it" in dataset.errors[0]["reason"]
    assert announced == [(dataset.pk, DatasetStatus.FAILED)]
    assert imports.recover_stale_imports(project) == 0  # once


def test_a_live_or_young_import_is_left_alone(project, alice, settings):
    settings.IMPORT_STALE_SECONDS = 60
    young = queued_dataset(project, alice, "young.csv", b"text\nfirst\n")
    beating = queued_dataset(project, alice, "beating.csv", b"text\nsecond\n")
    Dataset.objects.filter(pk=beating.pk).update(status=DatasetStatus.VALIDATING,
                                                 created_at=timezone.now() - timedelta(hours=2))
    imports._mark_alive(beating.pk)  # a progress report a moment ago
    assert imports.recover_stale_imports(project) == 0
    assert set(Dataset.objects.values_list("status", flat=True)) == {DatasetStatus.QUEUED, DatasetStatus.VALIDATING}
    assert young.pk != beating.pk


def test_a_queued_import_still_waiting_in_redis_is_not_stale(
        project, alice, settings, django_capture_on_commit_callbacks):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis")
    settings.IMPORT_STALE_SECONDS = 60
    dataset = imports.create_dataset_from_upload(project, upload=SimpleUploadedFile("wait.csv", b"text\nx\n"),
                                                 user=alice)
    with django_capture_on_commit_callbacks(execute=True):
        imports.start_import(dataset, text_column="text")
    _age(dataset, 3600)
    assert jobs.job_waiting(imports.import_job_id(dataset.pk), imports.IMPORT_QUEUE)
    assert imports.recover_stale_imports(project) == 0
    django_rq.get_queue(imports.IMPORT_QUEUE).empty()
    assert imports.recover_stale_imports(project) == 1


def test_the_progress_page_and_the_api_end_a_dead_import(project, alice, login, api_client, settings):
    settings.IMPORT_STALE_SECONDS = 60
    page = queued_dataset(project, alice, "page.csv", b"text\nfirst\n")
    api = queued_dataset(project, alice, "api.csv", b"text\nsecond\n")
    for dataset in (page, api):
        Dataset.objects.filter(pk=dataset.pk).update(status=DatasetStatus.VALIDATING)
        _age(dataset, 120)
    response = login(alice).get(reverse("projects:dataset", args=[project.pk, page.pk]))
    assert response.status_code == 200 and b"no worker made progress" in response.content
    cache.delete(f"labelhub:import-stale-check:{project.pk}")
    response = api_client(alice).get(reverse("api-dataset-detail", args=[project.pk, api.pk]))
    assert response.status_code == 200 and response.json()["status"] == DatasetStatus.FAILED
    assert not Dataset.objects.filter(status__in=RUNNING).exists()


def test_the_project_page_ends_a_dead_import(project, alice, login, settings):
    settings.IMPORT_STALE_SECONDS = 60
    dataset = queued_dataset(project, alice, "dead.csv", b"text\nfirst\n")
    Dataset.objects.filter(pk=dataset.pk).update(status=DatasetStatus.IMPORTING)
    _age(dataset, 120)
    response = login(alice).get(reverse("projects:detail", args=[project.pk]), HTTP_HX_REQUEST="true",
                                HTTP_HX_TARGET="project-datasets")
    assert response.status_code == 200
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.FAILED


def test_an_unreachable_queue_fails_the_upload_at_once(project, alice, announced, monkeypatch,
                                                       django_capture_on_commit_callbacks):
    def redis_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(jobs, "_dispatch", redis_down)
    dataset = imports.create_dataset_from_upload(project, upload=SimpleUploadedFile("a.csv", b"text\nx\n"), user=alice)
    with django_capture_on_commit_callbacks(execute=True):
        imports.start_import(dataset, text_column="text")
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.FAILED
    assert dataset.errors[0]["reason"] == imports.UNQUEUED_REASON
    assert announced == [(dataset.pk, DatasetStatus.FAILED)]


@pytest.mark.django_db(transaction=True)
def test_the_upload_api_answers_503_when_the_queue_is_unreachable(project, alice, api_client, monkeypatch):
    def redis_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Connection refused.")

    monkeypatch.setattr(jobs, "_dispatch", redis_down)
    response = api_client(alice).post(reverse("api-file-import", args=[project.pk]),
                                      {"file": SimpleUploadedFile("a.csv", b"text\nx\n")}, format="multipart")
    assert response.status_code == 503, response.content
    assert "unreachable" in response.json()["detail"]
    assert Dataset.objects.get().status == DatasetStatus.FAILED


# --- Wide files ----------------------------------------------------------------------------------------------------


def test_the_header_check_is_linear_in_the_number_of_columns(tmp_path: Path):
    columns = [f"c{i}" for i in range(60_000)]
    path = tmp_path / "wide.csv"
    path.write_text(",".join(["text", *columns]) + "\n" + ",".join(["hello", *["1"] * len(columns)]) + "\n")
    started = time.perf_counter()
    rows = list(importing.iter_rows(path, "csv", ColumnMap(text="text", metadata=()), known_labels=None,
                                    multi_label=False, max_text_chars=100, max_columns=100_000))
    # Quadratic, 60,000 columns took about a minute; linear, well under a second.
    assert time.perf_counter() - started < 5
    assert len(rows) == 1 and rows[0].text == "hello"


@pytest.mark.parametrize(("name", "content"), [
    ("wide.csv", (",".join(f"c{i}" for i in range(1001)) + "\n").encode()),
    ("wide.jsonl", (json.dumps({f"k{i}": i for i in range(1001)}) + "\n").encode()),
])
def test_a_file_with_more_columns_than_the_limit_is_refused_at_upload(project, alice, api_client, name, content):
    assert django_settings.IMPORT_MAX_COLUMNS == 1000
    response = api_client(alice).post(reverse("api-file-import", args=[project.pk]),
                                      {"file": SimpleUploadedFile(name, content)}, format="multipart")
    assert response.status_code == 400
    assert "the limit is 1,000" in response.json()["detail"] and "LABELHUB_IMPORT_MAX_COLUMNS" in \
        response.json()["detail"]
    assert not Dataset.objects.exists()


def test_imports_run_on_their_own_queue(project, alice, settings, django_capture_on_commit_callbacks):
    assert "imports" in settings.RQ_QUEUES
    if not settings.REDIS_URL:
        pytest.skip("needs Redis")
    dataset = imports.create_dataset_from_upload(project, upload=SimpleUploadedFile("q.csv", b"text\nx\n"),
                                                 user=alice)
    with django_capture_on_commit_callbacks(execute=True):
        imports.start_import(dataset, text_column="text")
    assert django_rq.get_queue("imports").count == 1
    assert django_rq.get_queue("default").count == 0


def test_every_worker_the_makefile_starts_listens_on_the_imports_queue():
    makefile = (Path(django_settings.BASE_DIR) / "Makefile").read_text()
    commands = re.findall(r"rqworker([^\n;&]*)", makefile)
    assert commands
    for arguments in commands:
        assert "imports" in arguments.split(), arguments
