"""The first look as `make run` starts it, under load: no label lost, no error shown.

`python -m labelhub.firstlook` (what `make run` runs after installing) starts a private
Redis, migrates a SQLite file, seeds the demo project (1,311 real legal sentences),
then an RQ worker and runserver. Five annotators log in over HTTP and label at browser
speed while the worker refits the model after each burst of labels: every response
must be a success, and every label submitted must be saved exactly once. Before the
first look had a worker process (jobs ran in threads of the web server, SQLite took
the write lock lazily), submits answered 500 "database is locked" whenever a model
update committed.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
from django.conf import settings
from django.urls import reverse

pytestmark = [pytest.mark.worker, pytest.mark.slow]

ANNOTATORS = 5
LABELS_EACH = 30
PASSWORD = "first-look-annotator-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FirstLook:
    process: subprocess.Popen[bytes]
    base: str
    env: dict[str, str]
    log: Path
    data_dir: Path

    def manage(self, code: str) -> str:
        """Run Python in `manage.py shell` against the first look's database; its last line of output."""
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=settings.BASE_DIR,
                             env=self.env, capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip().splitlines()[-1]

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)


def first_look_env(data_dir: Path) -> dict[str, str]:
    """`make run` on a fresh machine: no DATABASE_URL (SQLite), no REDIS_URL, DEBUG on."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(DEBUG="1", LABELHUB_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def first_look(tmp_path: Path) -> Iterator[FirstLook]:
    data_dir = tmp_path / "var"
    web_port, redis_port = free_port(), free_port()
    env = first_look_env(data_dir)
    log = tmp_path / "first-look.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "labelhub.firstlook", "--port", str(web_port), "--redis-port", str(redis_port)],
            cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
    look = FirstLook(process, f"http://127.0.0.1:{web_port}", env, log, data_dir)
    try:
        deadline = time.monotonic() + 600  # migrate + import and embed the demo set on two cores
        while f"LabelHub is at {look.base}/" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")[-5000:]
            assert time.monotonic() < deadline, "make run did not come up"
            time.sleep(1)
        while True:
            try:
                if requests.get(f"{look.base}/accounts/login/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-5000:]
            time.sleep(0.5)
        # Both places that print the address (seed_demo's banner, the supervisor) print this run's port.
        assert log.read_text(errors="replace").count(f"LabelHub is at {look.base}/") == 2
        yield look
    finally:
        children = look.descendants() if process.poll() is None else []
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        gone, alive = psutil.wait_procs(children, timeout=10)
        for leftover in alive:
            leftover.kill()
        assert not alive, f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"


@dataclass
class Annotator:
    username: str
    statuses: list[tuple[int, str]] = field(default_factory=list)
    submitted: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    slowest: float = 0.0


def field_value(html: str, name: str) -> str | None:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    return match.group(1) if match else None


def annotate(base: str, project_pk: int, annotator: Annotator, n: int, stop: threading.Event) -> None:
    """A person at the labelling page: read the item, press a label key, see the next one (HTMX), a few
    labels a second; the swapped-in item loads the model badge as the browser would."""
    session = requests.Session()
    session.trust_env = False  # loopback only, never a proxy

    def call(method: str, path: str, **kwargs: object) -> requests.Response:
        started = time.monotonic()
        response = session.request(method, base + path, timeout=60, allow_redirects=False, **kwargs)  # type: ignore[arg-type]
        annotator.slowest = max(annotator.slowest, time.monotonic() - started)
        annotator.statuses.append((response.status_code, f"{method} {path}"))
        return response

    login = reverse("login")
    call("GET", login)
    call("POST", login, data={"username": annotator.username, "password": PASSWORD,
                              "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    label_path = reverse("annotation:label", args=[project_pk])
    html = call("GET", label_path).text
    for _ in range(n):
        if stop.is_set():
            return
        ticket = field_value(html, "ticket")
        example = re.search(r'data-example="(\d+)"', html)
        keys = re.findall(r'<button type="submit" name="label" value="([^"]+)"', html)
        if not ticket or not example or not keys:
            annotator.messages.append(f"no item to label: {html[:300]}")
            return
        time.sleep(random.uniform(0.15, 0.45))  # reading the sentence
        token = session.cookies["csrftoken"]
        response = call("POST", reverse("annotation:submit", args=[project_pk]),
                        data={"csrfmiddlewaretoken": token, "ticket": ticket, "label": random.choice(keys),
                              "taxonomy_version": field_value(html, "taxonomy_version") or ""},
                        headers={"HX-Request": "true", "X-CSRFToken": token})
        if response.status_code >= 400:
            continue  # recorded; the test fails on it
        annotator.submitted.append(int(example.group(1)))
        html = response.text
        alert = re.search(r'role="alert">([^<]*)<', html)
        if alert:
            annotator.messages.append(alert.group(1))
        call("GET", reverse("learning:model-status", args=[project_pk]), headers={"HX-Request": "true"})


SETUP = """
from django.contrib.auth.models import User
from projects.models import Membership, Project, Role
project = Project.objects.get(name="Overruling sentences")
for i in range(ANNOTATORS):
    user = User.objects.create_user(f"annotator{i}", password="PASSWORD")
    Membership.objects.create(team=project.team, user=user, role=Role.ANNOTATOR)
print(project.pk)
"""

REPORT = """
import json
from annotation.models import Annotation
from learning.models import RunStatus, TrainingRun
runs = TrainingRun.objects.filter(project_id=PROJECT)
print(json.dumps({
    "pending": runs.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).count(),
    "succeeded_at": [r.finished_at.timestamp() for r in runs.filter(status=RunStatus.SUCCEEDED)],
    "failed": list(runs.filter(status=RunStatus.FAILED).values_list("error", flat=True)),
    "saved": {f"annotator{i}": list(Annotation.objects.filter(annotator__username=f"annotator{i}",
                                                               example__project_id=PROJECT)
                                     .values_list("example_id", flat=True)) for i in range(ANNOTATORS)},
}))
"""


def test_it_saves_every_label_of_five_annotators_while_the_model_updates(first_look: FirstLook) -> None:
    project_pk = int(first_look.manage(
        SETUP.replace("ANNOTATORS", str(ANNOTATORS)).replace("PASSWORD", PASSWORD)))
    started = time.time()
    annotators = [Annotator(f"annotator{i}") for i in range(ANNOTATORS)]
    stop = threading.Event()
    threads = [threading.Thread(target=annotate, args=(first_look.base, project_pk, a, LABELS_EACH, stop))
               for a in annotators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    stop.set()
    ended = time.time()

    failures = [(a.username, status, what) for a in annotators for status, what in a.statuses if status >= 400]
    assert failures == [], failures[:20]
    assert [a.messages for a in annotators] == [[]] * ANNOTATORS
    assert [len(a.submitted) for a in annotators] == [LABELS_EACH] * ANNOTATORS

    # Let the last update finish, then read what was saved.
    report_code = REPORT.replace("PROJECT", str(project_pk)).replace("ANNOTATORS", str(ANNOTATORS))
    deadline = time.monotonic() + 180
    while True:
        report = json.loads(first_look.manage(report_code))
        if report["pending"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)

    for annotator in annotators:
        saved = report["saved"][annotator.username]
        assert sorted(saved) == sorted(annotator.submitted), annotator.username  # each label saved exactly once
        assert len(set(saved)) == len(saved)
    assert report["failed"] == []
    assert report["pending"] == 0
    # The worker refitted the model while people labelled (the case that used to answer 500).
    updates_during = [t for t in report["succeeded_at"] if started < t < ended]
    assert len(updates_during) >= 2, report["succeeded_at"]
    print(f"{sum(len(a.statuses) for a in annotators)} requests, {len(updates_during)} model updates, "
          f"slowest response {max(a.slowest for a in annotators):.2f} s")


def test_the_admin_login_it_prints_opens_the_job_pages(first_look: FirstLook) -> None:
    """`make run` prints the demo's size with its reason and an admin login; with that login the job pages
    documented in the README (/admin/jobs/) answer."""
    log = first_look.log.read_text(errors="replace")
    assert re.search(r"Demo project: 1,311 examples, 24 labelled \(1,920 rows in legal_overruling.csv; 609 repeat", log)
    login_line = re.search(r"Log in as (\S+) / (\S+)", log)
    assert login_line, log[-3000:]
    session = requests.Session()
    session.trust_env = False
    session.get(f"{first_look.base}/accounts/login/", timeout=30)
    response = session.post(f"{first_look.base}/accounts/login/", timeout=30, allow_redirects=False, data={
        "username": login_line.group(1), "password": login_line.group(2),
        "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    assert response.status_code == 302
    for path in ("/admin/jobs/", "/admin/jobs/queues/0/"):
        page = session.get(f"{first_look.base}{path}", timeout=30)
        assert page.status_code == 200 and "default" in page.text, (path, page.status_code)


def test_it_keeps_queued_jobs_when_make_runs_redis_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis import Redis
    from rq import Queue

    from labelhub import firstlook

    monkeypatch.setenv("LABELHUB_DATA_DIR", str(tmp_path))
    port = free_port()
    for attempt in range(2):
        supervisor = firstlook.Supervisor()
        try:
            url = firstlook.start_redis(supervisor, port)
            assert url == f"redis://127.0.0.1:{port}/0"
            queue = Queue("default", connection=Redis.from_url(url))
            if attempt == 0:
                queue.enqueue("learning.jobs.train_project", 1)
            else:
                assert queue.count == 1  # written to var/redis/ before the stop, read back at the start
            # A second `make run` uses the server already on the port instead of starting another.
            second = firstlook.Supervisor()
            assert firstlook.start_redis(second, port) == url and second.children == []
        finally:
            supervisor.stop()
        assert not firstlook.redis_answers(port)
