"""Personas, helpers and shared set-ups of the whole suite.

alice manages team Alpha Legal and its project, bob annotates in that team,
charlie belongs to another team and must get 404 on everything of alice's.

Test modules never import each other (or this file): what two of them share is a
fixture here, helper functions included (a fixture that returns the function).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import django_rq
import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient
from rq import SimpleWorker

from annotation.models import Annotation, AnnotationSource, ExampleScore
from learning import actions as learning_actions
from learning import span_loop, store, token_store
from learning.models import EmbeddingChunk, ModelVersion, TrainingRun
from projects import taxonomy, tokens
from projects.importing import content_hash
from projects.models import Example, Membership, Project, Role, Team
from serving import served

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _isolated_media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _no_training_debounce(settings: Any) -> None:
    # The debounce is a delayed job (RQ's scheduled registry, which a burst worker never
    # runs) and makes a run claimed early come back later: tests train at once.
    settings.TRAIN_DEBOUNCE_SECONDS = 0


@pytest.fixture(autouse=True)
def _empty_queues(settings: Any) -> Iterator[None]:
    # `make test` points REDIS_URL at a database of its own (15); never flush
    # a Redis the tests were not given.
    if not settings.REDIS_URL:
        yield
        return
    redis = django_rq.get_connection("default")
    redis.flushdb()
    yield
    redis.flushdb()


@pytest.fixture
def data_dir() -> Path:
    """The small real data sets shipped with the tests (tests/data, see its README)."""
    return DATA


# --- Personas and projects -------------------------------------------------------------------------------------


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


# --- Clients -------------------------------------------------------------------------------------------------------


@pytest.fixture
def login() -> Callable[[User], Client]:
    """`login(user)`: a test client logged in as `user`."""

    def login(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return login


@pytest.fixture
def htmx() -> dict[str, str]:
    """The headers of an HTMX request: `client.get(url, **htmx)`."""
    return {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def api_client() -> Callable[[User | None], APIClient]:
    """`api_client(user)`: an API client with the user's token (none for `None`)."""

    def api_client(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            _, key = tokens.create_personal_token(user, name="tests", expires_in_days=None)
            client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return client

    return api_client


# --- Jobs ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def run_jobs(django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """Run what a request queued: its on-commit callbacks, then the RQ queue (in-process, no fork)."""

    class Runner:
        def __init__(self) -> None:
            self._capture = None

        def __enter__(self) -> Runner:
            self._capture = django_capture_on_commit_callbacks(execute=True)
            self._capture.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            assert self._capture is not None
            self._capture.__exit__(*exc)
            # Every queue a real worker listens on (`make worker`): imports and reports have their own.
            worker = django_rq.get_worker("default", "imports", "reports", worker_class=SimpleWorker)
            worker.work(burst=True)

    return Runner


@pytest.fixture
def worker(tmp_path: Path, settings: Any) -> Iterator[subprocess.Popen[str]]:
    """A real `manage.py rqworker` process, started as `make worker` starts it."""
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
        # The worker keeps a (short) debounce: a delayed job its scheduler has to move.
        "LABELHUB_TRAIN_DEBOUNCE_SECONDS": "0.5",
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "default", "imports", "reports", "--with-scheduler",
         "--name", f"test-worker-{os.getpid()}"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    # Its whole group: a job still running at the end leaves rq's work horse (a fork of the worker) behind; one
    # was found alive 40 minutes after a fresh-clone CI run, its database gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def span_data_dir(settings: Any, tmp_path: Path) -> Iterator[None]:
    """Span-project tests: their own data directory and a small seed, and the token store's and the span loop's
    in-process caches emptied afterwards (they are keyed by ids the next test's database reuses)."""
    settings.DATA_DIR = tmp_path
    settings.SEED_SIZE = 5
    yield
    token_store.forget()
    store._cache.clear()
    store._density.clear()
    span_loop._models.clear()


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """`wait_for(predicate, timeout, process=worker)`: poll until true; fail early if the worker died."""

    def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, *,
                 process: subprocess.Popen[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if process is not None and process.poll() is not None:
                assert process.stdout is not None
                raise AssertionError(f"worker exited: {process.stdout.read()}")
            time.sleep(0.2)
        raise AssertionError("timed out")

    return wait_for


# --- The annotation queue --------------------------------------------------------------------------------------------


@pytest.fixture
def make_pool() -> Callable[..., list[Example]]:
    """`make_pool(project, n, scored=True)`: n examples, queued in order of creation (highest last)."""

    def make_pool(project: Project, n: int, *, scored: bool = True) -> list[Example]:
        examples = Example.objects.bulk_create(
            Example(project=project, text=f"item {i}", content_hash=f"h{project.pk}-{i}") for i in range(n))
        if scored:
            ExampleScore.objects.bulk_create(
                ExampleScore(example=e, project=project, priority=float(i)) for i, e in enumerate(examples))
        return examples

    return make_pool


@pytest.fixture
def active_keys() -> Callable[[Project], list[str]]:
    """`active_keys(project)`: the keys of the current taxonomy's labels in use, in order."""

    def active_keys(project: Project) -> list[str]:
        return [label.key for label in project.current_taxonomy().active_labels()]

    return active_keys


# --- The learning loop on stored vectors -----------------------------------------------------------------------------

VECTORS = SimpleNamespace(name="unit-test-vectors")


@pytest.fixture
def stored_vectors(monkeypatch: Any) -> Iterator[SimpleNamespace]:
    """The current encoder is a name only: tests store their own vectors (the real encoder runs in the worker
    tests)."""
    monkeypatch.setattr(learning_actions, "current_encoder", lambda: VECTORS)
    yield VECTORS
    store._cache.clear()
    store._density.clear()


@pytest.fixture
def clustered_examples(stored_vectors: SimpleNamespace) -> Callable[..., list[Example]]:
    """`clustered_examples(project, annotator, n, labelled=k, seed=0)`: n examples in two well-separated clusters,
    their vectors stored, the first k labelled by their cluster."""

    def clustered_examples(project: Project, annotator: User, n: int, *, labelled: int,
                           seed: int = 0) -> list[Example]:
        rng = np.random.default_rng(seed)
        keys = [label.key for label in project.current_taxonomy().labels.all()]
        examples = Example.objects.bulk_create(
            Example(project=project, text=f"example {seed}-{i}", content_hash=f"{seed}-{i}") for i in range(n))
        classes = np.arange(n) % 2
        centres = rng.normal(size=(2, 16)) * 3
        vectors = (centres[classes] + rng.normal(size=(n, 16))).astype(np.float16)
        ids = np.array([e.pk for e in examples], dtype=np.int64)
        EmbeddingChunk.objects.create(project=project, encoder=stored_vectors.name, dim=16, count=n,
                                      example_ids=ids.tobytes(), vectors=vectors.tobytes())
        version = project.current_taxonomy()
        Annotation.objects.bulk_create(
            Annotation(example=examples[i], annotator=annotator, taxonomy_version=version,
                       label_keys=[keys[classes[i]]], source=AnnotationSource.UI) for i in range(labelled))
        return examples

    return clustered_examples


# --- A trained model to serve ----------------------------------------------------------------------------------------

DIM = 16
_rng = np.random.default_rng(7)
CENTRES = _rng.normal(size=(2, DIM))
CENTRES /= np.linalg.norm(CENTRES, axis=1, keepdims=True)


class FakeEncoder:
    """Texts with "overrule" sit near one centre, "affirm" near the other, anything else in between."""

    name = "fake-encoder-16"
    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16)
            noise = np.random.default_rng(seed).normal(size=DIM) * 0.35
            if "overrule" in text:
                base = CENTRES[0]
            elif "affirm" in text:
                base = CENTRES[1]
            else:
                base = (CENTRES[0] + CENTRES[1]) / 2
            v = base * 2 + noise
            out[i] = v / np.linalg.norm(v)
        return out


@pytest.fixture
def fake_encoder(monkeypatch: Any) -> Iterator[FakeEncoder]:
    encoder = FakeEncoder()
    monkeypatch.setattr(learning_actions, "current_encoder", lambda: encoder)
    served.forget()
    store._cache.clear()
    cache.clear()
    yield encoder
    served.forget()
    store._cache.clear()


@pytest.fixture
def add_examples(fake_encoder: FakeEncoder) -> Callable[[Project, list[str]], list[Example]]:
    """`add_examples(project, texts)`: examples with the fake encoder's vectors stored."""

    def add_examples(project: Project, texts: list[str]) -> list[Example]:
        examples = Example.objects.bulk_create(
            Example(project=project, text=t, content_hash=content_hash(t)) for t in texts)
        ids = np.array([e.pk for e in examples], dtype=np.int64)
        vectors = fake_encoder.encode(texts).astype(np.float16)
        EmbeddingChunk.objects.create(project=project, encoder=fake_encoder.name, dim=DIM, count=len(texts),
                                      example_ids=ids.tobytes(), vectors=vectors.tobytes())
        return examples

    return add_examples


@pytest.fixture
def label_examples() -> Callable[[Project, Any, list[Example], list[str]], None]:
    """`label_examples(project, user, examples, names)`: one annotation per example, by label name."""

    def label_examples(project: Project, user: Any, examples: list[Example], names: list[str]) -> None:
        version = project.current_taxonomy()
        keys = dict(version.labels.values_list("name", "key"))
        Annotation.objects.bulk_create(
            Annotation(example=e, annotator=user, taxonomy_version=version, label_keys=[keys[n]],
                       source=AnnotationSource.UI) for e, n in zip(examples, names, strict=True))

    return label_examples


@pytest.fixture
def train(fake_encoder: FakeEncoder) -> Callable[[Project], ModelVersion]:
    """`train(project)`: run a training run now, then its quality report job; the new model version."""

    def train(project: Project) -> ModelVersion:
        TrainingRun.objects.create(project=project)
        run = learning_actions.run_training(project.pk)
        assert run is not None and run.model_version is not None, run and run.error
        learning_actions.report_project(project.pk)
        run.model_version.refresh_from_db()
        return run.model_version

    return train


@pytest.fixture
def trained(project: Project, alice: User, add_examples: Any, label_examples: Any, train: Any) -> Project:
    """`project` with 40 labelled examples, 10 unlabelled ones and model v1."""
    texts = [f"we overrule case {i}" for i in range(20)] + [f"we affirm case {i}" for i in range(20)]
    examples = add_examples(project, texts + [f"pool text {i} overrule" for i in range(10)])
    label_examples(project, alice, examples[:40], ["Yes"] * 20 + ["No"] * 20)
    train(project)
    return project


CURVE = [
    {"threshold": 0.5, "coverage": 1.0, "accuracy": 0.90},
    {"threshold": 0.7, "coverage": 0.8, "accuracy": 0.94},
    {"threshold": 0.8, "coverage": 0.6, "accuracy": 0.96},
    {"threshold": 0.9, "coverage": 0.4, "accuracy": 0.99},
]


@pytest.fixture
def give_curve() -> Callable[..., None]:
    """`give_curve(version, curve=CURVE)`: give a version an accuracy-vs-coverage curve (four points)."""

    def give_curve(version: ModelVersion, curve: list[dict[str, float]] = CURVE) -> None:
        version.metrics = {**version.metrics, "accuracy_coverage": curve}
        version.save(update_fields=["metrics"])

    return give_curve


@pytest.fixture
def drop_curve() -> Callable[[ModelVersion], None]:
    """`drop_curve(version)`: make it look trained before the quality report had the accuracy-vs-coverage curve."""

    def drop_curve(version: ModelVersion) -> None:
        version.metrics = {k: v for k, v in version.metrics.items() if k != "accuracy_coverage"}
        version.save(update_fields=["metrics"])

    return drop_curve


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser(monkeypatch: Any) -> Iterator[Any]:
    """Debian's headless Chromium through Playwright (never `playwright install`)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make browser)")
    # Playwright's sync API keeps an event loop on this thread; the test's own ORM
    # calls are still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()
