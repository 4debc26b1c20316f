"""Property tests for acquisition functions and batch selection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from learning import acquisition, bayes

probs = arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(2, 5)), elements=st.floats(0.0, 1.0)
)
multilabel_probs = arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4)), elements=st.floats(0.0, 1.0)
)


def normalise(a: np.ndarray) -> np.ndarray:
    a = a + 1e-9
    return a / a.sum(axis=-1, keepdims=True)


@settings(max_examples=200, deadline=None)
@given(probs)
def test_it_keeps_bald_between_zero_and_predictive_entropy(raw: np.ndarray) -> None:
    samples = normalise(raw)
    mi = acquisition.bald(samples)
    h = acquisition.entropy(samples.mean(axis=0))
    assert np.all(mi >= 0)
    assert np.all(mi <= h + 1e-9)


@settings(max_examples=100, deadline=None)
@given(multilabel_probs)
def test_it_keeps_multilabel_bald_between_zero_and_entropy(samples: np.ndarray) -> None:
    mi = acquisition.bald(samples, multi_label=True)
    h = acquisition.entropy(samples.mean(axis=0), multi_label=True)
    assert np.all(mi >= 0)
    assert np.all(mi <= h + 1e-9)


def test_it_gives_zero_bald_when_samples_agree() -> None:
    p = normalise(np.random.default_rng(0).random((1, 10, 3)))
    assert np.allclose(acquisition.bald(np.repeat(p, 5, axis=0)), 0.0, atol=1e-9)


def test_it_ranks_uncertainty_scores_sensibly() -> None:
    p = np.array([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0]])
    assert acquisition.entropy(p).argmax() == 1
    assert acquisition.margin(p).argmax() == 2
    assert acquisition.least_confidence(p).argmin() == 0


def test_it_knows_every_strategy_name() -> None:
    assert set(acquisition.STRATEGIES) == {"random", "least_confidence", "margin", "entropy", "bald", "bald_diversity",
                                           "bald_density_diversity", "margin_density_diversity"}
    assert acquisition.DEFAULT_STRATEGY == "bald_density_diversity"


def duplicate_clusters(n_clusters: int = 30, copies: int = 20, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d))
    X = np.repeat(centers, copies, axis=0) + 1e-4 * rng.standard_normal((n_clusters * copies, d))
    return X.astype(np.float32)


def test_it_spreads_a_diverse_batch_over_clusters_of_duplicates() -> None:
    X = duplicate_clusters()
    rng = np.random.default_rng(1)
    # Scores favour the first clusters strongly, so a plain top-k would take duplicates.
    scores = np.repeat(np.linspace(1.0, 0.5, 30), 20) + 1e-3 * rng.random(600)
    plain = acquisition.select_batch("bald", scores=scores, embeddings=X, batch_size=10, diversity=False, rng=rng)
    diverse = acquisition.select_batch("bald", scores=scores, embeddings=X, batch_size=10, diversity=True, rng=rng)
    assert len(set(plain // 20)) < 10
    assert len(set(diverse // 20)) == 10
    E = X[diverse] / np.linalg.norm(X[diverse], axis=1, keepdims=True)
    sims = E @ E.T - 2 * np.eye(10)
    assert sims.max() < 0.99


def test_it_covers_clusters_with_the_seed() -> None:
    X = duplicate_clusters(n_clusters=12, copies=50, seed=2)
    seed = acquisition.select_seed(X, 12, np.random.default_rng(3))
    assert len(seed) == len(set(seed.tolist())) == 12
    assert len(set((seed // 50).tolist())) >= 11


def test_it_scores_a_pool_in_chunks_with_bounded_shapes() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((500, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)
    post = bayes.fit(X[:100], y[:100], n_classes=3)
    pool = rng.standard_normal((1000, 8)).astype(np.float32)
    whole = acquisition.score_pool(post, pool, strategy="bald", rng=np.random.default_rng(0), chunk_size=10_000)
    chunked = acquisition.score_pool(post, pool, strategy="bald", rng=np.random.default_rng(0), chunk_size=77)
    assert whole.proba.shape == (1000, 3)
    assert np.allclose(whole.scores, chunked.scores, atol=1e-5)
    assert np.allclose(whole.proba.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(whole.scores >= 0)
    exact = post.predict_proba(pool)
    assert np.abs(exact - whole.proba).max() < 0.1


def test_it_fills_a_diverse_batch_even_when_the_pool_is_all_duplicates():
    embeddings = np.tile(np.array([[1.0, 0.0, 0.0]]), (12, 1))
    picked = acquisition.select_batch("bald_diversity", scores=np.linspace(0, 1, 12), embeddings=embeddings,
                                      batch_size=5, rng=np.random.default_rng(0))
    assert len(picked) == 5 and len(set(picked.tolist())) == 5


# (items, antithetic pairs, classes, seed, logit scale)
logit_moments = st.tuples(
    st.integers(1, 7), st.integers(1, 8), st.integers(1, 5), st.integers(0, 10_000), st.floats(0.01, 30.0)
)


def antithetic_samples(shape: tuple[int, int, int, int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, h, k, seed, spread = shape
    rng = np.random.default_rng(seed)
    mean = (rng.standard_normal((b, k)) * spread).astype(np.float32)
    dev = (rng.standard_normal((b, h, k)) * spread * rng.random((b, 1, 1))).astype(np.float32)
    z = np.concatenate([mean[:, None] + dev, mean[:, None] - dev], axis=1).astype(np.float64)  # (B, S, K)
    return mean, dev, z


@settings(max_examples=150, deadline=None)
@given(logit_moments)
def test_it_keeps_pool_bald_between_zero_and_entropy_and_equal_to_bald_of_the_samples(shape) -> None:
    mean, dev, z = antithetic_samples(shape)
    if z.shape[-1] < 2:
        z = np.concatenate([z, np.zeros_like(z)], axis=-1)
        mean = np.concatenate([mean, np.zeros_like(mean)], axis=-1)
        dev = np.concatenate([dev, np.zeros_like(dev)], axis=-1)
    fast = acquisition._bald_antithetic(mean.T, dev.transpose(2, 1, 0), multi_label=False)
    samples = bayes.softmax(z).transpose(1, 0, 2)  # (S, B, K)
    h = acquisition.entropy(samples.mean(axis=0))
    assert np.all(fast >= 0)
    assert np.all(fast <= h + 1e-6)  # float32 arithmetic
    assert np.allclose(fast, acquisition.bald(samples), atol=2e-4)


@settings(max_examples=150, deadline=None)
@given(logit_moments)
def test_it_keeps_multilabel_pool_bald_between_zero_and_entropy(shape) -> None:
    mean, dev, z = antithetic_samples(shape)
    fast = acquisition._bald_antithetic(mean.T, dev.transpose(2, 1, 0), multi_label=True)
    samples = bayes.sigmoid(z).transpose(1, 0, 2)
    h = acquisition.entropy(samples.mean(axis=0), multi_label=True)
    assert np.all(fast >= 0)
    assert np.all(fast <= h + 1e-6)  # float32 arithmetic
    assert np.allclose(fast, acquisition.bald(samples, multi_label=True), atol=2e-4)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 5), strategy=st.sampled_from(sorted(acquisition.STRATEGIES)))
def test_it_scores_every_pool_item_within_bounds(seed: int, k: int, strategy: str) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((80, 6)).astype(np.float32)
    y = rng.integers(0, k, 80)
    y[:k] = np.arange(k)
    post = bayes.fit(X, y, n_classes=k)
    post.temperature, post.variance_scale = float(rng.uniform(0.5, 2)), float(rng.uniform(0.01, 2))
    pool = (rng.standard_normal((300, 6)) * rng.uniform(0.5, 20)).astype(np.float32)
    scored = acquisition.score_pool(post, pool, strategy=strategy, rng=rng, chunk_size=97)
    assert np.all(np.isfinite(scored.scores)) and np.all(np.isfinite(scored.proba))
    assert np.allclose(scored.proba.sum(axis=1), 1.0, atol=1e-5)
    if strategy.startswith("bald"):
        assert np.all(scored.scores >= 0) and np.all(scored.scores <= np.log(k) + 1e-6)


def test_it_scores_high_bald_far_from_data_and_low_bald_on_a_crowded_boundary_in_the_pool() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    X = np.zeros((n, 2), dtype=np.float32)
    X[:, 0] = rng.uniform(-1, 1, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * X[:, 0]))).astype(int)
    post = bayes.fit(X, y, n_classes=2)
    pool = np.array([[0.0, 0.0], [0.0, 40.0]], dtype=np.float32)
    scored = acquisition.score_pool(post, pool, strategy="bald", n_samples=64, rng=np.random.default_rng(0))
    assert acquisition.entropy(scored.proba)[0] > 0.6
    assert scored.scores[0] < 0.05
    assert scored.scores[1] > 5 * scored.scores[0]


def test_it_scores_a_multilabel_pool() -> None:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.5, X[:, 0] + X[:, 2] > 0], axis=1).astype(int)
    post = bayes.fit_multilabel(X, Y)
    pool = rng.standard_normal((500, 8)).astype(np.float32)
    scored = acquisition.score_pool(post, pool, strategy="bald_diversity", rng=rng, chunk_size=64)
    assert scored.proba.shape == (500, 3) and np.all((scored.proba >= 0) & (scored.proba <= 1))
    assert np.all(scored.scores >= 0) and np.all(scored.scores <= 3 * np.log(2) + 1e-6)
    assert np.abs(post.predict_proba(pool) - scored.proba).max() < 0.1


# ---- information density (the bald_density_diversity strategy) -------------------------------


@given(st.integers(min_value=2, max_value=60), st.integers(min_value=0, max_value=10_000))
def test_density_lies_in_zero_one_and_ignores_a_rows_own_similarity(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8))
    density = acquisition.information_density(X, neighbours=5)
    assert density.shape == (n,)
    assert np.all((0.0 <= density) & (density <= 1.0))
    # Duplicating one row must not make it look dense by matching itself.
    lone = np.vstack([X, rng.normal(size=(1, 8)) * 50])
    assert acquisition.information_density(lone, neighbours=1)[-1] < 1.0


def test_an_outlier_is_less_dense_than_the_members_of_a_cluster():
    rng = np.random.default_rng(0)
    cluster = rng.normal(size=(200, 16)) * 0.1 + np.ones(16)
    outlier = -np.ones((1, 16))
    density = acquisition.information_density(np.vstack([cluster, outlier]), neighbours=20)
    assert density[-1] < density[:-1].min()
    # The sampled reference (pools above `reference`) agrees with the exact one on that order.
    sampled = acquisition.information_density(np.vstack([cluster, outlier]), neighbours=20, reference=50,
                                              rng=np.random.default_rng(1))
    assert sampled[-1] < sampled[:-1].min()


def test_density_weighted_bald_is_bald_times_density():
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(size=(60, 6)) + 3, rng.normal(size=(60, 6)) - 3])
    y = np.array([0] * 60 + [1] * 60)
    posterior = bayes.fit(X, y, n_classes=2)
    pool = rng.normal(size=(80, 6)) * 3
    plain = acquisition.score_pool(posterior, pool, strategy="bald_diversity", rng=np.random.default_rng(5))
    weighted = acquisition.score_pool(posterior, pool, strategy="bald_density_diversity",
                                      rng=np.random.default_rng(5))
    density = acquisition.information_density(pool)
    np.testing.assert_allclose(weighted.scores, plain.scores * density, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(weighted.proba, plain.proba)
    given_density = acquisition.score_pool(posterior, pool, strategy="bald_density_diversity",
                                           rng=np.random.default_rng(5), density=np.ones(80))
    np.testing.assert_allclose(given_density.scores, plain.scores, rtol=1e-6, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(17, 60))
def test_it_keeps_bald_of_many_classes_between_zero_and_entropy(seed: int, k: int) -> None:
    # More classes than BALD samples: each item's most probable ones plus a lumped rest.
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((400, 12)).astype(np.float32)
    y = rng.integers(0, k, 400)
    y[:k] = np.arange(k)
    post = bayes.fit(X, y, n_classes=k)
    pool = (rng.standard_normal((200, 12)) * rng.uniform(0.5, 5)).astype(np.float32)
    scored = acquisition.score_pool(post, pool, strategy="bald", rng=rng, chunk_size=61)
    assert np.all(np.isfinite(scored.scores)) and np.all(scored.scores >= 0)
    assert np.all(scored.scores <= acquisition.entropy(scored.proba) + 0.05)
    assert np.abs(post.predict_proba(pool) - scored.proba).max() < 1e-3


def test_it_scores_bald_like_the_weight_samples_it_stands_for() -> None:
    # Logit samples stand in for weight samples: same BALD up to Monte Carlo noise.
    X, y = blobs_for_bald()
    post = bayes.fit(X[:60], y[:60], n_classes=3)
    pool = X[60:]
    fast = acquisition.score_pool(post, pool, strategy="bald", n_samples=2000, rng=np.random.default_rng(0)).scores
    slow = acquisition.bald(post.sample_proba(pool, 4000, np.random.default_rng(1)))
    assert np.corrcoef(fast, slow)[0, 1] > 0.98
    assert np.abs(fast - slow).max() < 0.03


def blobs_for_bald() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(31)
    centers = rng.standard_normal((3, 6))
    y = rng.integers(0, 3, 300)
    return (centers[y] + 0.8 * rng.standard_normal((300, 6))).astype(np.float32), y


def test_it_keeps_multilabel_bald_of_many_labels_between_zero_and_entropy() -> None:
    rng = np.random.default_rng(41)
    X = rng.standard_normal((300, 10)).astype(np.float32)
    Y = (X @ rng.standard_normal((10, 40)) > 0.8).astype(int)
    post = bayes.fit_multilabel(X, Y)
    pool = (rng.standard_normal((150, 10)) * 2).astype(np.float32)
    scored = acquisition.score_pool(post, pool, strategy="bald", rng=rng, chunk_size=70)
    assert np.all(np.isfinite(scored.scores)) and np.all(scored.scores >= 0)
    assert np.all(scored.scores <= acquisition.entropy(scored.proba, multi_label=True) + 1e-5)
    assert np.abs(post.predict_proba(pool) - scored.proba).max() < 1e-3


def test_density_weighted_margin_is_margin_times_density_and_goes_to_the_crowded_boundary_first():
    rng = np.random.default_rng(8)
    X = np.vstack([rng.normal(size=(60, 6)) + 3, rng.normal(size=(60, 6)) - 3])
    y = np.array([0] * 60 + [1] * 60)
    posterior = bayes.fit(X, y, n_classes=2)
    # A crowd of items on the boundary, and one far outlier that is just as undecided.
    crowd = rng.normal(size=(80, 6)) * 0.3
    outlier = np.zeros((1, 6))
    outlier[0, :3], outlier[0, 3:] = 40.0, -40.0
    pool = np.vstack([crowd, outlier])
    weighted = acquisition.score_pool(posterior, pool, strategy="margin_density_diversity",
                                      rng=np.random.default_rng(5))
    plain = acquisition.margin(weighted.proba)
    density = acquisition.information_density(pool)
    np.testing.assert_allclose(weighted.scores, plain * density, rtol=1e-6, atol=1e-12)
    assert plain[-1] > np.median(plain[:-1])
    picked = acquisition.select_batch("margin_density_diversity", scores=weighted.scores, embeddings=pool,
                                      batch_size=5, rng=np.random.default_rng(0))
    assert len(pool) - 1 not in picked.tolist()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(3, 60), top=st.integers(1, 16), ties=st.booleans())
def test_it_picks_each_items_most_probable_classes_even_with_ties(seed: int, k: int, top: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    top = min(top, k - 1)
    values = rng.random((50, k)).astype(np.float32)
    if ties:
        # Classes without examples share one probability: ties, also at each item's cut.
        values = np.round(values * 4) / 4
    idx = acquisition._top_indices(values, top)
    assert idx.shape == (top, 50)
    for row in range(50):
        chosen = idx[:, row]
        assert len(set(chosen.tolist())) == top
        # Most probable first: BALD gives slot j the same normal draws for every item.
        assert np.all(np.diff(values[row, chosen]) <= 0)
        # Nothing left out beats anything taken.
        rest = np.setdiff1d(np.arange(k), chosen)
        assert values[row, chosen].min() >= values[row, rest].max()


@pytest.mark.parametrize("multi_label", [False, True])
def test_bald_does_not_depend_on_the_block_it_is_computed_in(multi_label: bool, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 10)).astype(np.float32)
    k = 30
    if multi_label:
        post = bayes.fit_multilabel(X, (X @ rng.standard_normal((10, k)) > 0.8).astype(int))
    else:
        post = bayes.fit(X, np.argmax(X @ rng.standard_normal((10, k)), axis=1), n_classes=k)
    pool = (rng.standard_normal((700, 10)) * 2).astype(np.float32)
    whole = acquisition.score_pool(post, pool, strategy="bald", rng=np.random.default_rng(0))
    monkeypatch.setattr(acquisition, "BALD_BLOCK", 37)
    blocked = acquisition.score_pool(post, pool, strategy="bald", rng=np.random.default_rng(0))
    np.testing.assert_allclose(blocked.scores, whole.scores, rtol=1e-6, atol=1e-9)
