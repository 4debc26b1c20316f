"""The learning loop of span (NER) projects: token vectors, refit + rescore with suggested spans, entity-level
quality on the dashboard, and the bad inputs of issue 14 (one entity type, no entities, no span predicted, empty
documents). Real CoNLL-2003 sentences throughout; the last test runs it all through a real rqworker process with
the real encoder."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from annotation.models import Annotation, AnnotationSource, ExampleScore
from labelhub.jobs import enqueue
from learning import actions, loop_base, span_loop, store, token_store
from learning import spans as spanml
from learning.models import ModelVersion, RunStatus, TrainingRun
from projects import taxonomy
from projects.models import Example, Project
from projects.spanformats import spans_from_tags
from tests.browser import log_in, screenshot_dir

CONLL = Path(django_settings.BASE_DIR).parent / "shared" / "data" / "conll2003" / "train.jsonl"
ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")


def conll_sentences(n: int, *, skip: int = 0) -> list[dict[str, Any]]:
    if not CONLL.exists():
        pytest.skip(f"{CONLL} is not there (../shared/data)")
    out = []
    with CONLL.open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i < skip:
                continue
            row = json.loads(line)
            if row["tokens"] and row["tokens"][0] != "-DOCSTART-":
                out.append(row)
            if len(out) == n:
                break
    return out


class FakeTokenEncoder:
    """Per token: a fixed random vector of the lower-cased word plus its shape (capitalised, all caps, digits).
    Deterministic and fast; the worker test uses the real encoder."""

    name = "fake-token-encoder-24"
    dim = 24

    def encode_tokens(self, texts: list[str], offsets: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        out = []
        for text, spans in zip(texts, offsets, strict=True):
            rows = np.empty((len(spans), self.dim), dtype=np.float32)
            for i, (start, end) in enumerate(spans):
                word = text[start:end]
                seed = int(hashlib.sha1(word.lower().encode()).hexdigest()[:8], 16)
                rows[i, :20] = np.random.default_rng(seed).normal(size=20) * 0.5
                rows[i, 20:] = [word[:1].isupper(), word.isupper() and len(word) > 1,
                                any(c.isdigit() for c in word), i == 0]
            out.append(rows)
        return out


class ConstantTokenEncoder(FakeTokenEncoder):
    """Every token the same vector: no model can tell an entity from anything else."""

    name = "constant-token-encoder-24"

    def encode_tokens(self, texts: list[str], offsets: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        return [np.ones((len(o), self.dim), dtype=np.float32) for o in offsets]


pytestmark = pytest.mark.usefixtures("span_data_dir")


@pytest.fixture
def token_encoder(monkeypatch: Any) -> FakeTokenEncoder:
    encoder = FakeTokenEncoder()
    # The classification loop (actions) and the span loop (loop_base) both ask for the encoder in use.
    monkeypatch.setattr(actions, "current_encoder", lambda: encoder)
    monkeypatch.setattr(loop_base, "current_encoder", lambda: encoder)
    return encoder


def make_span_project(team: Any, alice: Any, labels: tuple[str, ...] = ENTITY_TYPES, name: str = "News NER"
                      ) -> Project:
    return taxonomy.create_project(team, name=name, task_type="span", created_by=alice,
                                   labels=[taxonomy.LabelSpec(label) for label in labels])


@pytest.fixture
def span_project(team: Any, alice: Any) -> Project:
    return make_span_project(team, alice)


@pytest.fixture
def conll_project() -> Callable[..., list[Example]]:
    """`conll_project(project, annotator, n, labelled=k)`: n CoNLL-2003 sentences as examples with their tokens,
    the first k annotated with their gold entities (entity types the project lacks are left untagged)."""

    def make(project: Project, annotator: Any, n: int, *, labelled: int, skip: int = 0) -> list[Example]:
        keys = dict(project.current_taxonomy().labels.values_list("name", "key"))
        rows = conll_sentences(n, skip=skip)
        built = [spans_from_tags(row["tokens"], row["tags"]) for row in rows]
        examples = Example.objects.bulk_create(
            Example(project=project, text=text, tokens=[list(o) for o in offsets],
                    content_hash=hashlib.sha1(f"{skip}-{i}-{text}".encode()).hexdigest())
            for i, (text, offsets, _) in enumerate(built))
        version = project.current_taxonomy()
        annotations = []
        for example, (_, _, spans) in zip(examples[:labelled], built[:labelled], strict=True):
            mine = [{"start": s["start"], "end": s["end"], "label": keys[s["label"]]} for s in spans
                    if s["label"] in keys]
            annotations.append(Annotation(example=example, annotator=annotator, taxonomy_version=version,
                                          spans=mine, label_keys=sorted({s["label"] for s in mine}),
                                          source=AnnotationSource.UI))
        Annotation.objects.bulk_create(annotations)
        return examples

    return make


def span_model_of(version: ModelVersion) -> spanml.SpanModel:
    version.refresh_from_db()
    return spanml.SpanModel.from_npz(bytes(version.artifact))


def train_now(project: Project) -> TrainingRun:
    """Embed what lacks vectors (the embed job asks for a model update), then run that update."""
    actions.embed_project(project.pk)
    if not TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).exists():
        TrainingRun.objects.create(project=project)
    run = actions.run_training(project.pk)
    assert run is not None
    return run


# --- The loop ------------------------------------------------------------------------------------------------


def test_it_embeds_tokens_trains_suggests_spans_and_reports_entity_quality(
        span_project, alice, bob, charlie, token_encoder, conll_project, login):
    examples = conll_project(span_project, alice, 300, labelled=200)
    run = train_now(span_project)
    assert run.status == RunStatus.SUCCEEDED, run.error
    # Token vectors on disk, one row per token; sentence vectors for the seed, density and diversity.
    tokens = span_loop.open_tokens(span_project.pk, token_encoder)
    assert len(tokens.example_ids) == 300
    first = examples[0]
    assert tokens.get([first.pk])[0].shape == (len(first.tokens), token_encoder.dim)
    assert len(store.load(span_project.pk, token_encoder.name).example_ids) == 300

    version = ModelVersion.objects.get(project=span_project)
    assert version.n_labels == 200 and version.label_keys == [
        label.key for label in span_project.current_taxonomy().labels.order_by("position")]
    scores = ExampleScore.objects.filter(project=span_project)
    assert scores.count() == 100  # the unlabelled pool
    suggested = [s for s in scores if s.suggested_spans]
    assert len(suggested) > 20
    keys = set(version.label_keys)
    for row in suggested:
        text = row.example.text
        starts = {s for s, _ in row.example.tokens}
        ends = {e for _, e in row.example.tokens}
        for span in row.suggested_spans:
            assert span["start"] in starts and span["end"] in ends and span["label"] in keys
            assert 0.0 < span["confidence"] <= 1.0 and text[span["start"]:span["end"]].strip()
        assert sorted(row.predicted_keys) == sorted({s["label"] for s in row.suggested_spans})
    # The acquisition's diverse batch goes first.
    assert len(scores.filter(priority__gt=max(s.score for s in scores))) == 5
    assert set(run.timings) >= {"fit_s", "score_s", "total_s"}

    # The report job: cross-validated entity-level figures with intervals, per label, and the errors.
    assert actions.report_project(span_project.pk) == version
    version.refresh_from_db()
    metrics = version.metrics
    f1 = metrics["entity_f1"]
    assert 0.2 < f1["value"] < 1.0 and f1["low"] <= f1["value"] <= f1["high"]
    assert [row["label"] for row in metrics["per_class"]] == list(ENTITY_TYPES)
    assert all(row["support"] > 0 for row in metrics["per_class"])
    errors = metrics["errors"]
    assert metrics["n_gold_entities"] > 100
    assert errors["correct"] + errors["missed"] < metrics["n_gold_entities"]
    assert errors["correct"] == sum(round(row["recall"] * row["support"]) for row in metrics["per_class"])
    for kind in ("wrong_type", "wrong_boundary", "missed", "spurious"):
        assert sum(row[kind] for row in errors["per_label"]) == errors[kind]
    assert metrics["span_precision_coverage"][0]["coverage"] == 1.0
    assert metrics["n_tokens"] > 1000
    assert version.report.headline()["entity_f1"] == f1  # what lists and webhooks show

    # The dashboard and the model page show them to the team, not to others.
    page = login(bob).get(reverse("learning:dashboard", args=[span_project.pk]))
    assert page.status_code == 200
    assert "entity-F1" in page.text and "Entity F1 per label" in page.text and "Span errors" in page.text
    assert 'id="span-learning-curve-data"' in page.text and 'id="span-errors-data"' in page.text
    assert "span-charts.js" in page.text
    model_page = login(bob).get(reverse("learning:model", args=[span_project.pk]))
    assert "Entity F1 (strict, cross-validated)" in model_page.text and f"{f1['value']:.3f}" in model_page.text
    assert login(charlie).get(reverse("learning:dashboard", args=[span_project.pk])).status_code == 404

    # A saved version loads for serving and predicts the same spans.
    model = span_loop.load_span_model(version)
    span_loop._models.clear()
    again = span_loop.load_span_model(ModelVersion.objects.get(pk=version.pk))
    row = suggested[0]
    vectors = tokens.get([row.example_id])
    offsets = [tuple(t) for t in row.example.tokens]
    a = model.predict(vectors, [offsets])[0].spans
    b = again.predict(vectors, [offsets])[0].spans
    assert [(s["start"], s["end"], s["label"]) for s in a] == [(s["start"], s["end"], s["label"]) for s in b] == [
        (s["start"], s["end"], s["label"]) for s in row.suggested_spans]


def test_a_refit_warm_starts_and_rescores_the_pool(span_project, alice, token_encoder, conll_project):
    examples = conll_project(span_project, alice, 200, labelled=60)
    assert train_now(span_project).status == RunStatus.SUCCEEDED
    before = dict(ExampleScore.objects.filter(project=span_project).values_list("example_id", "score"))
    keys = dict(span_project.current_taxonomy().labels.values_list("name", "key"))
    for example in examples[60:100]:
        Annotation.objects.create(example=example, annotator=alice, taxonomy_version=span_project.current_taxonomy(),
                                  spans=[], label_keys=[])
    del keys
    actions.request_training(span_project, reason="labels")
    run = actions.run_training(span_project.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.timings["warm_start"] == 1.0
    after = dict(ExampleScore.objects.filter(project=span_project).values_list("example_id", "score"))
    assert len(after) == 100 and not set(after) & {e.pk for e in examples[:100]}
    common = set(before) & set(after)
    assert sum(abs(before[i] - after[i]) > 1e-9 for i in common) > len(common) / 2
    assert list(ModelVersion.objects.filter(project=span_project).values_list("number", "n_labels")) == [
        (2, 100), (1, 60)]


def test_it_seeds_a_diverse_batch_before_any_label(span_project, alice, token_encoder, conll_project):
    conll_project(span_project, alice, 120, labelled=0)
    actions.embed_project(span_project.pk)  # no labels yet: it seeds the queue
    seeds = ExampleScore.objects.filter(project=span_project, is_seed=True)
    assert sorted(seeds.values_list("priority", flat=True)) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not TrainingRun.objects.filter(project=span_project).exists()


def test_a_worker_without_the_token_files_encodes_them_again(span_project, alice, token_encoder, conll_project,
                                                            settings, tmp_path):
    conll_project(span_project, alice, 80, labelled=40)
    actions.embed_project(span_project.pk)
    settings.DATA_DIR = tmp_path / "another-machine"  # no token files there
    token_store.forget()
    run = actions.run_training(span_project.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert len(span_loop.open_tokens(span_project.pk, token_encoder).example_ids) == 80


# --- Bad input ----------------------------------------------------------------------------------------------------


def test_a_tag_set_with_a_single_entity_type_learns(team, alice, token_encoder, conll_project):
    project = make_span_project(team, alice, ("PER",), name="People")
    conll_project(project, alice, 200, labelled=150)
    run = train_now(project)
    assert run.status == RunStatus.SUCCEEDED, run.error
    version = ModelVersion.objects.get(project=project)
    assert version.label_keys == [project.current_taxonomy().labels.get().key]
    suggestions = [s for row in ExampleScore.objects.filter(project=project) for s in row.suggested_spans]
    assert suggestions and {s["label"] for s in suggestions} == set(version.label_keys)
    assert actions.report_project(project.pk) == version
    version.refresh_from_db()
    assert [row["label"] for row in version.metrics["per_class"]] == ["PER"]


def test_labels_without_any_entity_fail_clearly_and_the_previous_model_keeps_serving(
        span_project, alice, token_encoder, conll_project, login):
    conll_project(span_project, alice, 120, labelled=60)
    assert train_now(span_project).status == RunStatus.SUCCEEDED
    Annotation.objects.in_project(span_project).update(spans=[], label_keys=[])
    TrainingRun.objects.create(project=span_project)
    run = actions.run_training(span_project.pk)
    assert run.status == RunStatus.FAILED
    assert "None of the 60 labelled examples has an entity tagged" in run.error
    assert "previous model keeps serving" in run.error
    assert ModelVersion.objects.filter(project=span_project).count() == 1
    assert ExampleScore.objects.filter(project=span_project, model_version_number=1).count() == 60
    page = login(alice).get(reverse("learning:model", args=[span_project.pk]))
    assert "None of the 60 labelled examples" in page.text


def test_a_first_project_with_no_entity_yet_says_what_it_waits_for(span_project, alice, token_encoder,
                                                                   conll_project, login):
    conll_project(span_project, alice, 40, labelled=10)
    Annotation.objects.in_project(span_project).update(spans=[], label_keys=[])
    run = train_now(span_project)
    assert run.status == RunStatus.FAILED and "has an entity tagged" in run.error
    assert not ModelVersion.objects.exists()
    status = login(alice).get(reverse("learning:model-status", args=[span_project.pk]))
    assert "none of the 10 labelled examples has an entity tagged" in status.text


def test_a_model_that_predicts_no_span_is_recorded_and_says_so(span_project, alice, conll_project, monkeypatch,
                                                               login):
    encoder = ConstantTokenEncoder()
    monkeypatch.setattr(actions, "current_encoder", lambda: encoder)
    monkeypatch.setattr(loop_base, "current_encoder", lambda: encoder)
    conll_project(span_project, alice, 120, labelled=60)
    run = train_now(span_project)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.timings["suggested_spans"] == 0.0
    assert not any(ExampleScore.objects.filter(project=span_project).values_list("suggested_spans", flat=True))
    version = actions.report_project(span_project.pk)
    assert version is not None
    assert version.metrics["n_predicted_entities"] == 0 and version.metrics["entity_f1"]["value"] == 0.0
    assert version.metrics["entity_precision"]["value"] is None
    page = login(alice).get(reverse("learning:model", args=[span_project.pk]))
    assert "predicted no span at all" in page.text
    dashboard = login(alice).get(reverse("learning:dashboard", args=[span_project.pk]))
    assert "The model predicted no span in cross-validation" in dashboard.text


def test_empty_documents_are_neither_trained_on_nor_suggested_and_nothing_crashes(
        span_project, alice, token_encoder, conll_project):
    conll_project(span_project, alice, 100, labelled=50)
    version = span_project.current_taxonomy()
    empty_labelled, empty_pool = Example.objects.bulk_create([
        Example(project=span_project, text="", tokens=[], content_hash="empty-1"),
        Example(project=span_project, text="   ", tokens=[], content_hash="empty-2"),
    ])
    Annotation.objects.create(example=empty_labelled, annotator=alice, taxonomy_version=version, spans=[])
    run = train_now(span_project)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert ModelVersion.objects.get(project=span_project).n_labels == 50  # the empty one left out
    row = ExampleScore.objects.get(example=empty_pool)
    assert row.suggested_spans == [] and row.score == 0.0
    data = span_loop.span_training_set(span_project)
    assert data.skipped_empty == 1
    assert actions.report_project(span_project.pk) is not None


def test_an_unexpected_error_fails_the_run_with_its_reason(span_project, alice, token_encoder, conll_project,
                                                           monkeypatch):
    conll_project(span_project, alice, 60, labelled=30)
    actions.embed_project(span_project.pk)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(span_loop, "record", broken)
    run = actions.run_training(span_project.pk)
    assert run.status == RunStatus.FAILED and "disk full" in run.error and "previous model keeps serving" in run.error
    assert not TrainingRun.objects.filter(project=span_project, status=RunStatus.RUNNING).exists()


# --- Through a real worker ------------------------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_embeds_tokens_trains_and_suggests_spans(worker, span_project, alice, bob, conll_project,
                                                               login, wait_for, settings):
    # The autouse fixture pointed DATA_DIR at tmp_path, the worker's LABELHUB_DATA_DIR: both see the token files.
    conll_project(span_project, alice, 160, labelled=100)
    enqueue("learning.jobs.embed_project", span_project.pk, after_commit=False)
    try:
        wait_for(lambda: ModelVersion.objects.filter(project=span_project, report_at__isnull=False).exists()
                 or TrainingRun.objects.filter(project=span_project, status=RunStatus.FAILED).exists(),
                 timeout=420, process=worker)
    except AssertionError:
        worker.terminate()
        raise AssertionError(f"the worker said: {worker.communicate(timeout=30)[0][-4000:]}") from None
    failed = TrainingRun.objects.filter(project=span_project, status=RunStatus.FAILED).first()
    assert failed is None, failed.error
    version = ModelVersion.objects.get(project=span_project)
    assert version.n_labels == 100 and version.metrics["entity_f1"]["value"] > 0.3
    suggested = ExampleScore.objects.filter(project=span_project).exclude(suggested_spans=[])
    assert suggested.count() > 10
    assert all(set(s) == {"start", "end", "label", "confidence"} for row in suggested for s in row.suggested_spans)
    page = login(bob).get(reverse("learning:dashboard", args=[span_project.pk]))
    assert "Entity F1 per label" in page.text and "entity-F1" in page.text


# --- In a real browser ------------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_the_dashboard_draws_the_span_charts(live_server, browser, span_project, alice, token_encoder, conll_project):
    conll_project(span_project, alice, 240, labelled=160)
    assert train_now(span_project).status == RunStatus.SUCCEEDED
    actions.report_project(span_project.pk)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)  # a shared, loaded test machine
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, live_server, "alice")
    drawn = {}
    for name in ("dashboard", "model"):
        page.goto(f"{live_server.url}/projects/{span_project.pk}/{name}/")
        page.wait_for_load_state("load")
        page.wait_for_timeout(1200)
        drawn[name] = page.evaluate(
            "() => Object.values(Chart.instances).map((c) => c.canvas.dataset.chart).sort()")
        page.screenshot(path=str(screenshot_dir() / f"span-{name}.png"), full_page=True)
    assert errors == []
    assert {"span-learning-curve", "dashboard-f1", "span-errors", "span-precision"} <= set(drawn["dashboard"])
    assert "learning-curve" not in drawn["dashboard"] and "span-learning-curve" in drawn["model"]


def test_no_span_update_waits_for_a_prior_search_the_report_runs_it(span_project, alice, token_encoder,
                                                                      conll_project):
    conll_project(span_project, alice, 150, labelled=60)
    assert train_now(span_project).status == RunStatus.SUCCEEDED
    first = ModelVersion.objects.get(project=span_project)
    assert actions.report_project(span_project.pk) == first
    lam = span_model_of(first).posterior.prior_precision
    # 60 -> 140 labelled sentences (the token count grows by 1.5-2.25x): the update keeps the prior precision ...
    conll_project(span_project, alice, 80, labelled=80, skip=400)
    run = train_now(span_project)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert 1.5 <= run.timings["n_tokens"] / span_model_of(first).posterior.n_train < 2.25
    assert run.timings["search_due"] == 1.0
    second = ModelVersion.objects.get(project=span_project, number=2)
    assert span_model_of(second).posterior.prior_precision == lam
    # ... the report job searches it on the labels ...
    assert actions.report_project(span_project.pk) == second
    second.refresh_from_db()
    searched = second.metrics["prior_search"]
    assert searched["n"] == run.timings["n_tokens"] and searched["prior_precision"] != lam
    served = span_model_of(second).posterior  # the searched refit serves, calibrated by the report
    assert served.prior_precision == searched["prior_precision"] and served.info["evidence_n"] == searched["n"]
    # ... and the next update takes it.
    conll_project(span_project, alice, 5, labelled=5, skip=600)
    run = train_now(span_project)
    assert run.status == RunStatus.SUCCEEDED and run.timings["search_due"] == 0.0
    third = span_model_of(ModelVersion.objects.get(project=span_project, number=3)).posterior
    assert third.prior_precision == searched["prior_precision"] and third.info["evidence_n"] == searched["n"]
