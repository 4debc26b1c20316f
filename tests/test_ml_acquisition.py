"""Property tests for acquisition functions and batch selection."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from learning import acquisition, bayes

probs = arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(2, 5)), elements=st.floats(0.0, 1.0))


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
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4)), elements=st.floats(0.0, 1.0)))
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
    assert set(acquisition.STRATEGIES) == {"random", "least_confidence", "margin", "entropy", "bald", "bald_diversity"}
    assert acquisition.DEFAULT_STRATEGY == "bald_diversity"


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
    picked = acquisition.select_batch("bald_diversity", scores=np.linspace(0, 1, 12), embeddings=embeddings, batch_size=5,
                          rng=np.random.default_rng(0))
    assert len(picked) == 5 and len(set(picked.tolist())) == 5
