"""Tests for quality metrics and cross-validated probabilities."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from learning import metrics


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_it_finds_near_zero_ece_on_calibrated_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(4) * 0.7, size=20_000)
    y = np.array([rng.choice(4, p=p) for p in proba])
    assert metrics.expected_calibration_error(proba, y) < 0.03


def test_it_finds_large_ece_on_overconfident_data() -> None:
    proba = np.tile([0.99, 0.01], (1000, 1))
    y = np.r_[np.zeros(500, int), np.ones(500, int)]
    assert abs(metrics.expected_calibration_error(proba, y) - 0.49) < 1e-6
    diagram = metrics.reliability_diagram(proba, y)
    assert len(diagram["count"]) == 15 and sum(diagram["count"]) == 1000


def test_it_matches_scikit_learn_f1_and_confusion() -> None:
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    assert np.isclose(metrics.macro_f1(y, p, 4), f1_score(y, p, average="macro"))
    assert (metrics.confusion_matrix(y, p, 4) == confusion_matrix(y, p)).all()
    report = metrics.per_class_report(y, p, 4, n_bootstrap=50)
    for row in report:
        assert row.f1_interval[0] <= row.f1 <= row.f1_interval[1] or row.support == 0
    lo, hi = metrics.bootstrap_interval(y, p, n_classes=4, n_bootstrap=50)
    assert lo <= metrics.macro_f1(y, p, 4) <= hi


def test_it_scores_multilabel() -> None:
    T = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    P = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    scores = metrics.multilabel_scores(T, P)
    assert np.isclose(scores["subset_accuracy"], 2 / 3)
    assert np.isclose(scores["micro_f1"], 2 * 4 / (2 * 4 + 0 + 1))


def test_it_cross_validates_with_rare_classes() -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    y[:2] = 2  # a class with fewer examples than folds
    proba = metrics.cross_validated_proba(X, y, n_classes=3, folds=5, rng=rng)
    assert proba.shape == (60, 3)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1)[2:] == y[2:]).mean() > 0.8


@settings(max_examples=200, deadline=None)
@given(
    confidence=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300),
    seed=st.integers(0, 10_000),
    max_points=st.integers(2, 60),
)
def test_it_gives_a_coverage_curve_that_never_rises_with_the_threshold(confidence, seed, max_points) -> None:
    conf = np.array(confidence)
    correct = np.random.default_rng(seed).random(len(conf)) < 0.7
    points = metrics.accuracy_coverage(conf, correct, max_points=max_points)
    thresholds = [p["threshold"] for p in points]
    coverage = [p["coverage"] for p in points]
    assert 1 <= len(points) <= max_points
    assert thresholds == sorted(set(thresholds))
    assert all(0.0 < c <= 1.0 for c in coverage)
    assert all(a >= b for a, b in zip(coverage, coverage[1:], strict=False))
    assert coverage[0] == 1.0
    for p in points:  # each point is exactly what a consumer recomputes from the threshold
        kept = conf >= p["threshold"]
        assert p["coverage"] == kept.mean()
        assert np.isclose(p["accuracy"], correct[kept].mean())
        assert 0.0 <= p["accuracy"] <= 1.0


def test_it_raises_accuracy_as_coverage_falls_when_confidence_means_something() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 5000)
    correct = rng.random(5000) < conf  # calibrated
    points = metrics.accuracy_coverage(conf, correct)
    assert len(points) == 50
    assert points[0]["coverage"] == 1.0 and abs(points[0]["accuracy"] - 0.75) < 0.02
    assert points[-1]["accuracy"] > 0.95 and points[-1]["coverage"] < 0.05
    assert metrics.accuracy_coverage(np.array([]), np.array([])) == []
