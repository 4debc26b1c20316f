"""Update latency: Bayesian refit + pool rescoring (predictive probs + BALD + diverse batch).

Usage: .venv/bin/python benchmarks/update_latency.py [--runs 7] [--pools 10000 100000 1000000]

Data: synthetic Gaussian-mixture embeddings (dim 384, 8 classes, unit-normalised like the
sentence encoder's output), not real text: latency depends on shapes, not on content.
For each (labels, pool) it prints p50/p95 over --runs runs of
  refit            bayes.fit with the evidence search warm-started at the previous lambda (what a
                   worker does after each saved annotation), no CV calibration (kept from the
                   last live-quality job)
  rescore          acquisition.score_pool (BALD, 32 posterior samples) + select_batch(20, diverse)
beside two peers measured in the same run: the floor of one matmul X @ W over the pool
(float32, W = 384 x 8) and a scikit-learn LogisticRegression refit on the same labels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning import acquisition, bayes  # noqa: E402

D, K = 384, 8


def mixture(n: int, rng: np.random.Generator, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, K, n)
    X = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 100_000):
        part = slice(start, min(n, start + 100_000))
        X[part] = centers[y[part]] + 0.06 * rng.standard_normal((len(y[part]), D), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y


def pct(values: list[float]) -> str:
    return f"p50 {np.percentile(values, 50) * 1000:7.1f} ms  p95 {np.percentile(values, 95) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--labels", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--pools", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((K, D)).astype(np.float32) * 0.05
    pools = {n: mixture(n, rng, centers)[0] for n in args.pools}
    print(f"synthetic Gaussian mixture, dim {D}, {K} classes; {args.runs} runs each\n")
    for n_labels in args.labels:
        X, y = mixture(n_labels, rng, centers)
        first = bayes.fit(X, y, n_classes=K)  # cold fit: full evidence search
        lam = first.prior_precision
        fits, sk = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            post = bayes.fit(X, y, n_classes=K, init_prior_precision=lam)
            fits.append(time.perf_counter() - t)
            t = time.perf_counter()
            LogisticRegression(C=1.0 / lam, max_iter=1000).fit(X, y)
            sk.append(time.perf_counter() - t)
        print(f"labels {n_labels:>6}: refit {pct(fits)}   | sklearn LogisticRegression refit {pct(sk)}   ratio p50 {np.median(fits) / np.median(sk):.2f}x")
        for n_pool, P in pools.items():
            rescore, total, floor = [], [], []
            W = np.ascontiguousarray(post.mean[:-1].astype(np.float32))
            for run in range(args.runs):
                t = time.perf_counter()
                _ = P @ W
                floor.append(time.perf_counter() - t)
                t0 = time.perf_counter()
                post = bayes.fit(X, y, n_classes=K, init_prior_precision=lam)
                t1 = time.perf_counter()
                scored = acquisition.score_pool(post, P, strategy="bald_diversity", rng=np.random.default_rng(run))
                acquisition.select_batch("bald_diversity", scores=scored.scores, embeddings=P, batch_size=20, rng=np.random.default_rng(run))
                t2 = time.perf_counter()
                rescore.append(t2 - t1)
                total.append(t2 - t0)
            print(
                f"  pool {n_pool:>9}: refit+rescore {pct(total)}  (rescore alone {pct(rescore)})  "
                f"| floor X@W {pct(floor)}  ratio p50 {np.median(total) / np.median(floor):.0f}x"
            )


if __name__ == "__main__":
    main()
