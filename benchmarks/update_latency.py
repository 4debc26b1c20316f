"""Update latency: what a worker does after each batch of labels, by number of classes K.

Usage:
    .venv/bin/python benchmarks/update_latency.py [--ks 2 8 64 150] [--real hwu64 trec_fine]
        [--labels 1000 10000] [--pools 100000 1000000] [--runs 5] [--big-runs 2]
        [--report-labels 2000] [--report-runs 3] [--blas-threads 1]

The critical path (``learning.actions.fit_and_score``): a warm refit, then the rescore of the
pool and the next diverse batch. Each (K, labels, pool) case replays a labelling session: run r
refits on N + 20 r labels warm-started from run r - 1's model, as the app does with the
previous ModelVersion's artifact, and times
  refit    bayes.fit(..., warm_start=previous) (+ carrying the previous calibration)
  rescore  acquisition.score_pool (the default strategy, BALD x density, density cached as the
           app caches it) + select_batch(20, diverse)
  refit + rescore  the target (p95 <= 0.5 s for a 100k pool, any K), summed per run
beside the floor of one float32 product X @ W over the pool (W = 384 x K). p50/p95 are
wall-clock over the runs (with 2-5 runs p95 is about the maximum), and the process CPU time of refit + rescore, which
stays meaningful when other jobs share the cores (wall time then grows, CPU time much less).
The cold first fit
(evidence search) is timed once per (K, labels).

The update after the labels grew by half since the prior precision was searched: before, the refit searched
again on the critical path; now it keeps lambda and the report job searches (``defer_search``,
``bayes.search_prior``). Timed at ``--report-labels`` labels, with lambda searched at 1/1.6 of them.

The quality report (``learning.actions.report_project``, off the critical path): one 5-fold
cross-validation on <= 2,000 labels at the model's prior precision plus the calibration
(quality.evaluate + quality.calibrate), timed at ``--report-labels`` labels for every K.

Data: synthetic Gaussian-mixture embeddings (dim 384, K classes, unit-normalised like the
sentence encoder's output) for ``--ks``, and for ``--real`` sets the real MiniLM embeddings of
../shared/data (labels: the first N rows of the set's capped train split with their real
labels, up to the split's size; pool: those embeddings resampled with replacement to the pool
size, plus a little noise so no two pool items are identical). Latency depends on shapes more
than content; the real sets check that it holds on real label distributions and curvature.

The last lines print the log-log slope of the p50 cost against K (synthetic cases): 1 would
mean cost proportional to K; the unavoidable part, the K N D product of the logits, is a
fraction of the total at small K, so a K-independent update shows a slope well below 1.
BLAS runs with one thread (``--blas-threads``), as the training job sets with threadpoolctl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from learning import acquisition, bayes, quality  # noqa: E402

D = 384
STEP = 20  # labels added between two updates


def mixture(n: int, rng: np.random.Generator, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = len(centers)
    y = rng.integers(0, k, n)
    X = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 100_000):
        part = slice(start, min(n, start + 100_000))
        X[part] = centers[y[part]] + 0.06 * rng.standard_normal((len(y[part]), D), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y


def real_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    import label_efficiency

    x_train, labels, _, _ = label_efficiency.embed(name)
    classes = {c: i for i, c in enumerate(sorted(set(labels)))}
    return x_train.astype(np.float32), np.array([classes[c] for c in labels])


def resampled_pool(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    pool = np.empty((n, X.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        pool[start:stop] = X[rng.integers(0, len(X), stop - start)]
        pool[start:stop] += 0.01 * rng.standard_normal((stop - start, X.shape[1]), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    return pool


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def pair(values: list[float]) -> str:
    return f"{ms(values, 50):,.0f} / {ms(values, 95):,.0f}"


def update(X: np.ndarray, y: np.ndarray, k: int, previous: bayes.Posterior, pool: np.ndarray, density: np.ndarray,
           seed: int) -> tuple[bayes.Posterior, dict[str, float]]:
    """One model update as fit_and_score runs it; returns the model and seconds per stage."""
    c0, t0 = time.process_time(), time.perf_counter()
    post = quality.carry_calibration(bayes.fit(X, y, n_classes=k, warm_start=previous, defer_search=True), previous)
    c1, t1 = time.process_time(), time.perf_counter()
    rng = np.random.default_rng(seed)
    strategy = acquisition.DEFAULT_STRATEGY
    scored = acquisition.score_pool(post, pool, strategy=strategy, rng=rng, density=density)
    acquisition.select_batch(strategy, scores=scored.scores, embeddings=pool, batch_size=20, rng=rng)
    c2, t2 = time.process_time(), time.perf_counter()
    return post, {"refit": t1 - t0, "rescore": t2 - t1, "target": t2 - t0, "refit_cpu": c1 - c0,
                  "rescore_cpu": c2 - c1, "target_cpu": c2 - c0}


def report_seconds(X: np.ndarray, y: np.ndarray, k: int, post: bayes.Posterior, seed: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the quality report job's numerical part."""
    c, t = time.process_time(), time.perf_counter()
    names = [f"c{i}" for i in range(k)]
    report = quality.evaluate(X, y, n_classes=k, label_names=names, multi_label=False, seed=seed, posterior=post)
    quality.calibrate(post, X, y, seed=seed, report=report)
    return time.perf_counter() - t, time.process_time() - c


def grown_refit(X: np.ndarray, y: np.ndarray, k: int, n: int) -> tuple[int, float, float, float, float]:
    """The update after the labels grew by 1.6x since lambda was searched: (searched at, CPU s of the refit that
    searches itself as updates did before, of the deferred refit updates make now, of the report job's search,
    relative difference of the two lambdas)."""
    n_s = int(n / 1.6)
    previous = bayes.fit(X[:n_s], y[:n_s], n_classes=k)
    c0 = time.process_time()
    inline = bayes.fit(X[:n], y[:n], n_classes=k, warm_start=previous)
    c1 = time.process_time()
    deferred = bayes.fit(X[:n], y[:n], n_classes=k, warm_start=previous, defer_search=True)
    c2 = time.process_time()
    lam = bayes.search_prior(X[:n], y[:n], n_classes=k, warm_start=deferred).prior_precision
    c3 = time.process_time()
    assert bayes.search_due(deferred) and not bayes.search_due(inline)
    return n_s, c1 - c0, c2 - c1, c3 - c2, abs(lam / inline.prior_precision - 1)


def slope(ks: list[int], values: list[float]) -> float:
    return float(np.polyfit(np.log(ks), np.log(values), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", type=int, nargs="*", default=[2, 8, 64, 150])
    parser.add_argument("--real", nargs="*", default=["hwu64", "trec_fine"])
    parser.add_argument("--labels", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--pools", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-runs", type=int, default=2, help="runs for pools of 1M items or more")
    parser.add_argument("--report-labels", type=int, default=2000)
    parser.add_argument("--report-runs", type=int, default=3)
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (1, as the training job sets with threadpoolctl)")
    args = parser.parse_args()

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; BLAS threads 1", flush=True)
    rng = np.random.default_rng(0)
    header = ("| data | K | labels | pool | runs | cold fit | refit p50 / p95 | rescore p50 / p95 "
              "| **refit + rescore p50 / p95** | refit + rescore CPU p50 / p95 | floor X@W p50 |")
    rows = [header, "|---|" + "---:|" * 10]
    medians: dict[tuple[int, int], dict[int, float]] = {}
    reports: dict[str, tuple[int, list[tuple[float, float]]]] = {}
    grown: list[str] = []
    cases: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None]] = []
    for k in args.ks:
        centers = rng.standard_normal((k, D)).astype(np.float32) * 0.05
        X, y = mixture(max(*args.labels, args.report_labels) + STEP * max(args.runs, args.big_runs), rng, centers)
        cases.append(("synthetic", k, X, y, centers))
    for name in args.real or []:
        X, y = real_set(name)
        cases.append((name, int(y.max()) + 1, X, y, None))
    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        for data, k, X, y, centers in cases:
            for n_pool in args.pools:
                if centers is not None:
                    pool = mixture(n_pool, np.random.default_rng(n_pool + k), centers)[0]
                else:
                    pool = resampled_pool(X, n_pool, np.random.default_rng(n_pool))
                density = np.random.default_rng(1).uniform(0.2, 0.8, n_pool)  # cached per project in the app
                W = np.ascontiguousarray(np.random.default_rng(2).standard_normal((D, k)), dtype=np.float32)
                for n_labels in args.labels:
                    runs = args.big_runs if n_pool >= 1_000_000 else args.runs
                    n0 = min(n_labels, len(y) - STEP * runs)
                    t = time.perf_counter()
                    previous = bayes.fit(X[: n0 - STEP], y[: n0 - STEP], n_classes=k)
                    cold = time.perf_counter() - t
                    stages: dict[str, list[float]] = {}
                    floor = []
                    for run in range(runs):
                        n = n0 + STEP * run
                        t = time.perf_counter()
                        _ = pool @ W
                        floor.append(time.perf_counter() - t)
                        previous, timing = update(X[:n], y[:n], k, previous, pool, density, seed=run)
                        for key, value in timing.items():
                            stages.setdefault(key, []).append(value)
                    if data == "synthetic":
                        medians.setdefault((n_labels, n_pool), {})[k] = float(np.median(stages["target_cpu"]))
                    rows.append(
                        f"| {data} | {k} | {n0:,} | {n_pool:,} | {runs} | {cold * 1000:,.0f} | {pair(stages['refit'])} "
                        f"| {pair(stages['rescore'])} | **{pair(stages['target'])}** | {pair(stages['target_cpu'])} "
                        f"| {ms(floor, 50):,.0f} |"
                    )
                    print(rows[-1], flush=True)
                del pool
            n_report = min(args.report_labels, len(y))
            post = bayes.fit(X[:n_report], y[:n_report], n_classes=k)
            times = [report_seconds(X[:n_report], y[:n_report], k, post, seed) for seed in range(args.report_runs)]
            reports[f"{data} K={k}"] = (n_report, times)
            print(f"quality report, {data} K={k}, {n_report:,} labels: {pair([t for t, _ in times])} ms "
                  f"(CPU {pair([c for _, c in times])})", flush=True)
            n_s, inline, deferred, search, gap = grown_refit(X, y, k, n_report)
            grown.append(f"| {data} | {k} | {n_report:,} ({n_s:,}) | {inline * 1000:,.0f} | **{deferred * 1000:,.0f}** "
                         f"| {search * 1000:,.0f} | {gap:.1e} |")
            print(grown[-1], flush=True)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("All times in ms.\n" + "\n".join(rows))
    print("\n| quality report (5-fold CV + calibration) | labels | p50 / p95 | CPU p50 / p95 |\n|---|---:|---:|---:|")
    for name, (n_report, times) in reports.items():
        print(f"| {name} | {n_report:,} | {pair([t for t, _ in times])} | {pair([c for _, c in times])} |")
    print("\nThe update after the labels grew by 1.6x, CPU ms:\n| data | K | labels (searched at) "
          "| refit that searches (before) | **deferred refit (now)** | search in the report job | lambda gap |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(grown))
    ks = [k for k in args.ks]
    print("\nlog-log slope of refit + rescore CPU p50 against K (synthetic):")
    for (n_labels, n_pool), by_k in medians.items() if len(ks) > 1 else ():
        print(f"  {n_labels:,} labels, pool {n_pool:,}: {slope(ks, [by_k[k] for k in ks]):.2f} "
              f"({', '.join(f'K={k} {by_k[k] * 1000:,.0f} ms' for k in ks)})")
    synthetic = [(int(name.split("=")[1]), float(np.median([c for _, c in t]))) for name, (_, t) in reports.items()
                 if name.startswith("synthetic")]
    if len(synthetic) > 1:
        print(f"  quality report: {slope([k for k, _ in synthetic], [v for _, v in synthetic]):.2f}")


if __name__ == "__main__":
    main()
