"""Personas and helpers shared by the whole suite.

alice manages team Alpha Legal and its project, bob annotates in that team,
charlie belongs to another team and must get 404 on everything of alice's.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django_rq
import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rq import SimpleWorker

from projects import taxonomy
from projects.models import Membership, Project, Role, Team

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _empty_queues(settings: Any) -> Iterator[None]:
    # `make test` points REDIS_URL at a database of its own (15); never flush
    # a Redis the tests were not given.
    if not settings.REDIS_URL:
        yield
        return
    connection = django_rq.get_connection("default")
    connection.flushdb()
    yield
    connection.flushdb()


@pytest.fixture
def team(db: None) -> Team:
    return Team.objects.create(name="Alpha Legal")


@pytest.fixture
def other_team(db: None) -> Team:
    return Team.objects.create(name="Charlie & Co")


def _member(team: Team, username: str, role: str) -> User:
    user = User.objects.create_user(username=username, password=f"{username}-password-123")
    Membership.objects.create(team=team, user=user, role=role)
    return user


@pytest.fixture
def alice(team: Team) -> User:
    return _member(team, "alice", Role.MANAGER)


@pytest.fixture
def bob(team: Team) -> User:
    return _member(team, "bob", Role.ANNOTATOR)


@pytest.fixture
def charlie(other_team: Team) -> User:
    return _member(other_team, "charlie", Role.MANAGER)


@pytest.fixture
def project(team: Team, alice: User) -> Project:
    return taxonomy.create_project(
        team, name="Overruling", task_type="single_label", created_by=alice,
        labels=[taxonomy.LabelSpec("Yes"), taxonomy.LabelSpec("No")],
    )


@pytest.fixture
def multi_project(team: Team, alice: User) -> Project:
    return taxonomy.create_project(
        team, name="Ticket topics", task_type="multi_label", created_by=alice,
        labels=[taxonomy.LabelSpec(name) for name in ("Hardware", "Access", "Billing")],
    )


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def htmx(client: Client) -> dict[str, str]:
    return {"HTTP_HX_REQUEST": "true"}


def api_client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def run_jobs(django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """Run what a request queued: its on-commit callbacks, then the RQ queue (in-process, no fork)."""

    class Runner:
        def __init__(self) -> None:
            self._capture = None

        def __enter__(self) -> "Runner":
            self._capture = django_capture_on_commit_callbacks(execute=True)
            self._capture.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            assert self._capture is not None
            self._capture.__exit__(*exc)
            worker = django_rq.get_worker("default", worker_class=SimpleWorker)
            worker.work(burst=True)

    return Runner
