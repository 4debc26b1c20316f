"""What `make run` prints: the address it really serves on (HOST and PORT honoured everywhere it is printed), and
the demo project's size with the reason it is smaller than the shipped file."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command

from labelhub import firstlook
from projects.models import Dataset, Example, Project


def test_make_passes_port_and_host_from_the_command_line_and_the_environment() -> None:
    def dry_run(*args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(["make", "-n", "run", *args], cwd=settings.BASE_DIR, capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", **(env or {})}, check=True)
        return out.stdout

    assert "labelhub.firstlook --host 127.0.0.1 --port 8000 " in dry_run()
    assert "labelhub.firstlook --host 127.0.0.1 --port 9123 " in dry_run(env={"PORT": "9123"})
    assert "labelhub.firstlook --host 0.0.0.0 --port 8765 " in dry_run("HOST=0.0.0.0", "PORT=8765")


@pytest.mark.parametrize(("host", "port", "url"), [
    ("127.0.0.1", 9123, "http://127.0.0.1:9123/"),
    ("0.0.0.0", 8765, "http://127.0.0.1:8765/"),  # a wildcard bind is reached on the loopback here
    ("localhost", 8000, "http://localhost:8000/"),
    ("::1", 8001, "http://[::1]:8001/"),
])
def test_the_first_look_prints_and_passes_on_the_address_it_serves(host: str, port: int, url: str,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[list[str]] = []
    started: list[list[str]] = []
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # no private Redis started
    monkeypatch.setattr(firstlook.subprocess, "run", lambda argv, **kwargs: ran.append(argv))
    monkeypatch.setattr(firstlook, "worker_queues", lambda: ["default", "imports"])
    monkeypatch.setattr(firstlook.Supervisor, "start", lambda self, name, argv, **kw: started.append(argv))
    monkeypatch.setattr(firstlook.Supervisor, "watch", lambda self: 0)
    monkeypatch.setattr(firstlook.Supervisor, "stop", lambda self: None)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert firstlook.main(["--host", host, "--port", str(port)]) == 0
    finally:
        for signum, handler in handlers.items():  # main() set its own; put the test runner's back
            signal.signal(signum, handler)
    seed = next(argv for argv in ran if "seed_demo" in argv)
    assert seed[seed.index("--url") + 1] == url
    assert started[-1][-1] == f"{host}:{port}"  # runserver binds what was asked
    assert f"LabelHub is at {url} " in capsys.readouterr().out


@pytest.fixture
def _private_data_dir(settings: Any, tmp_path: Path) -> None:
    settings.DATA_DIR = tmp_path  # the admin password file goes here, not into the checkout's var/


@pytest.mark.django_db
@pytest.mark.usefixtures("_private_data_dir")
def test_seed_demo_prints_the_url_it_is_given_and_why_the_demo_has_fewer_examples_than_rows(fake_encoder: Any) -> None:
    with (Path(settings.BASE_DIR) / "demo" / "legal_overruling.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row["text"] for row in csv.DictReader(handle)]
    distinct = len(set(rows))
    out, err = io.StringIO(), io.StringIO()
    call_command("seed_demo", url="http://127.0.0.1:9123/", stdout=out, stderr=err)
    text = out.getvalue()
    assert " LabelHub is at http://127.0.0.1:9123/" in text and ":8000" not in text
    project = Project.objects.get(name="Overruling sentences")
    assert Example.objects.filter(project=project).count() == distinct
    dataset = Dataset.objects.get(project=project)
    assert dataset.duplicate_count == len(rows) - distinct
    assert (f"Demo project: {distinct:,} examples, 24 labelled ({len(rows):,} rows in legal_overruling.csv; "
            f"{len(rows) - distinct:,} repeat a sentence already imported and were skipped).") in text
    # What the README and demo/README.md say is what an import of the shipped file gives.
    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    assert f"{len(rows):,} rows" in readme and f"{distinct:,} distinct sentences" in readme
    # Run again (every `make run` does): nothing is imported twice and the banner still has the address.
    again = io.StringIO()
    call_command("seed_demo", url="http://127.0.0.1:9124/", stdout=again, stderr=io.StringIO())
    assert " LabelHub is at http://127.0.0.1:9124/" in again.getvalue()
    assert Example.objects.filter(project=project).count() == distinct


def test_the_first_looks_sqlite_keeps_one_answer_per_person(tmp_path: Path) -> None:
    # SQLite cannot say NULLS NOT DISTINCT, and Django left that constraint out there: on the first look a
    # second submit for an item added a second answer from the same person. The partial unique indexes that
    # replace it exist on SQLite too, and the submit's ON CONFLICT DO NOTHING then sees them.
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'first.sqlite3'}", "DEBUG": "1"}
    env.pop("REDIS_URL", None)
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, capture_output=True, cwd=settings.BASE_DIR)
    script = (
        "from django.contrib.auth.models import User; from django.db import connection;"
        "from projects.models import Team, Example; from projects import taxonomy;"
        "from annotation import actions;"
        "u = User.objects.create_user('ann'); t = Team.objects.create(name='t');"
        "p = taxonomy.create_project(t, name='p', task_type='single_label', created_by=u,"
        " labels=[taxonomy.LabelSpec('Yes')]); tv = p.current_taxonomy();"
        "e = Example.objects.create(project=p, text='x', content_hash='x');"
        "c = connection.cursor();"
        "row = [e.pk, u.pk, tv.pk, '[]', '[]', 'ui', '2026-01-01'];"
        "[c.execute(actions._INSERT_ANNOTATION, row) for _ in range(2)];"
        "print(e.annotations.count())"
    )
    out = subprocess.run([*manage, "shell", "-c", script], env=env, check=True, capture_output=True, text=True,
                         cwd=settings.BASE_DIR)
    assert out.stdout.split()[-1] == "1"
