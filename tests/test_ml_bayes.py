"""Property tests for the Bayesian last layer (no database, no Django)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning import acquisition, bayes, calibration


def blobs(n: int, k: int = 3, d: int = 16, spread: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    X = centers[y] + spread * rng.standard_normal((n, d))
    return X.astype(np.float32), y


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 5))
def test_it_returns_rows_that_sum_to_one(seed: int, k: int) -> None:
    X, y = blobs(60, k=k, seed=seed)
    y[:k] = np.arange(k)
    post = bayes.fit(X, y, n_classes=k)
    proba = post.predict_proba(X)
    assert np.all(np.isfinite(proba))
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    samples = post.sample_proba(X[:5], 8, np.random.default_rng(seed))
    assert samples.shape == (8, 5, k)
    assert np.allclose(samples.sum(axis=2), 1.0, atol=1e-5)


def test_it_concentrates_as_data_grows() -> None:
    X, y = blobs(2000, seed=1)
    probe = blobs(50, seed=2)[0]
    traces, variances = [], []
    for n in (30, 300, 2000):
        post = bayes.fit(X[:n], y[:n], n_classes=3, prior_precision=1.0)
        traces.append(post.covariance_trace())
        variances.append(post.logit_mean_var(probe)[1].mean())
    assert traces[0] > traces[1] > traces[2]
    assert variances[0] > variances[1] > variances[2]


def test_it_learns_separable_blobs() -> None:
    X, y = blobs(400, seed=3)
    post = bayes.fit(X[:300], y[:300], n_classes=3)
    assert (post.predict(X[300:]) == y[300:]).mean() > 0.95
    assert bayes.MIN_PRIOR_PRECISION <= post.prior_precision <= bayes.MAX_PRIOR_PRECISION


def test_it_gives_high_bald_far_from_data_and_low_bald_on_a_crowded_boundary() -> None:
    rng = np.random.default_rng(4)
    # 1-D boundary at x0 = 0 seen many times, with labels that are a coin flip near it.
    n = 3000
    X = np.zeros((n, 2), dtype=np.float32)
    X[:, 0] = rng.uniform(-1, 1, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * X[:, 0]))).astype(int)
    post = bayes.fit(X, y, n_classes=2)
    boundary = np.array([[0.0, 0.0]], dtype=np.float32)
    far = np.array([[0.0, 40.0]], dtype=np.float32)  # a direction no example ever varied in
    samples = post.sample_proba(np.vstack([boundary, far]), 256, np.random.default_rng(0))
    mi = acquisition.bald(samples)
    h = acquisition.entropy(samples.mean(axis=0))
    assert h[0] > 0.6  # ambiguous: high predictive entropy
    assert mi[0] < 0.05  # ... but labelling it again teaches little
    assert mi[1] > 5 * mi[0]


def test_it_round_trips_through_bytes() -> None:
    X, y = blobs(100, seed=5)
    post = bayes.fit(X, y, n_classes=3)
    post.temperature, post.variance_scale = 0.8, 0.3
    again = bayes.Posterior.from_bytes(post.to_bytes())
    assert np.allclose(again.predict_proba(X), post.predict_proba(X), atol=1e-5)
    assert again.temperature == 0.8 and again.variance_scale == 0.3


def test_it_refuses_a_single_class() -> None:
    X, _ = blobs(20)
    with pytest.raises(bayes.ModelFitError, match="same class"):
        bayes.fit(X, np.zeros(20, dtype=int), n_classes=3)


def test_it_refuses_non_finite_embeddings() -> None:
    X, y = blobs(20)
    X[3, 2] = np.nan
    with pytest.raises(bayes.ModelFitError, match="NaN"):
        bayes.fit(X, y, n_classes=3)
    X[3, 2] = np.inf
    with pytest.raises(bayes.ModelFitError):
        bayes.fit_multilabel(X, np.eye(3, dtype=int)[y])


def test_it_refuses_labels_out_of_range() -> None:
    X, y = blobs(20)
    with pytest.raises(bayes.ModelFitError):
        bayes.fit(X, y + 5, n_classes=3)


def test_it_handles_a_class_with_a_single_example_and_an_unseen_class() -> None:
    X, y = blobs(50, k=3, seed=6)
    y[y == 2] = 0
    y[0] = 2  # one example of class 2; class 3 of 4 never labelled
    post = bayes.fit(X, y, n_classes=4)
    proba = post.predict_proba(X)
    assert np.all(np.isfinite(proba))
    assert proba[:, 3].max() < 0.5


def test_it_fits_multilabel() -> None:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.5, X[:, 0] + X[:, 2] > 0], axis=1).astype(int)
    post = bayes.fit_multilabel(X[:200], Y[:200])
    pred = post.predict(X[200:])
    assert (pred == Y[200:]).mean() > 0.9
    assert post.sample_proba(X[:4], 6, rng).shape == (6, 4, 3)


def test_it_calibrates_with_cross_validation() -> None:
    rng = np.random.default_rng(8)
    X = rng.standard_normal((800, 10)).astype(np.float32)
    logits = 2.0 * X[:, 0]
    y = (rng.random(800) < 1 / (1 + np.exp(-logits))).astype(int)
    post = calibration.calibrate(bayes.fit(X[:500], y[:500], n_classes=2), X[:500], y[:500])
    from learning import metrics

    assert metrics.expected_calibration_error(post.predict_proba(X[500:]), y[500:]) < 0.08


def test_it_expresses_the_mean_around_another_centre_without_changing_logits() -> None:
    X, y = blobs(80, seed=9)
    post = bayes.fit(X, y, n_classes=3)
    shift, scale = X.mean(axis=0) + 0.3, 1.7
    W = post.mean_for(shift, scale)
    Xb = np.concatenate([(X - shift) / scale, np.ones((len(X), 1))], axis=1)
    assert np.allclose(Xb @ W, post.design(X) @ post.mean, atol=1e-8)


def test_it_refits_warm_to_the_posterior_a_cold_fit_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = blobs(660, k=4, d=24, spread=0.8, seed=10)
    previous = bayes.fit(X[:600], y[:600], n_classes=4)
    cold_same_lambda = bayes.fit(X, y, n_classes=4, prior_precision=previous.prior_precision)
    # A warm refit stops within WARM_WITHIN_SD posterior standard deviations of the MAP: in the posterior's own
    # coordinates (and so in every logit) it is within a few hundredths of a standard deviation of the cold fit's.
    warm = bayes.fit(X, y, n_classes=4, warm_start=previous)
    in_sd = (warm.in_basis.T @ (warm.mean - cold_same_lambda.mean)) * np.sqrt(warm.precision_eigenvalues())
    assert np.abs(in_sd).max() < 5 * bayes.WARM_WITHIN_SD
    mu, var = cold_same_lambda.logit_mean_var(X)
    assert (np.abs(warm.logit_mean_var(X)[0] - mu) / np.sqrt(var)).max() < 5 * bayes.WARM_WITHIN_SD
    assert np.abs(warm.predict_proba(X) - cold_same_lambda.predict_proba(X)).max() < 3e-3
    assert warm.info["lbfgs_iterations"] < 10
    # Without that allowance it finds the cold fit's optimum itself:
    monkeypatch.setattr(bayes, "WARM_WITHIN_SD", 0.0)
    warm = bayes.fit(X, y, n_classes=4, warm_start=previous)
    # Same prior precision (the labels grew by 10%, no new search) ...
    assert warm.prior_precision == previous.prior_precision
    assert warm.info["warm_start"] == 1 and warm.info["evidence_iterations"] == 1
    # ... so the same posterior as a cold fit at that lambda, up to the optimiser's tolerance
    # (the cold fit's own distance to the exact optimum is about 2e-4 on this data) ...
    assert np.allclose(warm.mean, cold_same_lambda.mean, atol=1e-3)
    assert np.allclose(warm.precision_eigenvalues(), cold_same_lambda.precision_eigenvalues(), rtol=1e-3)
    assert np.abs(warm.predict_proba(X) - cold_same_lambda.predict_proba(X)).max() < 5e-4
    assert abs(warm.log_evidence - cold_same_lambda.log_evidence) < 0.01
    # ... in far fewer L-BFGS steps, and close to the cold fit with its own evidence search.
    assert warm.info["lbfgs_iterations"] < cold_same_lambda.info["lbfgs_iterations"]
    cold = bayes.fit(X, y, n_classes=4)
    assert abs(np.log(cold.prior_precision / warm.prior_precision)) < 0.25
    assert np.abs(cold.predict_proba(X) - warm.predict_proba(X)).max() < 0.05


def test_it_searches_the_prior_precision_again_once_the_labels_grew_by_half() -> None:
    X, y = blobs(400, seed=11)
    previous = bayes.fit(X[:200], y[:200], n_classes=3)
    assert previous.info["evidence_n"] == 200
    kept = bayes.fit(X[:290], y[:290], n_classes=3, warm_start=previous)
    assert kept.info["evidence_iterations"] == 1 and kept.info["evidence_n"] == 200
    searched = bayes.fit(X[:300], y[:300], n_classes=3, warm_start=kept)
    assert searched.info["evidence_iterations"] > 1 and searched.info["evidence_n"] == 300
    # The search a warm refit runs is the cold one: same lambda.
    assert np.isclose(searched.prior_precision, bayes.fit(X[:300], y[:300], n_classes=3).prior_precision, rtol=1e-3)


def test_a_deferred_search_is_left_to_search_prior_and_taken_by_the_next_refit() -> None:
    X, y = blobs(700, seed=11)
    previous = bayes.fit(X[:200], y[:200], n_classes=3)
    # Grown by half but not by 2.25x: the refit keeps lambda and marks the search due, instead of searching.
    deferred = bayes.fit(X[:300], y[:300], n_classes=3, warm_start=previous, defer_search=True)
    assert deferred.info["evidence_iterations"] == 1 and deferred.info["evidence_n"] == 200
    assert deferred.prior_precision == previous.prior_precision and bayes.search_due(deferred)
    # The search off the path finds the lambda the refit would have found itself (the cold one).
    refit = bayes.search_prior(X[:300], y[:300], n_classes=3, warm_start=deferred)
    searched = bayes.searched_of(refit)
    assert searched[1] == 300 and not bayes.search_due(refit)
    inline = bayes.fit(X[:300], y[:300], n_classes=3, warm_start=previous)
    assert inline.info["evidence_iterations"] > 1
    assert np.isclose(searched[0], inline.prior_precision, rtol=1e-3)
    # ... and its refit is the refit the update would have made.
    assert np.abs(refit.predict_proba(X) - inline.predict_proba(X)).max() < 1e-3
    # The next refit takes it without a search of its own, and is the refit at that lambda.
    taken = bayes.fit(X[:320], y[:320], n_classes=3, warm_start=deferred, defer_search=True, searched=searched)
    assert taken.prior_precision == searched[0] and taken.info["evidence_n"] == 300
    assert taken.info["evidence_iterations"] == 1 and not bayes.search_due(taken)
    fixed = bayes.fit(X[:320], y[:320], n_classes=3, prior_precision=searched[0])
    assert np.abs(taken.predict_proba(X) - fixed.predict_proba(X)).max() < 1e-3
    # A search made at a count farther from this one than the warm start's own is ignored.
    stale = bayes.fit(X[:330], y[:330], n_classes=3, warm_start=taken, defer_search=True, searched=(1e3, 200))
    assert stale.prior_precision == taken.prior_precision and stale.info["evidence_n"] == 300
    # Past 2.25x the refit searches itself: a search that never comes cannot leave lambda stale for long.
    grown = bayes.fit(X[:680], y[:680], n_classes=3, warm_start=taken, defer_search=True)
    assert grown.info["evidence_iterations"] > 1 and grown.info["evidence_n"] == 680 and not bayes.search_due(grown)


def test_a_deferred_search_works_for_multilabel_models() -> None:
    rng = np.random.default_rng(13)
    X = rng.standard_normal((330, 8)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.5, X[:, 0] + X[:, 2] > 0], axis=1).astype(int)
    previous = bayes.fit_multilabel(X[:140], Y[:140])
    deferred = bayes.fit_multilabel(X[:240], Y[:240], warm_start=previous, defer_search=True)
    assert bayes.search_due(deferred) and deferred.prior_precision == previous.prior_precision
    lam, n = bayes.searched_of(bayes.search_prior(X[:240], Y[:240], multi_label=True, warm_start=deferred))
    assert n == 240 and np.isclose(lam, bayes.fit_multilabel(X[:240], Y[:240]).prior_precision, rtol=1e-3)


def test_it_ignores_a_warm_start_with_other_outputs() -> None:
    X, y = blobs(120, k=3, seed=12)
    other = bayes.fit(X, y % 2, n_classes=2)
    post = bayes.fit(X, y, n_classes=3, warm_start=other)
    assert post.info["warm_start"] == 0
    assert np.allclose(post.predict_proba(X), bayes.fit(X, y, n_classes=3).predict_proba(X), atol=1e-5)


def test_it_refits_a_multilabel_model_warm() -> None:
    rng = np.random.default_rng(13)
    X = rng.standard_normal((330, 8)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.5, X[:, 0] + X[:, 2] > 0], axis=1).astype(int)
    previous = bayes.fit_multilabel(X[:300], Y[:300])
    warm = bayes.fit_multilabel(X, Y, warm_start=previous)
    cold = bayes.fit_multilabel(X, Y, prior_precision=previous.prior_precision)
    assert warm.info["warm_start"] == 1
    # Near-separable labels at a tiny prior precision (weights near 18): the curvature moved from the warm start's,
    # and the refit stops up to 0.2 posterior sd from the cold optimum (WARM_WITHIN_SD's early stop); the
    # probabilities stay within a few thousandths.
    mu, var = cold.logit_mean_var(X)
    assert (np.abs(warm.logit_mean_var(X)[0] - mu) / np.sqrt(var)).max() < 0.3
    assert np.abs(warm.predict_proba(X) - cold.predict_proba(X)).max() < 3e-3


def test_it_reports_the_laplace_evidence_from_the_factors() -> None:
    X, y = blobs(150, seed=14)
    post = bayes.fit(X, y, n_classes=3, prior_precision=2.0)
    Xb = post.design(X)
    P = bayes.softmax(Xb @ post.mean)
    nll = -float(np.sum(np.log(P[np.arange(len(y)), y])))
    # The precision's eigenvalues are a_i g_k + lambda: its log-determinant is their log-sum.
    eigs = np.outer(post.in_eig, post.out_eig).ravel()
    prior = -0.5 * 2.0 * np.sum(post.mean**2) + 0.5 * post.mean.size * np.log(2.0)
    expected = -nll + prior - 0.5 * np.sum(np.log(eigs + 2.0))
    assert np.isclose(post.log_evidence, expected, rtol=1e-6)
    # Each output keeps its total curvature: tr(g_k A) = tr(X^T diag(p_k (1 - p_k)) X).
    traces = np.einsum("nd,nd->n", Xb, Xb) @ (P * (1 - P))
    assert np.allclose(post.out_eig * post.in_eig.sum(), traces, rtol=1e-4)


def exact_ggn_variance(post: bayes.Posterior, X_train: np.ndarray, X: np.ndarray, column: int) -> np.ndarray:
    """x^T (X^T diag(p (1 - p)) X + lambda I)^-1 x for one output, computed directly."""
    Xb = post.design(X_train)
    F = Xb @ post.mean
    P = bayes.sigmoid(F) if post.multi_label else bayes.softmax(F)
    h = P[:, column] * (1 - P[:, column])
    H = (Xb * h[:, None]).T @ Xb + post.prior_precision * np.eye(Xb.shape[1])
    Z = post.design(X)
    return np.einsum("nd,nd->n", Z @ np.linalg.inv(H), Z)


def test_it_is_the_exact_ggn_posterior_for_two_classes_and_for_one_sigmoid() -> None:
    # With two softmax classes p_1 (1 - p_1) = p_2 (1 - p_2), and with one sigmoid there is one
    # block: the Kronecker factorisation is then exact, so binary projects keep the old posterior.
    X, y = blobs(200, k=2, d=12, spread=1.0, seed=21)
    probe = blobs(30, k=2, d=12, seed=22)[0] * 2.0
    post = bayes.fit(X, y, n_classes=2)
    var = post.logit_mean_var(probe)[1]
    for k in range(2):
        assert np.allclose(var[:, k], exact_ggn_variance(post, X, probe, k), rtol=1e-4)
    one = bayes.fit_multilabel(X, y[:, None])
    assert np.allclose(one.logit_mean_var(probe)[1][:, 0], exact_ggn_variance(one, X, probe, 0), rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 30), multi=st.booleans())
def test_it_gives_non_negative_variances_that_pool_moments_reproduce(seed: int, k: int, multi: bool) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((120, 10)).astype(np.float32)
    y = rng.integers(0, k, 120)
    y[:k] = np.arange(k)
    post = bayes.fit_multilabel(X, np.eye(k, dtype=int)[y]) if multi else bayes.fit(X, y, n_classes=k)
    pool = (rng.standard_normal((50, 10)) * rng.uniform(0.3, 5)).astype(np.float32)
    mu, var = post.logit_mean_var(pool)
    assert np.all(var > 0) and np.all(np.isfinite(mu))
    # Every input direction kept: the pool path is the exact one, in float32.
    fast_mu, fast_var = post.pool_moments(rank=11)(pool)
    assert np.allclose(fast_mu.T, mu, rtol=1e-3, atol=1e-3)
    assert np.allclose(fast_var.T, var, rtol=1e-3)
    # Fewer directions kept: still positive, and never below the variance along the kept ones.
    low_var = post.pool_moments(rank=3)(pool)[1].T
    assert np.all(low_var > 0)
    assert np.abs(low_var - var).max() <= 0.5 * var.max()


def test_its_weight_samples_have_the_logit_variance_it_reports() -> None:
    X, y = blobs(150, k=4, d=8, spread=1.0, seed=23)
    post = bayes.fit(X, y, n_classes=4)
    probe = blobs(5, k=4, d=8, seed=24)[0]
    mean, samples = post.sample_logits(probe, 4000, np.random.default_rng(0))
    _, var = post.logit_mean_var(probe)
    assert np.allclose(samples.var(axis=0), var, rtol=0.1)


def test_it_loads_a_format_1_artifact_with_per_output_cholesky_factors(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json

    X, y = blobs(200, k=2, d=12, spread=1.0, seed=25)
    # Format-1 models had a bias column of 1 (their artifacts carry no ``bias_feature``).
    monkeypatch.setattr(bayes, "BIAS_FEATURE", 1.0)
    post = bayes.fit(X, y, n_classes=2)
    # What the block-diagonal model stored: each output's precision X^T diag(h) X + lambda I.
    Xb = post.design(X)
    P = bayes.softmax(Xb @ post.mean)
    blocks = [(Xb * (P[:, k] * (1 - P[:, k]))[:, None]).T @ Xb + post.prior_precision * np.eye(13) for k in range(2)]
    meta = {"format": 1, "prior_precision": post.prior_precision, "multi_label": False, "temperature": 0.9,
            "variance_scale": 0.5, "log_evidence": post.log_evidence, "n_train": 200, "info": {}}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mean=post.mean, chol=np.linalg.cholesky(np.stack(blocks)).astype(np.float32),
                        shift=post.shift, scale=np.array(post.scale),
                        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    old = bayes.Posterior.from_bytes(buffer.getvalue())
    assert old.temperature == 0.9 and old.variance_scale == 0.5
    assert np.allclose(old.logit_mean_var(X)[1], post.logit_mean_var(X)[1], rtol=1e-3)
    # It warm-starts the next fit like a current artifact.
    monkeypatch.undo()
    warm = bayes.fit(X, y, n_classes=2, warm_start=old)
    assert warm.info["warm_start"] == 1 and warm.bias_feature == bayes.BIAS_FEATURE


@pytest.mark.parametrize("minority", [0.05, 0.15, 0.3])
def test_a_weaker_bias_prior_keeps_class_frequencies(minority: float) -> None:
    """Embeddings that carry no signal: the model should predict the label frequencies. With the bias under the
    weights' prior (column 1) the evidence lowers that prior to let the bias grow, and the weights fit noise
    (0.23 predicted on fresh noise for 4 % positives); a larger bias column (a weaker bias prior) cures it."""
    rng = np.random.default_rng(31)
    X = rng.normal(size=(600, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = (rng.random(600) < minority).astype(int)
    fresh = rng.normal(size=(200, 16))
    errors = []
    for column in (1.0, 3.0, 10.0):
        post = bayes.fit(X, y, n_classes=2, bias_feature=column)
        assert post.bias_feature == column
        errors.append(abs(post.predict_proba(fresh)[:, 1].mean() - y.mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.07
    # At the embeddings' centre the logit is the bias alone.
    centre = bayes.softmax(post.design(post.shift[None]) @ post.mean)[0, 1]
    assert abs(centre - y.mean()) < 0.01


def test_an_artifact_keeps_its_bias_feature() -> None:
    X, y = blobs(120, k=3, d=6, seed=32)
    post = bayes.fit(X, y, n_classes=3)
    again = bayes.Posterior.from_bytes(post.to_bytes())
    assert again.bias_feature == post.bias_feature == bayes.BIAS_FEATURE
    assert np.allclose(again.logit_mean_var(X)[0], post.logit_mean_var(X)[0])
    # Raw weights (the serving path) give the same logits as the standardised design.
    raw = post.raw_weights(post.mean)
    assert np.allclose(X @ raw[:-1] + raw[-1], post.design(X) @ post.mean, atol=1e-8)


def _refits(X: np.ndarray, y: np.ndarray, k: int, multi_label: bool,
            seed: int) -> Callable[[int, bayes.Posterior | None], bayes.Posterior]:
    """fitted(n, previous): the model on the first n rows, single-label on y or multi-label on y's class plus a
    random 30 % of the others, warm-started from ``previous``."""
    Y = (np.random.default_rng(seed).random((len(y), k)) < 0.3).astype(int) | np.eye(k, dtype=int)[y]

    def fitted(n: int, previous: bayes.Posterior | None = None) -> bayes.Posterior:
        if multi_label:
            return bayes.fit_multilabel(X[:n], Y[:n], warm_start=previous)
        return bayes.fit(X[:n], y[:n], n_classes=k, warm_start=previous)

    return fitted


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 40), multi_label=st.booleans(), warm=st.booleans())
def test_float32_steps_reach_the_float64_optimum(seed: int, k: int, multi_label: bool, warm: bool) -> None:
    # L-BFGS evaluates in float32 far from the optimum and in float64 near it: the MAP is the one an
    # all-float64 optimisation finds, warm or cold, softmax or sigmoids.
    X, y = blobs(300, k=k, d=12, spread=1.0, seed=seed)
    fitted = _refits(X, y, k, multi_label, seed)

    previous = fitted(260) if warm else None
    mixed = fitted(300, previous)
    original = bayes._Objective._evaluate

    def float64_only(objective: bayes._Objective, V: np.ndarray) -> tuple[float, np.ndarray]:
        objective.single = False
        return original(objective, V)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bayes._Objective, "_evaluate", float64_only)  # every evaluation in float64, warm refits too
        double = fitted(300, previous)
    assert mixed.prior_precision == pytest.approx(double.prior_precision, rel=1e-3)
    assert np.abs(mixed.mean - double.mean).max() < 1e-3 * max(1.0, np.abs(double.mean).max())
    assert np.abs(mixed.predict_proba(X) - double.predict_proba(X)).max() < 1e-3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 30), multi_label=st.booleans())
def test_a_warm_refit_evaluates_in_float32_and_reads_its_curvature_off_its_last_evaluation(
        seed: int, k: int, multi_label: bool) -> None:
    X, y = blobs(400, k=k, d=12, spread=1.0, seed=seed)
    fitted = _refits(X, y, k, multi_label, seed)

    previous = fitted(380)
    calls: list[str] = []
    evaluate, nll_and_probs = bayes._Objective._evaluate, bayes._Objective.nll_and_probs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bayes._Objective, "_evaluate",
                      lambda self, V: calls.append("single" if self.single else "double") or evaluate(self, V))
        patch.setattr(bayes._Objective, "nll_and_probs",
                      lambda self, W: calls.append("product") or nll_and_probs(self, W))
        warm = fitted(400, previous)
    assert warm.info["warm_start"] == 1 and warm.info["evidence_iterations"] == 1
    # No float64 evaluation and no product after the optimiser: the curvature comes from its last evaluation ...
    assert calls and set(calls) == {"single"}
    # ... and is the curvature at the returned mean, as the product would give it (float32 rounding apart).
    F = warm.design(X[:400]) @ warm.mean
    _, a, g = bayes._kronecker_factors(warm.design(X[:400]), bayes.sigmoid(F) if multi_label else bayes.softmax(F))
    assert np.allclose(np.outer(a, g), np.outer(warm.in_eig, warm.out_eig), rtol=1e-3, atol=1e-6 * a.max() * g.max())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 30), multi_label=st.booleans())
def test_the_float32_objective_agrees_with_the_float64_one(seed: int, k: int, multi_label: bool) -> None:
    rng = np.random.default_rng(seed)
    X, y = blobs(200, k=k, d=10, spread=1.0, seed=seed)
    targets = np.eye(k)[y] if not multi_label else (rng.random((200, k)) < 0.4).astype(float)
    Xb = np.concatenate([X.astype(np.float64), np.ones((200, 1))], axis=1)
    objective = bayes._Objective(Xb, targets, multi_label)
    objective.set_prior_precision(float(rng.uniform(0.1, 10)))
    v = rng.standard_normal(Xb.shape[1] * k)
    double = objective(v)
    objective.single = True
    single = objective._evaluate(v.reshape(objective.shape))
    assert single[0] == pytest.approx(double[0], rel=1e-5)
    assert np.abs(single[1] - double[1]).max() <= 1e-4 * max(np.abs(double[1]).max(), 1e-3)
