"""The live-quality report: cross-validated figures, calibration and accuracy against coverage."""

from __future__ import annotations

import json

import numpy as np

from learning import bayes, metrics, quality


def blobs(n: int, k: int = 3, d: int = 12, spread: float = 1.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    return (centers[y] + spread * rng.standard_normal((n, d))).astype(np.float32), y


def check_curve(curve: list[dict]) -> None:
    assert 2 <= len(curve) <= 50
    assert all(set(p) == {"threshold", "coverage", "accuracy"} for p in curve)
    thresholds = [p["threshold"] for p in curve]
    coverage = [p["coverage"] for p in curve]
    assert thresholds == sorted(set(thresholds))
    assert coverage[0] == 1.0 and all(a >= b for a, b in zip(coverage, coverage[1:], strict=False))
    assert all(0.0 <= p["accuracy"] <= 1.0 and 0.0 < p["coverage"] <= 1.0 for p in curve)


def test_it_reports_accuracy_against_coverage_from_the_calibrated_out_of_fold_predictions() -> None:
    X, y = blobs(400)
    post = bayes.fit(X, y, n_classes=3)
    report = quality.evaluate(X, y, n_classes=3, label_names=["a", "b", "c"], multi_label=False, seed=1, posterior=post)
    data = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    curve = data["accuracy_coverage"]
    check_curve(curve)
    assert abs(curve[0]["accuracy"] - data["accuracy"]["value"]) < 1e-6  # everything kept = overall accuracy
    assert curve[-1]["accuracy"] >= curve[0]["accuracy"]
    # The calibration the report used is the one the model gets.
    quality.calibrate(post, X, y, seed=1, report=report)
    assert (post.temperature, post.variance_scale) == report.calibration
    assert data["ece"] < 0.1


def test_it_reports_subset_accuracy_against_joint_confidence_for_multilabel() -> None:
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.5, X[:, 0] + X[:, 2] > 0], axis=1).astype(int)
    post = bayes.fit_multilabel(X, Y)
    report = quality.evaluate(X, Y, n_classes=3, label_names=["a", "b", "c"], multi_label=True, seed=2, posterior=post)
    data = report.as_dict()
    check_curve(data["accuracy_coverage"])
    assert abs(data["accuracy_coverage"][0]["accuracy"] - data["accuracy"]["value"]) < 1e-6
    quality.calibrate(post, X, Y, seed=2, report=report)
    assert post.info["calibration_folds"] == quality.FOLDS


def test_it_evaluates_without_a_model_as_before() -> None:
    X, y = blobs(120, seed=3)
    report = quality.evaluate(X, y, n_classes=3, label_names=["a", "b", "c"], multi_label=False, seed=4)
    check_curve(report.as_dict()["accuracy_coverage"])
    post = quality.calibrate(bayes.fit(X, y, n_classes=3), X, y, seed=4)
    assert post.info["calibration_folds"] == 3


def test_it_gives_the_same_quality_with_a_warm_model_as_with_cold_folds_at_its_prior_precision() -> None:
    X, y = blobs(300, seed=6)
    post = bayes.fit(X, y, n_classes=3)
    names = ["a", "b", "c"]
    warm = quality.evaluate(X, y, n_classes=3, label_names=names, multi_label=False, seed=7, posterior=post)
    from learning import metrics

    rng = np.random.default_rng(7)
    quality._subsample(len(y), rng)
    cold = metrics.cross_validated_proba(X, y, n_classes=3, folds=quality.FOLDS, rng=rng,
                                         prior_precision=post.prior_precision)
    assert abs(warm.ece - metrics.expected_calibration_error(cold, y)) < 1e-3
    assert warm.accuracy["value"] == metrics.accuracy(y, cold.argmax(axis=1))


def memorised(n_seen: int, n_unseen: int, n_test: int, *, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Three noisy classes where the first ``n_seen`` items sit on their class centre, as the items a fine-tuned
    encoder was trained on sit close to their labels; the rest and a test split keep the noise of new text."""
    rng = np.random.default_rng(seed)
    k, d = 3, 12
    centers = rng.standard_normal((k, d))
    n = n_seen + n_unseen + n_test
    y = rng.integers(0, k, n)
    X = centers[y] + 2.0 * rng.standard_normal((n, d))
    X[:n_seen] = centers[y[:n_seen]] + 0.05 * rng.standard_normal((n_seen, d))
    m = n_seen + n_unseen
    return X[:m].astype(np.float32), y[:m], X[m:].astype(np.float32), y[m:]


def test_after_a_fine_tune_the_report_measures_only_the_labels_its_encoder_never_saw() -> None:
    X, y, X_test, y_test = memorised(300, 300, 2000)
    unseen = np.arange(len(y)) >= 300
    post = bayes.fit(X, y, n_classes=3)
    names = ["a", "b", "c"]
    flattering = quality.evaluate(X, y, n_classes=3, label_names=names, multi_label=False, seed=1, posterior=post)
    honest = quality.evaluate(X, y, n_classes=3, label_names=names, multi_label=False, seed=1, posterior=post,
                              unseen=unseen)
    assert flattering.n_eval == 600 and "unseen_only" not in flattering.extra
    assert honest.n_eval == 300 and honest.extra == {"trained_on": 0, "unseen_only": True}
    assert sum(row["support"] for row in honest.per_class) == 300
    truth = metrics.accuracy(y_test, post.predict_proba(X_test).argmax(axis=1))
    # Measured on every label, the report is far above what the model does on new text; on the unseen ones, close.
    assert flattering.accuracy["value"] > truth + 0.1
    assert abs(honest.accuracy["value"] - truth) < 0.04
    # The calibration fitted on the unseen labels is the one that holds on new text.
    for report in (flattering, honest):
        quality.calibrate(post, X, y, seed=1, report=report)
        report.extra["test_ece"] = metrics.expected_calibration_error(post.predict_proba(X_test), y_test)
    assert honest.extra["test_ece"] < flattering.extra["test_ece"] - 0.03


def test_with_too_few_unseen_labels_the_report_uses_all_and_says_how_many_were_seen() -> None:
    X, y, _, _ = memorised(300, quality.MIN_UNSEEN - 1, 0)
    unseen = np.arange(len(y)) >= 300
    report = quality.evaluate(X, y, n_classes=3, label_names=["a", "b", "c"], multi_label=False, seed=2,
                              unseen=unseen)
    assert report.n_eval == len(y) and report.extra == {"trained_on": 300, "unseen_only": False}


def test_out_of_fold_on_a_subset_trains_every_fold_on_the_rest() -> None:
    X, y = blobs(200, seed=8)
    everything = metrics.out_of_fold_logits(X, y, n_classes=3, rng=np.random.default_rng(3))
    same = metrics.out_of_fold_logits(X, y, n_classes=3, rng=np.random.default_rng(3),
                                      evaluate_on=np.ones(len(y), dtype=bool))
    assert everything is not None and same is not None and np.allclose(everything.mu, same.mu)
    some = np.zeros(len(y), dtype=bool)
    some[::4] = True
    part = metrics.out_of_fold_logits(X, y, n_classes=3, rng=np.random.default_rng(3), evaluate_on=some)
    assert part is not None and part.mu.shape == (50, 3) and part.fitted.all()
    # Each measured item's moments come from a model fitted on every other item but its fold's: on the rest
    # (150 items) plus four fifths of the subset, so better than a model fitted on the subset's folds alone.
    alone = metrics.out_of_fold_logits(X[some], y[some], n_classes=3, rng=np.random.default_rng(3))
    assert alone is not None
    assert (part.mu.argmax(axis=1) == y[some]).mean() >= (alone.mu.argmax(axis=1) == y[some]).mean()


def test_it_stores_the_curve_with_each_model_version_and_warm_starts_the_next_update(project, alice,
                                                                                     clustered_examples):
    from annotation.models import Annotation
    from learning import actions
    from learning.models import ModelVersion, RunStatus, TrainingRun

    examples = clustered_examples(project, alice, 300, labelled=100)
    TrainingRun.objects.create(project=project)
    first = actions.run_training(project.pk)
    assert first.status == RunStatus.SUCCEEDED, first.error
    assert first.timings["warm_start"] == 0
    assert actions.report_project(project.pk) is not None
    keys = [label.key for label in project.current_taxonomy().labels.all()]
    Annotation.objects.bulk_create(
        Annotation(example=examples[i], annotator=alice, taxonomy_version=project.current_taxonomy(),
                   label_keys=[keys[i % 2]]) for i in range(100, 120))
    TrainingRun.objects.create(project=project)
    second = actions.run_training(project.pk)
    assert second.status == RunStatus.SUCCEEDED, second.error
    # 20% more labels: warm start from version 1, no new search for the prior precision.
    assert second.timings["warm_start"] == 1 and second.timings["evidence_iterations"] == 1
    # The update waits for no cross-validation: the report is a job of its own.
    assert set(second.timings) >= {"fit_s", "score_s", "rows_s", "write_s", "total_s"}
    assert "quality_s" not in second.timings
    latest = ModelVersion.objects.get(project=project, number=2)
    # Until its report is in, version 2 serves with version 1's calibration and figures.
    one = ModelVersion.objects.get(project=project, number=1)
    first_model = bayes.Posterior.from_bytes(bytes(one.artifact))
    carried = bayes.Posterior.from_bytes(bytes(latest.artifact))
    assert (carried.temperature, carried.variance_scale) == (first_model.temperature, first_model.variance_scale)
    assert latest.report_at is None and latest.report.report_version == 1
    assert latest.metrics["accuracy_coverage"] == one.metrics["accuracy_coverage"]
    assert actions.report_project(project.pk) == latest
    latest.refresh_from_db()
    assert latest.report.report_version == 2 and latest.metrics["report_seconds"] > 0
    check_curve(latest.metrics["accuracy_coverage"])
    posterior = bayes.Posterior.from_bytes(bytes(latest.artifact))
    assert posterior.info["calibration_folds"] == quality.FOLDS
    # Coalesced: nothing left to measure.
    assert actions.report_project(project.pk) is None


def test_the_report_gives_way_to_a_due_model_update(project, alice, clustered_examples):
    from learning import actions
    from learning.models import ModelVersion, RunStatus, TrainingRun

    clustered_examples(project, alice, 200, labelled=80)
    TrainingRun.objects.create(project=project)
    assert actions.run_training(project.pk).status == RunStatus.SUCCEEDED
    TrainingRun.objects.create(project=project)  # labels came in: an update is due
    assert actions.report_project(project.pk) is None
    assert ModelVersion.objects.get(project=project).report_at is None
