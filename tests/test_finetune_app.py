"""Fine-tuning in the app (learning.finetuning): the job on the `gpu` queue through a real worker on real questions,
the held-out comparison, promotion or keeping, the Versions page, the API and the download; a worker killed mid-run;
cancelling; who may do what; requests it refuses; the automatic trigger; `simulate --finetune-at`."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.models import Annotation, AnnotationSource, ExampleScore
from labelhub.jobs import enqueue
from learning import actions as learning_actions
from learning import finetuning, simulation
from learning.models import EmbeddingChunk, FinetuneRun, FinetuneStatus, ModelVersion, ProjectEncoder, TrainingRun
from projects import taxonomy
from projects.importing import content_hash
from projects.models import Example, Project
from serving import served

TREC = Path(__file__).resolve().parents[2] / "shared" / "data" / "trec" / "train.csv"
CLASSES = ["DESC", "LOC", "NUM"]
SCREENSHOTS = Path(os.environ.get("LABELHUB_SCREENSHOTS", Path(__file__).resolve().parents[1] / "var" / "screenshots"))


def trec(per_class: int) -> list[tuple[str, str]]:
    """Real TREC questions of three classes, `per_class` each, in file order."""
    if not TREC.exists():
        pytest.skip("needs ../shared/data/trec")
    rows: list[tuple[str, str]] = []
    counts = dict.fromkeys(CLASSES, 0)
    seen: set[str] = set()  # the set repeats a few questions; a project keeps each text once
    with TREC.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["label"] in counts and counts[row["label"]] < per_class and content_hash(row["text"]) not in seen:
                seen.add(content_hash(row["text"]))
                counts[row["label"]] += 1
                rows.append((row["text"], row["label"]))
    return rows


@pytest.fixture
def questions(team: Any, alice: Any) -> Project:
    return taxonomy.create_project(team, name="Questions", task_type="single_label", created_by=alice,
                                   labels=[taxonomy.LabelSpec(name) for name in CLASSES])


def add_questions(project: Project, user: Any, rows: list[tuple[str, str]], *, labelled: int) -> list[Example]:
    """The examples, the first `labelled` of them labelled with their gold class (no vectors: a worker embeds)."""
    examples = Example.objects.bulk_create(
        Example(project=project, text=text, content_hash=content_hash(text)) for text, _ in rows)
    version = project.current_taxonomy()
    keys = dict(version.labels.values_list("name", "key"))
    Annotation.objects.bulk_create(
        Annotation(example=e, annotator=user, taxonomy_version=version, label_keys=[keys[name]],
                   source=AnnotationSource.UI)
        for e, (_, name) in zip(examples[:labelled], rows[:labelled], strict=True))
    return examples


# --- A real worker on the queues `make run` serves, with a small fine-tune ------------------------------------------


@pytest.fixture
def finetune_env(tmp_path: Path, settings: Any) -> dict[str, str]:
    """What both this process and the worker read: a small CPU fine-tune, its folder, a short heartbeat timeout."""
    env = {"LABELHUB_FINETUNE_MIN_LABELS": "60", "LABELHUB_FINETUNE_DEVICE": "cpu",
           "LABELHUB_FINETUNE_EPOCHS": "1", "LABELHUB_FINETUNE_MIN_STEPS": "12", "LABELHUB_FINETUNE_BATCH_SIZE": "16",
           "LABELHUB_FINETUNE_MAX_LENGTH": "32", "LABELHUB_FINETUNE_STALE_SECONDS": "6",
           "LABELHUB_FINETUNE_AUTO": "0", "LABELHUB_FINETUNE_DIR": str(tmp_path / "finetuned"),
           "LABELHUB_ENCODER_BACKEND": "torch"}
    settings.FINETUNE_MIN_LABELS = 60
    settings.FINETUNE_STALE_SECONDS = 6
    settings.FINETUNE_AUTO = False
    settings.FINETUNE_DIR = tmp_path / "finetuned"
    settings.ENCODER_BACKEND = "torch"
    return env


@pytest.fixture
def start_worker(tmp_path: Path, settings: Any, finetune_env: dict[str, str]
                 ) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """`start_worker(**env)`: a real `manage.py rqworker default gpu reports` in a process group of its own."""
    if not settings.REDIS_URL or connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL and Redis (make test sets them up)")
    started: list[subprocess.Popen[str]] = []
    db = connection.settings_dict

    def start(**extra: str) -> subprocess.Popen[str]:
        env = {**os.environ, "DEBUG": "1", "OMP_NUM_THREADS": "1",
               "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               "REDIS_URL": settings.REDIS_URL, "LABELHUB_DATA_DIR": str(tmp_path),
               "LABELHUB_TRAIN_DEBOUNCE_SECONDS": "0", **finetune_env, **extra}
        process = subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "default", "gpu", "reports", "--with-scheduler",
             "--name", f"finetune-worker-{os.getpid()}-{len(started)}"],
            cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def with_model(project: Project, worker: subprocess.Popen[str], wait_for: Callable[..., None]) -> ModelVersion:
    """The worker embeds the project with the configured encoder and trains model v1 on its labels."""
    enqueue("learning.jobs.embed_project", project.pk, after_commit=False)
    wait_for(lambda: ModelVersion.objects.filter(project=project).exists(), timeout=300, process=worker)
    return ModelVersion.objects.get(project=project, number=1)


def start_finetune(client: Client, project: Project) -> FinetuneRun:
    response = client.post(reverse("learning:finetune-start", args=[project.pk]),
                           {"next": reverse("serving:versions", args=[project.pk])})
    assert response.status_code == 302 and response["Location"] == reverse("serving:versions", args=[project.pk])
    return FinetuneRun.objects.get(project=project, status__in=["queued", "running"])


def status_of(run: FinetuneRun) -> str:
    run.refresh_from_db()
    return run.status


@pytest.fixture
def shoot(request: pytest.FixtureRequest) -> Callable[..., bool]:
    """`shoot(project, name, wait_for_text=…)`: a screenshot of the Versions page in headless Chromium as alice, once
    the fine-tuning region shows the text (False, and nothing else checked, where Chromium is not installed: the
    test client checks the same page)."""

    def shoot(project: Project, name: str, *, wait_for_text: str, url: str = "serving:versions",
              region: str = "#finetune-panel") -> bool:
        try:
            browser = request.getfixturevalue("browser")
        except pytest.skip.Exception:
            return False
        _shoot(browser, request.getfixturevalue("live_server"), project, name, wait_for_text=wait_for_text, url=url,
               region=region)
        return True

    return shoot


def _shoot(browser: Any, live_server: Any, project: Project, name: str, *, wait_for_text: str,
           url: str = "serving:versions", region: str = "#finetune-panel") -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}{reverse(url, args=[project.pk])}")
    page.wait_for_selector(f"{region}:has-text('{wait_for_text}')", timeout=20_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
    page.close()


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_it_fine_tunes_compares_and_promotes_or_keeps_through_a_real_worker(
        questions: Project, alice: Any, bob: Any, login: Callable[[Any], Client], start_worker: Any,
        wait_for: Callable[..., None], tmp_path: Path, settings: Any, shoot: Callable[..., bool]) -> None:
    rows = trec(60)
    add_questions(questions, alice, rows, labelled=150)
    worker = start_worker()
    current = with_model(questions, worker, wait_for)
    assert served.serving_state(questions.pk).version_id == current.pk

    run = start_finetune(login(alice), questions)
    assert run.reason == "Fine-tune now, by alice" and run.n_labels == 150
    # Progress reaches the row while it runs: phase, steps of the epoch.
    wait_for(lambda: FinetuneRun.objects.filter(pk=run.pk, phase="fine-tuning", total_steps__gt=0).exists()
             or status_of(run) != "queued" and FinetuneRun.objects.filter(pk=run.pk, step__gt=0).exists(),
             timeout=300, process=worker)
    wait_for(lambda: status_of(run) not in ("queued", "running"), timeout=600, process=worker)
    assert run.status == FinetuneStatus.SUCCEEDED, run.error
    assert run.epochs >= 1 and run.step == run.total_steps > 0 and (run.finetune_seconds or 0) > 0

    # Held out: stratified, among the labelled items, never the items fine-tuned on (n_train + n_heldout = labels).
    labelled = set(Annotation.objects.filter(example__project=questions).values_list("example_id", flat=True))
    held = set(run.heldout_ids)
    assert held <= labelled and len(held) == run.n_heldout == run.comparison["n_heldout"] > 0
    assert run.n_train + run.n_heldout == run.n_labels == 150
    held_classes = {keys[0] for keys in Annotation.objects.filter(example_id__in=held).values_list("label_keys",
                                                                                                   flat=True)}
    assert len(held_classes) == 3
    # The pool re-embedded with the fine-tuned encoder, under its own name; the current encoder's vectors untouched.
    assert run.encoder and run.encoder != run.base_encoder == current.encoder
    assert sum(EmbeddingChunk.objects.filter(project=questions, encoder=run.encoder)
               .values_list("count", flat=True)) == 180
    assert sum(EmbeddingChunk.objects.filter(project=questions, encoder=current.encoder)
               .values_list("count", flat=True)) == 180
    candidate = run.candidate_version
    assert candidate is not None and candidate.encoder == run.encoder and candidate.n_labels == 150
    assert run.current_version_id == current.pk
    comparison = run.comparison
    for side in ("current", "candidate"):
        f1 = comparison[side]["macro_f1"]
        assert 0 <= f1["low"] <= f1["value"] <= f1["high"] <= 1
    wins = comparison["candidate"]["macro_f1"]["value"] > comparison["current"]["macro_f1"]["value"]
    assert comparison["candidate_wins"] is wins and run.is_promoted is wins
    choice = ProjectEncoder.objects.filter(project=questions).first()
    serving_now = served.serving_state(questions.pk).version_id
    if wins:
        assert choice is not None and choice.finetune_run_id == run.pk and serving_now == candidate.pk
    else:
        assert (choice is None or choice.finetune_run_id is None) and serving_now == current.pk

    # The Versions page and its region, the API.
    page = login(alice).get(reverse("serving:versions", args=[questions.pk]))
    assert page.status_code == 200 and reverse("learning:finetune", args=[questions.pk]).encode() in page.content
    panel = login(alice).get(reverse("learning:finetune", args=[questions.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "Held-out macro-F1" in panel and f"v{candidate.number}" in panel and f"v{current.number}" in panel
    assert ("Promoted" if wins else "Kept, not serving") in panel and "Fine-tune now" in panel
    assert f"{comparison['candidate']['macro_f1']['value']:.3f}" in panel
    api = APIClient()
    api.force_authenticate(bob)
    body = api.get(f"/api/v1/projects/{questions.pk}/finetune/").json()
    assert body["active"] is None and body["runs"][0]["status"] == "succeeded"
    assert body["runs"][0]["candidate_version"]["number"] == candidate.number
    assert body["runs"][0]["comparison"]["candidate_wins"] is wins
    assert body["encoder_finetune"] == (run.number if wins else None)
    shoot(questions, "finetune-compared.png", wait_for_text="Held-out macro-F1")

    # The download: a Hugging Face folder with its model card, which loads as an encoder.
    response = login(alice).get(reverse("learning:finetune-download", args=[questions.pk, run.number]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.getvalue()))
    top = f"finetuned-{questions.pk}-v{run.number}"
    names = set(archive.namelist())
    assert {f"{top}/config.json", f"{top}/model.safetensors", f"{top}/README.md", f"{top}/tokenizer.json",
            f"{top}/modules.json", f"{top}/labelhub_head/posterior.npz"} <= names
    card = archive.read(f"{top}/README.md").decode()
    assert all(name in card for name in CLASSES) and "Base model" in card and f"{run.n_train:,}" in card
    assert f"{comparison['candidate']['macro_f1']['value']:.3f}" in card
    archive.extractall(tmp_path / "download")
    from learning.encoder import Encoder

    loaded = Encoder(tmp_path / "download" / top, backend="torch", threads=1)
    assert loaded.encode(["Where is the Eiffel Tower ?"]).shape == (1, loaded.dim)

    # Managers can promote either: the fast loop and serving follow the promoted version's encoder.
    other = current if wins else candidate
    response = login(alice).post(reverse("serving:version-promote", args=[questions.pk, other.number]))
    assert response.status_code == 302 and served.serving_state(questions.pk).version_id == other.pk
    choice = ProjectEncoder.objects.get(project=questions)
    assert choice.finetune_run_id == (None if wins else run.pk)
    if not wins:
        run.refresh_from_db()
        assert run.is_promoted
        # Serving predicts with the fine-tuned encoder's vectors (found by name, loaded from the folder).
        from serving.predictions import predict

        outcome = predict(questions, texts=["How far is the moon ?"], route=False)
        assert outcome.model.version_id == candidate.pk and outcome.model.encoder == run.encoder
        # The next model update embeds, fits and scores with it.
        learning_actions.request_training(questions, reason="a test")
        wait_for(lambda: ModelVersion.objects.filter(project=questions, number__gt=candidate.number).exists(),
                 timeout=300, process=worker)
        newest = ModelVersion.objects.filter(project=questions).order_by("-number").first()
        assert newest is not None and newest.encoder == run.encoder


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_better_candidate_replaces_the_model_scores_the_queue_and_serves(
        questions: Project, alice: Any, finetune_env: dict[str, str], settings: Any, monkeypatch: Any,
        login: Callable[[Any], Client], shoot: Callable[..., bool]) -> None:
    # The fine-tune of the worker test above, in this process, with the comparison's verdict forced to "better":
    # whether a 12-step fine-tune beats the frozen encoder depends on the data, the promotion path must not.
    settings.FINETUNE_DEVICE, settings.FINETUNE_EPOCHS, settings.FINETUNE_MIN_STEPS = "cpu", 1, 12
    settings.FINETUNE_BATCH_SIZE, settings.FINETUNE_MAX_LENGTH = 16, 32
    add_questions(questions, alice, trec(30), labelled=75)
    learning_actions.embed_project(questions.pk)
    learning_actions.run_training(questions.pk)
    current = ModelVersion.objects.get(project=questions, number=1)
    real = finetuning.compare
    monkeypatch.setattr(finetuning, "compare", lambda *args, **kwargs: {**real(*args, **kwargs),
                                                                         "candidate_wins": True})
    run = finetuning.request_finetune(questions, user=alice, reason="a test")
    finetuning.run_finetune(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded" and run.is_promoted and run.promoted_at is not None, run.error
    candidate = run.candidate_version
    assert candidate is not None and candidate.encoder == run.encoder != current.encoder
    assert ProjectEncoder.objects.get(project=questions).finetune_run_id == run.pk
    assert served.serving_state(questions.pk).version_id == candidate.pk
    # The queue is scored by the candidate; the labelled items left it.
    scores = ExampleScore.objects.filter(project=questions)
    assert scores.count() == 15 and set(scores.values_list("model_version_number", flat=True)) == {candidate.number}
    card = (Path(settings.FINETUNE_DIR) / run.encoder_path / "README.md").read_text()
    assert "promoted, it replaced the current encoder" in card and "DESC" in card
    # The next model update fits on the fine-tuned vectors, warm-started from the candidate.
    TrainingRun.objects.create(project=questions)
    update = learning_actions.run_training(questions.pk)
    assert update is not None and update.model_version is not None, update and update.error
    assert update.model_version.encoder == run.encoder and update.timings["warm_start"] == 1.0
    # Its quality report is measured on the labels the fine-tuned encoder never saw: the held-out ones.
    labelled = set(Annotation.objects.filter(example__project=questions).values_list("example_id", flat=True))
    assert set(run.trained_ids) == labelled - set(run.heldout_ids) and len(run.trained_ids) == run.n_train
    reported = learning_actions.report_project(questions.pk)
    assert reported is not None and reported.pk == update.model_version.pk
    assert reported.metrics["unseen_only"] is True and reported.metrics["trained_on"] == 0
    assert reported.metrics["n_eval"] == run.n_heldout == 15
    page = login(alice).get(reverse("learning:dashboard", args=[questions.pk])).content.decode()
    assert "cross-validated on 15 labels its fine-tuned encoder never saw" in page
    versions = login(alice).get(reverse("serving:versions", args=[questions.pk])).content.decode()
    assert "on the 15 labels its fine-tuned encoder never saw" in versions
    shoot(questions, "versions-after-finetune.png", wait_for_text="its fine-tuned encoder never saw", region="main")
    shoot(questions, "dashboard-after-finetune.png", wait_for_text="its fine-tuned encoder never saw",
          url="learning:dashboard", region="main")


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_run_leaves_the_serving_model_and_the_run_is_marked_failed(
        questions: Project, alice: Any, login: Callable[[Any], Client], start_worker: Any,
        wait_for: Callable[..., None], settings: Any) -> None:
    add_questions(questions, alice, trec(40), labelled=100)
    worker = start_worker(LABELHUB_FINETUNE_MIN_STEPS="2000")
    current = with_model(questions, worker, wait_for)
    run = start_finetune(login(alice), questions)
    wait_for(lambda: FinetuneRun.objects.filter(pk=run.pk, phase="fine-tuning", step__gt=0).exists(),
             timeout=300, process=worker)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    assert status_of(run) == "running"  # nobody has noticed yet
    time.sleep(settings.FINETUNE_STALE_SECONDS + 1)
    panel = login(alice).get(reverse("learning:finetune", args=[questions.pk]), HTTP_HX_REQUEST="true")
    run.refresh_from_db()
    assert run.status == FinetuneStatus.FAILED and "Interrupted: the worker stopped" in run.error
    assert "during fine-tuning" in run.error and "The serving model is unchanged" in run.error
    assert "Interrupted: the worker stopped" in panel.content.decode()
    assert served.serving_state(questions.pk).version_id == current.pk
    assert list(ModelVersion.objects.filter(project=questions).values_list("number", flat=True)) == [1]
    assert not ProjectEncoder.objects.filter(project=questions, finetune_run__isnull=False).exists()
    folder = Path(settings.FINETUNE_DIR) / f"project-{questions.pk}"
    assert not folder.exists() or not any(folder.iterdir())
    # The project is not stuck: a new fine-tune may be asked for.
    again = login(alice).post(reverse("learning:finetune-start", args=[questions.pk]))
    assert again.status_code == 302 and FinetuneRun.objects.filter(project=questions, status="queued").count() == 1


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_running_fine_tune_shows_its_progress_and_stops_when_cancelled(
        questions: Project, alice: Any, bob: Any, login: Callable[[Any], Client], start_worker: Any,
        wait_for: Callable[..., None], settings: Any, shoot: Callable[..., bool]) -> None:
    add_questions(questions, alice, trec(40), labelled=100)
    worker = start_worker(LABELHUB_FINETUNE_MIN_STEPS="2000")
    current = with_model(questions, worker, wait_for)
    run = start_finetune(login(alice), questions)
    wait_for(lambda: FinetuneRun.objects.filter(pk=run.pk, phase="fine-tuning", step__gt=1).exists(),
             timeout=300, process=worker)
    panel = login(bob).get(reverse("learning:finetune", args=[questions.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert re.search(r"epoch \d+ of \d+ · step [\d,]+ of 2,000", panel) and " left" in panel
    assert 'hx-trigger="every 2s"' in panel
    assert "Cancel fine-tune" not in panel  # bob annotates: he sees it, he cannot cancel it
    api = APIClient()
    api.force_authenticate(bob)
    active = api.get(f"/api/v1/projects/{questions.pk}/finetune/").json()["active"]
    assert active["status"] == "running" and active["progress"]["phase"] == "fine-tuning"
    assert active["progress"]["step"] > 0 and active["progress"]["seconds_left"] > 0
    shoot(questions, "finetune-running.png", wait_for_text="epoch")
    assert login(bob).post(reverse("learning:finetune-cancel", args=[questions.pk])).status_code == 403
    response = login(alice).post(reverse("learning:finetune-cancel", args=[questions.pk]))
    assert response.status_code == 302
    wait_for(lambda: status_of(run) == "cancelled", timeout=120, process=worker)
    assert run.error == "Cancelled by alice." and run.candidate_version is None
    assert served.serving_state(questions.pk).version_id == current.pk
    assert list(ModelVersion.objects.filter(project=questions).values_list("number", flat=True)) == [1]
    folder = Path(settings.FINETUNE_DIR) / f"project-{questions.pk}"
    assert not folder.exists() or not any(folder.iterdir())


# --- Without a worker: who may, what is refused, the rules -----------------------------------------------------------


@pytest.fixture
def enough(questions: Project, alice: Any, settings: Any) -> Project:
    settings.FINETUNE_MIN_LABELS = 6
    rows = [(f"where is place {i} ?", "LOC") for i in range(4)] + [(f"how many things {i} ?", "NUM") for i in range(4)]
    add_questions(questions, alice, rows, labelled=8)
    return questions


@pytest.mark.django_db
def test_only_managers_start_cancel_and_download_and_outsiders_see_nothing(
        enough: Project, alice: Any, bob: Any, charlie: Any, login: Callable[[Any], Client]) -> None:
    pk = enough.pk
    start, cancel = reverse("learning:finetune-start", args=[pk]), reverse("learning:finetune-cancel", args=[pk])
    panel = reverse("learning:finetune", args=[pk])
    run = FinetuneRun.objects.create(project=enough, number=1, status=FinetuneStatus.FAILED, error="x")
    download = reverse("learning:finetune-download", args=[pk, run.number])
    for url in (start, cancel):
        assert login(bob).post(url).status_code == 403
        assert login(charlie).post(url).status_code == 404
        anonymous = Client().post(url)
        assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
        assert login(alice).get(url).status_code == 405
    assert login(bob).get(download).status_code == 403
    assert login(charlie).get(download).status_code == 404
    assert "/accounts/login/" in Client().get(download)["Location"]
    assert FinetuneRun.objects.filter(project=enough).count() == 1
    shown = login(bob).get(panel, HTTP_HX_REQUEST="true")
    assert shown.status_code == 200 and "Fine-tune now" not in shown.content.decode()
    assert "Fine-tune now" in login(alice).get(panel, HTTP_HX_REQUEST="true").content.decode()
    assert login(alice).get(panel).status_code == 200  # a page of its own without htmx
    assert login(charlie).get(panel).status_code == 404
    assert APIClient().get(f"/api/v1/projects/{pk}/finetune/").status_code in (401, 403)
    api = APIClient()
    api.force_authenticate(charlie)
    assert api.get(f"/api/v1/projects/{pk}/finetune/").status_code == 404
    # A fine-tune that did not finish has nothing to download.
    assert login(alice).get(download).status_code == 404


@pytest.mark.django_db
def test_it_refuses_a_fine_tune_with_too_few_labels_and_changes_nothing(
        questions: Project, alice: Any, login: Callable[[Any], Client], settings: Any) -> None:
    settings.FINETUNE_MIN_LABELS = 200
    add_questions(questions, alice, trec(10), labelled=25)
    response = login(alice).post(reverse("learning:finetune-start", args=[questions.pk]))
    body = response.content.decode()
    assert response.status_code == 400
    assert "Fine-tuning needs at least 200 labelled examples" in body and "this project has 25" in body
    assert not FinetuneRun.objects.exists() and not ProjectEncoder.objects.exists()


@pytest.mark.django_db
def test_it_refuses_multi_label_projects_and_one_label_only(
        team: Any, alice: Any, questions: Project, multi_project: Project, login: Callable[[Any], Client],
        settings: Any) -> None:
    settings.FINETUNE_MIN_LABELS = 4
    response = login(alice).post(reverse("learning:finetune-start", args=[multi_project.pk]))
    assert response.status_code == 400 and "multi-label projects" in response.content.decode()
    # Span projects fine-tune (tests/test_finetune_spans.py): this one is refused for its labels, not its kind.
    spans = taxonomy.create_project(team, name="Entities", task_type="span", created_by=alice,
                                    labels=[taxonomy.LabelSpec("PER")])
    response = login(alice).post(reverse("learning:finetune-start", args=[spans.pk]))
    assert response.status_code == 400 and "at least 4 labelled examples" in response.content.decode()
    add_questions(questions, alice, [(f"where is {i} ?", "LOC") for i in range(6)], labelled=6)
    response = login(alice).post(reverse("learning:finetune-start", args=[questions.pk]))
    assert response.status_code == 400 and "two labels with two or more examples" in response.content.decode()
    assert not FinetuneRun.objects.exists()


@pytest.mark.django_db
def test_one_fine_tune_at_a_time_and_a_queued_one_cancels_at_once(
        enough: Project, alice: Any, login: Callable[[Any], Client]) -> None:
    client = login(alice)
    assert client.post(reverse("learning:finetune-start", args=[enough.pk])).status_code == 302
    second = client.post(reverse("learning:finetune-start", args=[enough.pk]))
    assert second.status_code == 409 and "already queued or running" in second.content.decode()
    assert FinetuneRun.objects.filter(project=enough).count() == 1
    assert client.post(reverse("learning:finetune-cancel", args=[enough.pk])).status_code == 302
    run = FinetuneRun.objects.get(project=enough)
    assert run.status == "cancelled" and run.error == "Cancelled by alice before it started."
    nothing = client.post(reverse("learning:finetune-cancel", args=[enough.pk]))
    assert nothing.status_code == 409 and "No fine-tune" in nothing.content.decode()
    # The job that still waits in the queue finds it cancelled and does nothing.
    assert finetuning.run_finetune(run.pk) is None
    # The database refuses a second active one too (a race between two requests).
    from django.db import IntegrityError, transaction

    FinetuneRun.objects.create(project=enough, number=5)
    with pytest.raises(IntegrityError), transaction.atomic():
        FinetuneRun.objects.create(project=enough, number=6, status="running")


@pytest.mark.django_db
def test_a_project_deleted_while_its_fine_tune_runs_ends_the_job_quietly_and_leaves_no_files(
        enough: Project, alice: Any, tmp_path: Path, settings: Any, monkeypatch: Any) -> None:
    # Seen in a benchmark: the project went while its fine-tune trained; the job then crashed on the missing run
    # row instead of ending. The tracker reads a vanished row as a cancel; the job must clean up and return.
    settings.FINETUNE_DIR = tmp_path / "finetuned"
    monkeypatch.setattr(finetuning, "PROGRESS_SECONDS", 0.0)
    run = finetuning.request_finetune(enough, user=alice, reason="a test")
    folder = Path(settings.FINETUNE_DIR) / finetuning.relative_folder(enough.pk, run.number)

    def training(run: FinetuneRun, tracker: Any) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half-written weights")
        Project.objects.filter(pk=run.project_id).delete()
        assert tracker.cancelled()
        raise finetuning.FinetuneCancelled("fine-tuning was cancelled")

    monkeypatch.setattr(finetuning, "_finetune", training)
    assert finetuning.run_finetune(run.pk) is None
    assert not FinetuneRun.objects.filter(pk=run.pk).exists() and not folder.exists()


@pytest.mark.django_db
def test_a_lost_job_or_a_silent_worker_marks_the_run_failed(enough: Project, settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    settings.FINETUNE_STALE_SECONDS = 60
    old = timezone.now() - timedelta(seconds=120)
    lost = FinetuneRun.objects.create(project=enough, number=1, requested_at=old)
    assert finetuning.recover_stale(enough) == 1  # no job in the queue for it
    lost.refresh_from_db()
    assert lost.status == "failed" and "Lost before a worker took it" in lost.error
    silent = FinetuneRun.objects.create(project=enough, number=2, status="running", started_at=old,
                                        heartbeat_at=old, phase="re-embedding")
    alive = timezone.now()
    assert finetuning.recover_stale(enough) == 1
    silent.refresh_from_db()
    assert silent.status == "failed" and "during re-embedding" in silent.error
    beating = FinetuneRun.objects.create(project=enough, number=3, status="running", started_at=old,
                                         heartbeat_at=alive)
    assert finetuning.recover_stale(enough) == 0 and status_of(beating) == "running"


def test_the_held_out_split_is_stratified_and_disjoint() -> None:
    y = np.array([0] * 50 + [1] * 9 + [2] * 2 + [3])
    train, held = finetuning.heldout_split(y, 4, 0.2, seed=3)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(y)
    assert [int((y[held] == c).sum()) for c in range(4)] == [10, 2, 1, 0]
    assert all((y[train] == c).sum() >= 1 for c in range(4))
    again, _ = finetuning.heldout_split(y, 4, 0.2, seed=3)
    assert np.array_equal(train, again)


def test_the_comparison_promotes_only_a_higher_macro_f1_on_the_same_items() -> None:
    y = np.array([0, 1, 2] * 20)
    right = np.eye(3)[y] * 0.9 + 0.03
    wrong = right.copy()
    wrong[:10] = np.eye(3)[(y[:10] + 1) % 3]
    better = finetuning.compare(y, wrong, right, 3, seed=0)
    assert better["candidate_wins"] and better["difference"]["value"] > 0
    assert better["candidate"]["macro_f1"]["value"] == 1.0 and better["difference"]["low"] > 0
    assert better["n_heldout"] == 60 and better["share_of_resamples_better"] > 0.95
    same = finetuning.compare(y, right, right, 3, seed=0)
    assert not same["candidate_wins"] and same["difference"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert not finetuning.compare(y, right, wrong, 3, seed=0)["candidate_wins"]


@pytest.mark.django_db
def test_it_fine_tunes_by_itself_when_the_labels_have_grown_enough(
        enough: Project, settings: Any, monkeypatch: Any) -> None:
    settings.FINETUNE_AUTO = True
    settings.FINETUNE_GROWTH = 0.5
    monkeypatch.setattr(learning_actions, "current_encoder",
                        lambda: SimpleNamespace(name="weights-on-disk", model_path="/models/minilm"))
    version: Any = SimpleNamespace(project=enough, n_labels=5)
    assert finetuning.finetune_when_labels_grew(version) is None  # below LABELHUB_FINETUNE_MIN_LABELS (6)
    version.n_labels = 8
    first = finetuning.finetune_when_labels_grew(version)
    assert first is not None and first.reason == "Automatic: 8 labels" and first.requested_by is None
    assert finetuning.finetune_when_labels_grew(version) is None  # one at a time
    FinetuneRun.objects.filter(pk=first.pk).update(status="succeeded")
    version.n_labels = 11
    assert finetuning.finetune_when_labels_grew(version) is None  # 8 -> 11 is less than half as many again
    # As if the first had run at 4 labels: 12 is three times as many.
    FinetuneRun.objects.filter(pk=first.pk).update(n_labels=4)
    version.n_labels = 12
    second = finetuning.finetune_when_labels_grew(version)
    assert second is not None and second.number == 2 and "200% more than fine-tune 1" in second.reason
    FinetuneRun.objects.filter(pk=second.pk).update(status="succeeded")
    settings.FINETUNE_AUTO = False
    version.n_labels = 100
    assert finetuning.finetune_when_labels_grew(version) is None


@pytest.mark.django_db
def test_promoting_a_version_makes_its_encoder_the_projects(trained: Project, alice: Any, settings: Any) -> None:
    base = ModelVersion.objects.get(project=trained, number=1)
    run = FinetuneRun.objects.create(project=trained, number=1, status="succeeded", encoder="tuned-abc-L256",
                                     encoder_path=f"project-{trained.pk}/finetuned-v1")
    tuned = ModelVersion.objects.create(project=trained, number=2, taxonomy_version=base.taxonomy_version,
                                        label_keys=base.label_keys, encoder=run.encoder, strategy=base.strategy,
                                        n_labels=base.n_labels, artifact=base.artifact)
    served.promote_version(trained, version=tuned, user=alice)
    assert ProjectEncoder.objects.get(project=trained).finetune_run_id == run.pk
    run.refresh_from_db()
    assert run.is_promoted and run.promoted_at is not None
    served.promote_version(trained, version=base, user=alice)
    assert ProjectEncoder.objects.get(project=trained).finetune_run_id is None
    # The fast loop loads the fine-tuned encoder from its folder; a missing folder is a clear failure, not a silent
    # fall back to other vectors.
    served.promote_version(trained, version=tuned, user=alice)
    settings.FINETUNE_DIR = Path("/nonexistent")
    with pytest.raises(learning_actions.TrainingError, match="cannot be loaded"):
        learning_actions.project_encoder(trained.pk)


# --- The harness ----------------------------------------------------------------------------------------------------


def test_a_replay_fine_tunes_at_the_label_counts_asked_and_goes_on_with_the_new_features(monkeypatch: Any) -> None:
    from learning import quality

    reports: list[tuple[int, int | None]] = []  # (labels, of them unseen by the fine-tuned encoder) per report
    evaluate = quality.evaluate

    def spy(X: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
        unseen = kwargs.get("unseen")
        reports.append((len(y), None if unseen is None else int(np.sum(unseen))))
        return evaluate(X, y, **kwargs)

    monkeypatch.setattr(quality, "evaluate", spy)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    y = rng.integers(0, 3, 300)
    X = (centres[y] + rng.normal(size=(300, 8)) * 2.5).astype(np.float32)
    y_test = rng.integers(0, 3, 90)
    X_test = (centres[y_test] + rng.normal(size=(90, 8)) * 2.5).astype(np.float32)
    calls: list[tuple[int, int]] = []

    def sharper(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        calls.append((len(rows), seed))
        return (centres[y] + rng.normal(size=X.shape) * 0.3).astype(np.float32), \
            (centres[y_test] + rng.normal(size=X_test.shape) * 0.3).astype(np.float32), 1.5

    result = simulation.simulate(X_train=X, y_train=y, X_test=X_test, y_test=y_test, n_classes=3,
                                 strategies=["random"], seed_size=20, batch_size=20, budget=100, repeats=1,
                                 finetune_at=[60], refeaturize=sharper)
    points = result["strategies"]["random"]["runs"][0]["points"]
    assert result["config"]["finetune_at"] == [60] and calls == [(60, 0)]
    assert [p["finetunes"] for p in points] == [0, 0, 1, 1, 1]
    assert [p["finetune_seconds"] for p in points] == [0.0, 0.0, 1.5, 0.0, 0.0]
    assert points[2]["macro_f1"] > points[1]["macro_f1"] + 0.1  # the curve goes on with the sharper features
    # As in the app, the report after the fine-tune measures the labels its encoder was not trained on: none at
    # 60 (then it uses all), the 20 and 40 labelled since at 80 and 100.
    assert reports == [(20, None), (40, None), (60, 0), (80, 20), (100, 40)]
    plain = simulation.simulate(X_train=X, y_train=y, X_test=X_test, y_test=y_test, n_classes=3,
                                strategies=["random"], seed_size=20, batch_size=20, budget=100, repeats=1)
    assert "finetunes" not in plain["strategies"]["random"]["runs"][0]["points"][0]
    assert "finetune_at" not in plain["config"]
    with pytest.raises(ValueError, match="refeaturize"):
        simulation.run_strategy("random", X_train=X, y_train=y, X_test=X_test, y_test=y_test, n_classes=3,
                                seed_size=20, batch_size=20, budget=40, seed=0, finetune_at=[30])


@pytest.mark.slow
def test_simulate_fine_tunes_real_questions_during_a_replay(tmp_path: Path, settings: Any) -> None:
    rows = trec(40)
    for name, part in (("train.csv", rows[::2]), ("test.csv", rows[1::2])):
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    settings.FINETUNE_DEVICE, settings.FINETUNE_EPOCHS, settings.FINETUNE_MIN_STEPS = "cpu", 1, 8
    settings.FINETUNE_MAX_LENGTH = 32
    out = tmp_path / "curve.json"
    from django.core.management import call_command

    call_command("simulate", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                 "--strategy", "random", "--seed-size", "20", "--batch-size", "20", "--budget", "60",
                 "--repeats", "1", "--finetune-at", "40", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 stdout=io.StringIO())
    result = json.loads(out.read_text())
    points = result["strategies"]["random"]["runs"][0]["points"]
    assert result["config"]["finetune_at"] == [40] and [p["n_labels"] for p in points] == [20, 40, 60]
    assert [p["finetunes"] for p in points] == [0, 1, 1] and points[1]["finetune_seconds"] > 0
    assert {"accuracy", "macro_f1", "ece", "update_seconds"} <= set(points[1])
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--finetune-at"):
        call_command("simulate", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                     "--finetune-at", "x", "--out", str(out))


@pytest.mark.django_db
def test_the_labels_an_encoder_saw_add_up_along_its_chain_of_fine_tunes(questions: Project) -> None:
    from learning.models import trained_example_ids

    def run(number: int, encoder: str, base: str, trained: list[int], *, path: str = "x") -> None:
        FinetuneRun.objects.create(project=questions, number=number, status=FinetuneStatus.SUCCEEDED, encoder=encoder,
                                   encoder_path=path, base_encoder=base, n_train=len(trained) or 5,
                                   trained_ids=trained)

    run(1, "ft-1", "minilm", [1, 2])
    run(2, "ft-2", "ft-1", [2, 3])  # fine-tuned from the first one's encoder: it saw both runs' labels
    assert trained_example_ids(questions.pk, "ft-2") == {1, 2, 3}
    assert trained_example_ids(questions.pk, "ft-1") == {1, 2}
    assert trained_example_ids(questions.pk, "minilm") is None  # the configured encoder saw no label
    run(3, "ft-3", "minilm", [])  # a run from before the field: which labels it saw is not known
    assert trained_example_ids(questions.pk, "ft-3") is None
    run(4, "ft-4", "ft-4", [7], path="")  # no folder: not an encoder anything serves with
    assert trained_example_ids(questions.pk, "ft-4") is None
