"""Update latency: what a worker does after each batch of labels, by stage, against two peers.

Usage:
    .venv/bin/python benchmarks/update_latency.py [--runs 7] [--big-runs 3] [--labels 1000 10000]
        [--pools 10000 100000 1000000] [--blas-threads 1]

Data: synthetic Gaussian-mixture embeddings (dim 384, 8 classes, unit-normalised like the
sentence encoder's output), not real text: latency depends on shapes, not on content.

Each (labels, pool) row replays a labelling session: run r refits on N + 20 r labels, warm-started
from the model of run r - 1 (the app passes the previous ModelVersion's artifact), exactly as
``learning.actions.fit_and_score`` does, and times each stage:
  refit      bayes.fit(..., warm_start=previous)
  quality    quality.evaluate(..., posterior=model) + quality.calibrate(..., report=report): one
             5-fold cross-validation on <= 2,000 labels that gives the report and the calibration
  rescore    acquisition.score_pool (BALD, 16 antithetic posterior samples) + select_batch(20, diverse)
  refit + rescore  the issue's target (p95 <= 1 s for a 100k pool), summed per run
  full       all three (the database write of the scores is not included)
beside two peers timed in the same runs: the floor of one float32 matrix product X @ W over the
pool (W = 384 x 8) and a scikit-learn LogisticRegression refit on the same labels (lbfgs,
C = 1/lambda). p50/p95 are wall-clock over the runs (p95 of 3 runs is their maximum); "cpu"
is the process CPU time of the full update, which stays meaningful when other jobs share the
cores. The cold first fit (evidence search) is timed once per label count. BLAS runs with
--blas-threads threads (1, as the training job sets with threadpoolctl).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning import acquisition, bayes, quality  # noqa: E402

D, K = 384, 8
STEP = 20  # labels added between two updates


def mixture(n: int, rng: np.random.Generator, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, K, n)
    X = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 100_000):
        part = slice(start, min(n, start + 100_000))
        X[part] = centers[y[part]] + 0.06 * rng.standard_normal((len(y[part]), D), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def pair(values: list[float]) -> str:
    return f"{ms(values, 50):,.0f} / {ms(values, 95):,.0f}"


def update(
    X: np.ndarray, y: np.ndarray, previous: bayes.Posterior, pool: np.ndarray, seed: int
) -> tuple[bayes.Posterior, dict[str, float]]:
    """One model update as fit_and_score runs it; returns the model and seconds per stage."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    post = bayes.fit(X, y, n_classes=K, warm_start=previous)
    t1 = time.perf_counter()
    names = [f"c{k}" for k in range(K)]
    report = quality.evaluate(X, y, n_classes=K, label_names=names, multi_label=False, seed=seed, posterior=post)
    quality.calibrate(post, X, y, seed=seed, report=report)
    t2 = time.perf_counter()
    rng = np.random.default_rng(seed)
    scored = acquisition.score_pool(post, pool, strategy="bald_diversity", rng=rng)
    acquisition.select_batch("bald_diversity", scores=scored.scores, embeddings=pool, batch_size=20, rng=rng)
    t3 = time.perf_counter()
    return post, {"refit": t1 - t0, "quality": t2 - t1, "rescore": t3 - t2, "target": (t1 - t0) + (t3 - t2),
                  "full": t3 - t0,
                  "cpu": time.process_time() - cpu0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--big-runs", type=int, default=3, help="runs for pools of 1M items or more")
    parser.add_argument("--labels", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--pools", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--blas-threads", type=int, default=1)
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; BLAS threads {args.blas_threads}")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((K, D)).astype(np.float32) * 0.05
    pools = {n: mixture(n, rng, centers)[0] for n in args.pools}
    longest = max(args.runs, args.big_runs)
    header = ("| labels | pool | runs | refit p50 / p95 | rescore p50 / p95 | **refit + rescore p50 / p95** "
              "| quality p50 / p95 | full update p50 / p95 | full cpu p50 | floor X@W p50 | rescore / floor "
              "| sklearn LR refit p50 | refit / sklearn |")
    rows = [header, "|" + "---:|" * 13]
    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        for n_labels in args.labels:
            X, y = mixture(n_labels + STEP * longest, rng, centers)
            t = time.perf_counter()
            first = bayes.fit(X[: n_labels - STEP], y[: n_labels - STEP], n_classes=K)
            cold = time.perf_counter() - t
            print(f"labels {n_labels}: cold first fit (evidence search, {first.info['evidence_iterations']} MAPs) "
                  f"{cold * 1000:,.0f} ms, lambda {first.prior_precision:.2f}")
            for n_pool, P in pools.items():
                runs = args.big_runs if n_pool >= 1_000_000 else args.runs
                stages: dict[str, list[float]] = {}
                floor, sk = [], []
                previous = first
                for run in range(runs):
                    n = n_labels + STEP * run
                    W = np.ascontiguousarray(previous.raw_weights(previous.mean)[:-1].astype(np.float32))
                    t = time.perf_counter()
                    _ = P @ W
                    floor.append(time.perf_counter() - t)
                    previous, timing = update(X[:n], y[:n], previous, P, seed=run)
                    for key, value in timing.items():
                        stages.setdefault(key, []).append(value)
                    t = time.perf_counter()
                    LogisticRegression(C=1.0 / previous.prior_precision, max_iter=1000).fit(X[:n], y[:n])
                    sk.append(time.perf_counter() - t)
                rows.append(
                    f"| {n_labels:,} | {n_pool:,} | {runs} | {pair(stages['refit'])} | {pair(stages['rescore'])} "
                    f"| **{pair(stages['target'])}** | {pair(stages['quality'])} | {pair(stages['full'])} "
                    f"| {ms(stages['cpu'], 50):,.0f} "
                    f"| {ms(floor, 50):,.0f} | {np.median(stages['rescore']) / np.median(floor):.1f}x "
                    f"| {ms(sk, 50):,.0f} | {np.median(stages['refit']) / np.median(sk):.1f}x |"
                )
                print(rows[-1], flush=True)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("All times in ms.\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
