"""The learning loop in the app: coalesced training runs, the training set, failures, the model panel."""
from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from annotation.models import Annotation, ExampleScore
from learning import actions, bayes, loop_base, store
from learning.models import ModelVersion, RunStatus, TrainingRun

# Unit tests store their own vectors; the real encoder runs in the worker tests.
pytestmark = pytest.mark.usefixtures("stored_vectors")


def posterior_of(version: ModelVersion) -> bayes.Posterior:
    version.refresh_from_db()
    return bayes.Posterior.from_bytes(bytes(version.artifact))


def test_it_coalesces_a_burst_of_requests_into_one_queued_run(project, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        first = actions.request_training(project, reason="labels")
        for _ in range(9):
            assert actions.request_training(project, reason="labels") is None
    assert first is not None
    assert TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).count() == 1
    assert len(callbacks) == 1


def test_it_never_runs_two_updates_at_once(project):
    TrainingRun.objects.create(project=project, status=RunStatus.RUNNING)
    queued = TrainingRun.objects.create(project=project, status=RunStatus.QUEUED)
    assert actions.run_training(project.pk) is None
    queued.refresh_from_db()
    assert queued.status == RunStatus.QUEUED  # left for the running update to pick up


def test_it_fits_a_model_scores_the_pool_and_records_quality(project, alice, clustered_examples):
    clustered_examples(project, alice, 300, labelled=60)
    TrainingRun.objects.create(project=project)
    run = actions.run_training(project.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    version = ModelVersion.objects.get(project=project)
    assert version.n_labels == 60 and run.n_labels == 60
    # The quality report is a job of its own, after the version serves.
    assert version.report_at is None and version.metrics == {}
    assert actions.report_project(project.pk) == version
    version.refresh_from_db()
    assert version.report_at is not None and version.metrics["report_version"] == 1
    assert version.metrics["accuracy"]["value"] > 0.9
    accuracy = version.metrics["accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    assert set(version.metrics) >= {"macro_f1", "ece", "per_class", "confusion", "reliability"}
    scores = ExampleScore.objects.filter(project=project)
    assert scores.count() == 240  # the unlabelled pool
    assert all(0.5 <= s.confidence <= 1.0 for s in scores)
    assert not scores.filter(example__annotations__isnull=False).exists()
    assert set(run.timings) >= {"fit_s", "score_s", "total_s"}


def test_it_rescores_the_pool_after_new_labels(project, alice, clustered_examples):
    examples = clustered_examples(project, alice, 300, labelled=20)
    TrainingRun.objects.create(project=project)
    actions.run_training(project.pk)
    before = dict(ExampleScore.objects.filter(project=project).values_list("example_id", "confidence"))
    keys = [label.key for label in project.current_taxonomy().labels.all()]
    Annotation.objects.bulk_create(
        Annotation(example=examples[i], annotator=alice, taxonomy_version=project.current_taxonomy(),
                   label_keys=[keys[i % 2]]) for i in range(20, 80))
    actions.request_training(project, reason="labels")
    run = actions.run_training(project.pk)
    assert run.status == RunStatus.SUCCEEDED
    after = dict(ExampleScore.objects.filter(project=project).values_list("example_id", "confidence"))
    assert len(after) == 220
    assert not ExampleScore.objects.filter(project=project, model_version_number=1).exists()
    common = set(before) & set(after)
    assert sum(abs(before[i] - after[i]) > 1e-9 for i in common) > len(common) / 2
    assert list(ModelVersion.objects.filter(project=project).values_list("number", "n_labels")) == [(2, 80), (1, 20)]


def test_it_records_a_one_class_failure_and_keeps_the_previous_model(project, alice, clustered_examples):
    clustered_examples(project, alice, 100, labelled=20)
    TrainingRun.objects.create(project=project)
    actions.run_training(project.pk)
    # Now every label is the same: a degenerate training set.
    yes = project.current_taxonomy().labels.get(name="Yes").key
    Annotation.objects.in_project(project).update(label_keys=[yes])
    TrainingRun.objects.create(project=project)
    run = actions.run_training(project.pk)
    assert run.status == RunStatus.FAILED
    assert "same class" in run.error
    assert ModelVersion.objects.filter(project=project).count() == 1
    assert ExampleScore.objects.filter(project=project, model_version_number=1).count() == 80


def test_it_explains_too_few_labels(project, alice, clustered_examples):
    clustered_examples(project, alice, 50, labelled=1)
    TrainingRun.objects.create(project=project)
    run = actions.run_training(project.pk)
    assert run.status == RunStatus.FAILED and "at least two" in run.error


def test_it_ignores_labels_that_are_deprecated_in_the_current_taxonomy(project, alice, clustered_examples):
    clustered_examples(project, alice, 40, labelled=20)
    from projects.taxonomy import new_version

    _, new = new_version(project, user=alice, expected_number=None, changelog=["Deprecated No"])
    new.labels.filter(name="No").update(is_deprecated=True)
    data = actions.training_set(project)
    assert data.label_names == ["Yes"] and data.skipped_deprecated == 10 and len(data.example_ids) == 10


def test_it_seeds_the_queue_with_a_diverse_batch_before_any_model(project, alice, settings, clustered_examples):
    settings.SEED_SIZE = 6
    clustered_examples(project, alice, 120, labelled=0)
    assert actions.seed_queue(project) == 6
    seeds = ExampleScore.objects.filter(project=project, is_seed=True).order_by("-priority")
    assert seeds.count() == 6
    assert sorted(s.priority for s in seeds) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_it_shows_the_model_panel_and_summary_to_members_only(
        project, alice, bob, charlie, api_client, clustered_examples, htmx, login):
    clustered_examples(project, alice, 200, labelled=40)
    TrainingRun.objects.create(project=project)
    actions.run_training(project.pk)
    url = reverse("learning:model", args=[project.pk])
    # The version serves at once; the page says its report is still being computed.
    pending = login(bob).get(url)
    assert "Model v1" in pending.text and "quality report is being computed" in pending.text
    assert api_client(alice).get(reverse("api-model-summary", args=[project.pk])).json()["newest_version"] == 1
    actions.report_project(project.pk)
    page = login(bob).get(url)
    assert page.status_code == 200 and "Learning curve" in page.text and "<html" in page.text
    assert "being computed" not in page.text
    partial = login(bob).get(url, **htmx)
    assert 'id="project-model"' in partial.text and "<html" not in partial.text
    assert login(charlie).get(url).status_code == 404
    summary = api_client(alice).get(reverse("api-model-summary", args=[project.pk]))
    assert summary.status_code == 200
    body = summary.json()
    assert body["version"] == 1 and body["n_labels"] == 40 and len(body["learning_curve"]) == 1
    assert body["runs"][0]["status"] == "succeeded"
    assert api_client(charlie).get(reverse("api-model-summary", args=[project.pk])).status_code == 404


def test_a_lost_update_is_requeued_instead_of_blocking_the_project(project, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    long_ago = timezone.now() - timedelta(hours=2)
    TrainingRun.objects.create(project=project, status=RunStatus.RUNNING, started_at=long_ago)
    TrainingRun.objects.create(project=project, status=RunStatus.QUEUED, requested_at=long_ago)
    with django_capture_on_commit_callbacks() as callbacks:
        assert actions.request_training(project, reason="labels") is None
    assert len(callbacks) == 1  # the job is queued again
    stale = TrainingRun.objects.get(project=project, status=RunStatus.FAILED)
    assert "Interrupted" in stale.error
    # A fresh queued run is left alone: it is just waiting for its worker.
    TrainingRun.objects.filter(status=RunStatus.QUEUED).update(requested_at=timezone.now())
    with django_capture_on_commit_callbacks() as callbacks:
        assert actions.request_training(project, reason="labels") is None
    assert callbacks == []


def test_the_density_weighted_strategy_scores_the_pool_with_cached_density(
        project, alice, clustered_examples, stored_vectors):
    project.acquisition_strategy = "bald_density_diversity"
    project.save()
    clustered_examples(project, alice, 300, labelled=60)
    TrainingRun.objects.create(project=project)
    run = actions.run_training(project.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert ModelVersion.objects.get(project=project).strategy == "bald_density_diversity"
    scores = ExampleScore.objects.filter(project=project)
    assert scores.count() == 240 and all(s.score >= 0 for s in scores)
    assert (project.pk, stored_vectors.name) in store._density  # computed once, reused by the next update


def test_density_is_extended_not_recomputed_for_a_few_new_examples(
        project, alice, monkeypatch, clustered_examples, stored_vectors):
    from learning import acquisition

    examples = clustered_examples(project, alice, 200, labelled=0)
    ids = np.array([e.pk for e in examples], dtype=np.int64)
    first = store.density_of(project.pk, stored_vectors.name, ids)
    calls = []
    real = acquisition.information_density
    monkeypatch.setattr(acquisition, "information_density", lambda X, **kw: calls.append(len(X)) or real(X, **kw))
    extra = clustered_examples(project, alice, 5, labelled=0, seed=1)
    both = np.concatenate([ids, [e.pk for e in extra]])
    second = store.density_of(project.pk, stored_vectors.name, both)
    np.testing.assert_allclose(second[:200], first)  # old values kept
    assert len(second) == 205 and np.all((second >= 0) & (second <= 1))
    assert calls == [5 + 200]  # only the new rows, against a sample of the old ones


def _labeller(project, alice, examples):
    """``label(start, stop)``: alice labels examples[start:stop] (alternating labels) and asks for an update."""
    keys = [label.key for label in project.current_taxonomy().labels.all()]

    def label(start: int, stop: int) -> None:
        Annotation.objects.bulk_create(
            Annotation(example=examples[i], annotator=alice, taxonomy_version=project.current_taxonomy(),
                       label_keys=[keys[i % 2]]) for i in range(start, stop))
        actions.request_training(project, reason="labels")

    return label


def test_no_update_waits_for_a_prior_search_the_report_runs_it_for_the_next(project, alice, clustered_examples):
    examples = clustered_examples(project, alice, 300, labelled=40)
    label = _labeller(project, alice, examples)
    TrainingRun.objects.create(project=project)
    actions.run_training(project.pk)
    first = ModelVersion.objects.get(project=project)
    assert actions.report_project(project.pk) == first
    assert posterior_of(first).info["evidence_n"] == 40
    # The labels grew by 3/4: the update keeps the prior precision and leaves the search due ...
    label(40, 70)
    run = actions.run_training(project.pk)
    assert run.status == RunStatus.SUCCEEDED and run.timings["search_due"] == 1.0
    second = ModelVersion.objects.get(project=project, number=2)
    kept = posterior_of(second)
    assert kept.prior_precision == posterior_of(first).prior_precision and kept.info["evidence_iterations"] == 1
    assert "prior_search" not in second.metrics  # a search is not carried forward from the previous version
    # ... the report job runs it on the labels, keeps it on that version and serves the searched refit ...
    assert actions.report_project(project.pk) == second
    second.refresh_from_db()
    searched = second.metrics["prior_search"]
    assert searched["n"] == 70 and searched["prior_precision"] > 0
    served = posterior_of(second)
    assert served.prior_precision == searched["prior_precision"] and served.info["evidence_n"] == 70
    assert not bayes.search_due(served) and second.report_at is not None
    # ... and the next update takes it without a search of its own.
    label(70, 75)
    run = actions.run_training(project.pk)
    assert run.timings["search_due"] == 0.0
    third = posterior_of(ModelVersion.objects.get(project=project, number=3))
    assert third.prior_precision == searched["prior_precision"] and third.info["evidence_n"] == 70
    assert third.info["evidence_iterations"] == 1


def test_a_search_made_on_newer_labels_is_kept_apart_and_taken_by_the_next_update(project, alice, clustered_examples):
    examples = clustered_examples(project, alice, 300, labelled=40)
    label = _labeller(project, alice, examples)
    TrainingRun.objects.create(project=project)
    actions.run_training(project.pk)
    actions.report_project(project.pk)
    label(40, 70)
    assert actions.run_training(project.pk).timings["search_due"] == 1.0
    second = ModelVersion.objects.get(project=project, number=2)
    deferred = posterior_of(second)
    # Labels arrive before the report runs: it searches on all 72, so its refit is not the version's (70 labels);
    # and with their update waiting, the cross-validation gives way after the search.
    label(70, 72)
    assert actions.report_project(project.pk) is None
    kept = posterior_of(second)
    assert kept.prior_precision == deferred.prior_precision and kept.n_train == 70
    second.refresh_from_db()
    searched = loop_base.searched_prior(project.pk, second.encoder, second.label_keys)
    assert searched == (second.metrics["prior_search"]["prior_precision"], 72)
    # The next update takes that search although its warm start (version 2) kept the old prior.
    run = actions.run_training(project.pk)
    assert run.timings["search_due"] == 0.0
    third = posterior_of(ModelVersion.objects.get(project=project, number=3))
    assert third.prior_precision == searched[0] and third.info["evidence_n"] == 72
