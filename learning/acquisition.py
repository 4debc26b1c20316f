"""Acquisition: which unlabelled items to show annotators next.

Plain module (numpy only, no Django). Every score is "higher = more worth labelling".
Strategies read predictive probabilities (N, K) and, for BALD, probabilities under posterior
weight samples (S, N, K). Multi-label probabilities are per-label Bernoulli probabilities and
every uncertainty is the sum (entropy, BALD) or mean (confidence, margin) over labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from learning.bayes import PI_OVER_8, Posterior, sigmoid

EPS = 1e-12


# ---- uncertainty measures ----------------------------------------------------------------
def _xlogx(p: np.ndarray) -> np.ndarray:
    return p * np.log(np.clip(p, EPS, 1.0))


def entropy(proba: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
    """Predictive entropy in nats per item (sum of Bernoulli entropies for multi-label)."""
    p = np.asarray(proba, dtype=np.float64)
    if multi_label:
        return -(_xlogx(p) + _xlogx(1.0 - p)).sum(axis=-1)
    return -_xlogx(p).sum(axis=-1)


def least_confidence(proba: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if multi_label:
        return (1.0 - np.maximum(p, 1.0 - p)).mean(axis=-1)
    return 1.0 - p.max(axis=-1)


def margin(proba: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
    """1 - (top probability - runner-up): 1 on a tie, 0 when one class has everything."""
    p = np.asarray(proba, dtype=np.float64)
    if multi_label:
        return (1.0 - np.abs(2.0 * p - 1.0)).mean(axis=-1)
    if p.shape[-1] < 2:
        return np.zeros(p.shape[:-1])
    top2 = np.partition(p, -2, axis=-1)[..., -2:]
    return 1.0 - (top2[..., 1] - top2[..., 0])


def bald(sample_proba: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
    """Mutual information between the label and the weights: H[E_w p] - E_w H[p].

    High where posterior samples disagree (the model lacks data: worth labelling), low where
    they agree even if each is unsure (ambiguous text: more labels will not help). Uses the
    Monte Carlo mean of the same samples, so by Jensen it is >= 0 and <= predictive entropy up
    to rounding, which the clip removes.
    """
    s = np.asarray(sample_proba, dtype=np.float64)
    mean = s.mean(axis=0)
    total = entropy(mean, multi_label=multi_label)
    expected = entropy(s, multi_label=multi_label).mean(axis=0)
    return np.clip(total - expected, 0.0, total)


# ---- registry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    name: str
    needs_samples: bool
    diversity: bool
    score: Callable[[np.ndarray, np.ndarray | None, np.random.Generator, bool], np.ndarray]
    # Weight scores by information density (Settles & Craven 2008), so outliers that only
    # look uncertain are not picked first.
    density: bool = False
    title: str = ""


def _random_score(proba: np.ndarray, samples: np.ndarray | None, rng: np.random.Generator, ml: bool) -> np.ndarray:
    return rng.random(len(proba))


def _bald_score(proba: np.ndarray, samples: np.ndarray | None, rng: np.random.Generator, ml: bool) -> np.ndarray:
    if samples is None:
        raise ValueError("BALD scores need posterior samples (the strategy's needs_samples)")
    return bald(samples, multi_label=ml)


STRATEGIES: dict[str, Strategy] = {
    "bald_density_diversity": Strategy(
        "bald_density_diversity", True, True, _bald_score,
        density=True, title="BALD × density + diversity (recommended)",
    ),
    "margin_density_diversity": Strategy(
        "margin_density_diversity", False, True, lambda p, s, r, ml: margin(p, multi_label=ml),
        density=True, title="Margin × density + diversity",
    ),
    "bald_diversity": Strategy("bald_diversity", True, True, _bald_score, title="BALD + diversity"),
    "bald": Strategy("bald", True, False, _bald_score, title="BALD"),
    "entropy": Strategy("entropy", False, False, lambda p, s, r, ml: entropy(p, multi_label=ml), title="Entropy"),
    "margin": Strategy("margin", False, False, lambda p, s, r, ml: margin(p, multi_label=ml), title="Margin"),
    "least_confidence": Strategy(
        "least_confidence", False, False, lambda p, s, r, ml: least_confidence(p, multi_label=ml),
        title="Least confidence",
    ),
    "random": Strategy("random", False, False, _random_score, title="Random"),
}
# BALD weighted by density, spread for diversity: on the eight benchmark sets it needed fewer
# labels than plain BALD + diversity on six, as many on one, and 20 more on one (within noise);
# see benchmarks/README.md, "Label efficiency".
DEFAULT_STRATEGY = "bald_density_diversity"


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}") from None


# ---- scoring a pool ----------------------------------------------------------------------
@dataclass
class PoolScores:
    proba: np.ndarray  # (N, K) float32 predictive probabilities
    scores: np.ndarray  # (N,) float64 acquisition scores, higher = label first


# Above this many classes BALD samples only each item's most probable ones (see score_pool).
BALD_CLASSES = 16


def score_pool(
    posterior: Posterior,
    X: np.ndarray,
    *,
    strategy: str = DEFAULT_STRATEGY,
    n_samples: int = 16,
    rng: np.random.Generator | None = None,
    chunk_size: int = 8000,
    density: np.ndarray | None = None,
) -> PoolScores:
    """Predictive probabilities and acquisition scores for a whole pool, chunk by chunk.

    Each chunk costs one float32 matrix product (``Posterior.pool_moments``: the mean logits
    and each logit's posterior variance, about K + 64 columns whatever the number of classes),
    then elementwise work. Predictive probabilities use the probit formula with those
    variances. BALD is the mutual information under ``n_samples`` antithetic logit samples
    mu ± sqrt(c var) eps: under the Kronecker-factored posterior an item's logits are
    independent Gaussians, so these have the distribution weight samples would give, and one
    set of eps serves every item (common random numbers: differences between items are not
    sampling noise). With more than ``BALD_CLASSES`` classes, each item's BALD samples its
    ``BALD_CLASSES`` most probable classes and lumps the others into one class held at its
    mean: classes with negligible probability carry negligible mutual information, and sampling
    all 150 would cost 10x more. Multi-label BALD (a sum over independent labels) samples each
    item's ``BALD_CLASSES`` least certain labels. Memory stays
    O(chunk * S * min(K, BALD_CLASSES)) however large the pool.
    """
    rng = rng or np.random.default_rng()
    spec = get_strategy(strategy)
    X = np.asarray(X)
    n = X.shape[0]
    k = posterior.n_classes
    proba = np.empty((n, k), dtype=np.float32)
    scores = np.empty(n, dtype=np.float64)
    half = max(1, n_samples // 2)
    is_bald = spec.name.startswith("bald")
    moments = posterior.pool_moments()
    top = min(k, BALD_CLASSES)
    eps = rng.standard_normal((top, half, 1)).astype(np.float32) if is_bald else None
    inv_t = np.float32(1.0 / posterior.temperature)
    sd_scale = np.float32(math.sqrt(posterior.variance_scale) / posterior.temperature)
    for start in range(0, n, chunk_size):
        chunk = X[start : start + chunk_size]
        moment_chunk = moments(chunk)  # (K, B) each
        stop = start + len(chunk)
        # The product runs on the whole chunk; the elementwise work after it on cache-sized blocks.
        for lo in range(0, len(chunk), BALD_BLOCK):
            mean, var = (np.ascontiguousarray(a[:, lo : lo + BALD_BLOCK]) for a in moment_chunk)
            p = _proba_class_major(posterior, mean, var)
            rows = proba[start + lo : start + lo + mean.shape[1]]
            rows[...] = p.T
            if is_bald:
                assert eps is not None
                scores[start + lo : start + lo + len(rows)] = _bald_of_moments(
                    mean, var, p, rows, eps, inv_t, sd_scale, top, multi_label=posterior.multi_label)
        if not is_bald:
            scores[start:stop] = spec.score(proba[start:stop], None, rng, posterior.multi_label)
    if spec.density:
        # `density` may come precomputed (the app caches it per project); it depends only on X.
        scores *= information_density(X, rng=rng) if density is None else density
    return PoolScores(proba=proba, scores=scores)


def _proba_class_major(posterior: Posterior, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``Posterior.proba_from_moments`` on class-major (K, B) float32 moments: every reduction over
    classes is then an elementwise operation between contiguous rows."""
    s = var * np.float32(PI_OVER_8 * posterior.variance_scale)
    s += np.float32(posterior.temperature**2)
    np.sqrt(s, out=s)
    z = mean / s
    if posterior.multi_label:
        return sigmoid(z).astype(np.float32)
    z -= z.max(axis=0)
    np.exp(z, out=z)
    z /= z.sum(axis=0)
    return z


def _top_indices(values: np.ndarray, top: int) -> np.ndarray:
    """(top, B) indices of each row's ``top`` largest entries of item-major ``values`` (B, K), largest
    first; the same sets as ``np.argpartition(-values, top - 1, axis=1)[:, :top]`` (any of tied values).

    Each row's ``top``-th largest value from ``np.partition`` (several times faster than
    ``argpartition`` on rows of a few hundred floats), then the entries at or above it; a row
    with a tie at that value (several classes with the same probability, e.g. classes without
    examples yet) falls back to ``argpartition``.
    """
    b, k = values.shape
    threshold = np.partition(values, k - top, axis=1)[:, k - top]
    items, classes = np.nonzero(values >= threshold[:, None])
    if len(classes) == b * top:
        idx = classes.reshape(b, top)
    else:
        counts = np.bincount(items, minlength=b)
        idx = np.empty((b, top), dtype=np.intp)
        exact = counts == top
        idx[exact] = classes[exact[items]].reshape(-1, top)
        tied = ~exact
        idx[tied] = np.argpartition(-values[tied], top - 1, axis=1)[:, :top]
    # Most probable first: the caller gives slot j the same normal draws for every item (common
    # random numbers), so each item's most probable class must sit in the same slot; in class
    # order BALD's ranking of the pool was far noisier (top-100 overlap with a 1,024-sample
    # estimate 29 of 100 on trec's 50 fine labels, against 60 in probability order).
    order = np.argsort(-np.take_along_axis(values, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1).T


# Items per block of the elementwise work after a chunk's product: the (classes x samples x
# items) arrays of _bald_antithetic then stay in the CPU's cache (17 x 16 x 1,000 float32 is
# 1.1 MB), which made BALD about a quarter faster than on whole chunks. Not a power of two: with
# rows 4 KiB apart, copying 150 class-major rows into the item-major probabilities hit the same
# cache sets over and over and took 5x longer (57 ms against 11 ms per 100k items, K = 150).
BALD_BLOCK = 1000


def _bald_of_moments(mean: np.ndarray, var: np.ndarray, proba: np.ndarray, rows: np.ndarray, eps: np.ndarray,
                     inv_t: np.float32, sd_scale: np.float32, top: int, *, multi_label: bool) -> np.ndarray:
    """BALD (B,) from class-major logit moments and predictive probabilities (K, B) (``rows``: the
    same probabilities item-major, (B, K)) and antithetic normal draws eps (top, S/2, 1)."""
    k, b = mean.shape
    if top >= k:
        centre = (mean * inv_t).astype(np.float32)
        sd = (np.sqrt(var) * sd_scale).astype(np.float32)
    else:
        if multi_label:
            # Labels are independent and BALD is their sum: the `top` labels each item is least
            # sure of carry nearly all of it (one near 0 or 1 adds almost nothing).
            idx = _top_indices(np.minimum(rows, 1.0 - rows), top)
        else:
            idx = _top_indices(rows, top)
        # Flat positions in the class-major (K, B) arrays: one cheap gather per array.
        flat = idx * b + np.arange(b)
        centre = (np.take(mean, flat) * inv_t).astype(np.float32)
        sd = (np.sqrt(np.take(var, flat)) * sd_scale).astype(np.float32)
        if not multi_label:
            # Each item's `top` most probable classes, plus one class standing for the rest, held at
            # a logit that gives it, against the kept classes' mean logits, its predictive share
            # (and no spread of its own).
            kept_mass = np.clip(np.take(proba, flat).sum(axis=0), 1e-30, 1.0)
            rest_mass = np.clip(1.0 - kept_mass, 1e-30, None)
            peak = centre.max(axis=0)
            lumped = np.log(np.exp(centre - peak).sum(axis=0)) + peak + np.log(rest_mass / kept_mass)
            centre = np.concatenate([centre, lumped[None].astype(np.float32)], axis=0)
            sd = np.concatenate([sd, np.zeros((1, b), np.float32)], axis=0)
            eps = np.concatenate([eps, np.zeros((1,) + eps.shape[1:], np.float32)], axis=0)
    out = np.empty(b)
    for start in range(0, b, BALD_BLOCK):
        part = slice(start, start + BALD_BLOCK)
        out[part] = _bald_antithetic(centre[:, part], sd[:, None, part] * eps, multi_label=multi_label)
    return out


DENSITY_NEIGHBOURS = 20
DENSITY_REFERENCE = 2000


def information_density(X: np.ndarray, *, neighbours: int = DENSITY_NEIGHBOURS, reference: int = DENSITY_REFERENCE,
                        rng: np.random.Generator | None = None, chunk_size: int = 2048) -> np.ndarray:
    """Per row, the mean cosine similarity to its `neighbours` nearest rows, clipped at 0.

    Exact (against every other row) up to `reference` rows; above that, against a uniform
    sample of `reference` rows, so the cost is N x reference instead of N^2. A row is never
    its own neighbour. Values lie in [0, 1]: high in dense regions, low for outliers.
    """
    unit = _unit(X)
    n = len(unit)
    if n < 2:
        return np.ones(n)
    if n <= reference:
        ref_idx = np.arange(n)
    else:
        ref_idx = np.sort((rng or np.random.default_rng(0)).choice(n, reference, replace=False))
    position = np.full(n, -1)
    position[ref_idx] = np.arange(len(ref_idx))
    ref = unit[ref_idx]
    k = min(neighbours, len(ref_idx) - 1)
    out = np.empty(n)
    for start in range(0, n, chunk_size):
        sims = unit[start : start + chunk_size] @ ref.T
        rows = np.arange(start, min(start + chunk_size, n))
        own = position[rows]
        mine = own >= 0
        sims[np.flatnonzero(mine), own[mine]] = -np.inf
        out[start : start + len(rows)] = np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
    return np.clip(out, 0.0, 1.0)


def _bald_antithetic(mean: np.ndarray, dev: np.ndarray, *, multi_label: bool) -> np.ndarray:
    """BALD (B,) from the logit samples mean ± dev; mean (K, B), dev (K, S/2, B), float32.

    Entropies come from log-sum-exp (H = log sum e^z - sum p z) rather than log(clip(p)),
    which is faster and keeps precision where p is tiny. "Total" uses the Monte Carlo mean of
    the same sampled probabilities, so by Jensen 0 <= BALD <= its entropy up to rounding,
    which the clip removes.
    """
    k, h, b = dev.shape
    z = np.empty((k, 2 * h, b), dtype=np.float32)
    np.add(mean[:, None, :], dev, out=z[:, :h])
    np.subtract(mean[:, None, :], dev, out=z[:, h:])
    if multi_label:
        a = np.abs(z)
        e = np.exp(-a)
        one_plus = 1.0 + e
        # Bernoulli entropy is symmetric in z: H = log(1 + e^-|z|) + |z| e^-|z| / (1 + e^-|z|).
        h_samples = (np.log1p(e) + a * e / one_plus).sum(axis=0)
        p_mean = (np.where(z >= 0, 1.0, e) / one_plus).mean(axis=1)
        total = -(_xlogx(p_mean) + _xlogx(1.0 - p_mean)).sum(axis=0)
    else:
        z -= z.max(axis=0)
        e = np.exp(z)
        s = e.sum(axis=0)
        z *= e
        h_samples = np.log(s) - z.sum(axis=0) / s
        e /= s
        total = -_xlogx(e.mean(axis=1)).sum(axis=0)
    total = total.astype(np.float64)
    return np.clip(total - h_samples.mean(axis=0), 0.0, total)


# ---- batch selection ---------------------------------------------------------------------
def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def select_batch(
    strategy: str,
    *,
    scores: np.ndarray,
    embeddings: np.ndarray,
    batch_size: int,
    diversity: bool | None = None,
    rng: np.random.Generator | None = None,
    candidates_per_item: int = 10,
    min_distance: float = 0.02,
) -> np.ndarray:
    """Indices (into ``scores``) of the next batch, best first.

    Without diversity: the top ``batch_size`` scores (ties broken at random). With diversity
    (default for strategies that ask for it): take the top ``candidates_per_item * batch_size``
    candidates, then pick greedily the candidate maximising score x (cosine distance to the
    nearest item already picked): a score-weighted farthest-first traversal. A near-duplicate
    of a picked item (cosine distance <= ``min_distance``) is never picked while anything
    else is left (the candidate set widens if needed), so several annotators labelling one
    batch do not see the same text twice.
    """
    rng = rng or np.random.default_rng()
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    k = min(batch_size, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if diversity is None:
        diversity = get_strategy(strategy).diversity
    # Random jitter far below any real score difference breaks ties randomly, not by index.
    jitter = rng.random(n) * 1e-12
    keyed = scores + jitter
    if not diversity:
        top = np.argpartition(-keyed, k - 1)[:k] if k < n else np.arange(n)
        return top[np.argsort(-keyed[top])].astype(np.int64)
    ranked = np.argsort(-keyed)
    m = min(n, max(k, candidates_per_item * k))
    while True:
        picked = _weighted_farthest_first(keyed[ranked[:m]], _unit(embeddings[ranked[:m]]), k, min_distance)
        # Too few distinct candidates (the top scores are all copies of a few texts): widen
        # the candidate set rather than hand annotators duplicates.
        if picked is not None or m == n:
            break
        m = min(n, m * 2)
    if picked is None:
        # Fewer distinct texts than the batch (the pool is nearly exhausted): take duplicates
        # rather than return a short batch.
        picked = _weighted_farthest_first(keyed[ranked[:m]], _unit(embeddings[ranked[:m]]), k, -np.inf)
    assert picked is not None
    return ranked[picked].astype(np.int64)


def _weighted_farthest_first(s: np.ndarray, E: np.ndarray, k: int, min_distance: float) -> np.ndarray | None:
    """Greedy picks maximising score x distance to the picked set; None if the pool runs out
    of items farther than ``min_distance`` from everything picked."""
    weight = s - s.min() + 1e-6 * (s.max() - s.min() + 1e-12)
    chosen = [0]
    min_dist = 1.0 - E @ E[0]
    min_dist[0] = -np.inf
    for _ in range(1, k):
        gain = weight * np.maximum(min_dist, 0.0)
        gain[~(min_dist > min_distance)] = -np.inf
        j = int(np.argmax(gain))
        if not np.isfinite(gain[j]):
            return None
        chosen.append(j)
        min_dist = np.minimum(min_dist, 1.0 - E @ E[j])
        min_dist[chosen] = -np.inf
    return np.array(chosen)


def select_seed(
    embeddings: np.ndarray,
    size: int,
    rng: np.random.Generator | None = None,
    *,
    max_points: int = 20_000,
    iterations: int = 15,
) -> np.ndarray:
    """A diverse, representative cold-start batch: the item nearest each k-means centroid.

    k-means (k = size, k-means++ start, cosine geometry) runs on a random subsample of at most
    ``max_points`` items so a 1M pool costs no more than a 20k one. Representative because
    centroids sit where the data is dense; diverse because each comes from its own cluster.
    """
    rng = rng or np.random.default_rng()
    n = embeddings.shape[0]
    size = min(size, n)
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    sub = rng.choice(n, size=min(n, max_points), replace=False) if n > max_points else np.arange(n)
    E = _unit(embeddings[sub])
    centers = _kmeans_pp(E, size, rng)
    for _ in range(iterations):
        assign = np.argmax(E @ centers.T, axis=1)
        new = np.zeros_like(centers)
        np.add.at(new, assign, E)
        empty = np.linalg.norm(new, axis=1) < 1e-12
        new[empty] = centers[empty]
        new = _unit(new)
        if np.allclose(new, centers, atol=1e-5):
            centers = new
            break
        centers = new
    sims = E @ centers.T
    chosen: list[int] = []
    taken = np.zeros(len(sub), dtype=bool)
    # Each centroid takes its nearest item not already taken (clusters of duplicates could
    # otherwise hand two centroids the same item).
    for c in np.argsort(-sims.max(axis=0)):
        order = np.argsort(-sims[:, c])
        for i in order[:64]:
            if not taken[i]:
                taken[i] = True
                chosen.append(int(i))
                break
        else:
            free = np.flatnonzero(~taken)
            i = int(free[np.argmax(sims[free, c])])
            taken[i] = True
            chosen.append(i)
    return sub[np.array(chosen)].astype(np.int64)


def _kmeans_pp(E: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = E.shape[0]
    centers = np.empty((k, E.shape[1]), dtype=E.dtype)
    centers[0] = E[rng.integers(n)]
    dist = np.maximum(1.0 - E @ centers[0], 0.0)
    for i in range(1, k):
        total = dist.sum()
        j = int(rng.choice(n, p=dist / total)) if total > 1e-12 else int(rng.integers(n))
        centers[i] = E[j]
        dist = np.minimum(dist, np.maximum(1.0 - E @ centers[i], 0.0))
    return centers
