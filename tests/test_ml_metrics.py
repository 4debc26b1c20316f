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
    for k, row in enumerate(report):
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
