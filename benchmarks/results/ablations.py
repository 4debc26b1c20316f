"""Exploratory ablations behind the "Why" notes of the README's label-efficiency section.

Not part of the benchmark: each variant patches the library at run time to try one idea on
the harness (learning.simulation.run_strategy, 3 repeats, budget 1000) and appends its mean
curve to benchmarks/results/ablations.jsonl. It reads random's target from the benchmark's own
output, so run label_efficiency.py on the set first:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/results/ablations.py it_service_tickets \
        s:bald_density_diversity,s:margin_diversity,evgrid,s:random+evgrid

A variant is "+"-joined parts on top of bald_diversity, seed 50, batch 20:
  s:<strategy>   another strategy, including two defined here:
                 margin_diversity (margin scores, bald_diversity's batch) and
                 bald_density[_diversity] (BALD x information density: mean cosine similarity
                 to the 20 nearest pool items, Settles & Craven 2008; no exponent, no tuning)
  b<n>, seed<n>  batch size, seed size
  c<n>           select_batch's candidates_per_item (default 10)
  randseed       a random seed set instead of the k-means one
  evgrid         bayes.fit's prior-precision search replaced by the best log evidence over
                 lambda in {1, 3, 10, ..., 1000}, searched at the same label counts
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import label_efficiency as le  # noqa: E402

from learning import acquisition, bayes, simulation  # noqa: E402

GRID = [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]


def main(name: str, variants: list[str], repeats: int = 3) -> None:
    target = json.loads((le.OUT / f"label_efficiency-{name}.json").read_text())["strategies"]["random"]["summary"][
        "target_macro_f1"
    ]
    x, train_labels, x_test, test_labels = le.embed(name)
    classes = sorted(set(train_labels))
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([label in index for label in test_labels])
    y = np.array([index[c] for c in train_labels])
    y_test = np.array([index[c] for c, k in zip(test_labels, keep, strict=True) if k])
    x_test = x_test[keep]

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    density = np.empty(len(unit))
    for start in range(0, len(unit), 1000):
        sims = unit[start : start + 1000] @ unit.T
        density[start : start + 1000] = -np.sort(-sims, axis=1)[:, 1:21].mean(axis=1)
    row_of = {x[i].tobytes(): i for i in range(len(x))}

    def margin_score(p: np.ndarray, s: np.ndarray | None, r: np.random.Generator, ml: bool) -> np.ndarray:
        return acquisition.margin(p, multi_label=ml)

    strategies = acquisition.STRATEGIES
    # bald_density* are scored by density_score_pool below; the registry entry only says that
    # they need samples and whether to diversify (its score function is never called).
    strategies["margin_diversity"] = acquisition.Strategy("margin_diversity", False, True, margin_score)
    strategies["bald_density"] = acquisition.Strategy("bald_density", True, False, margin_score)
    strategies["bald_density_diversity"] = acquisition.Strategy("bald_density_diversity", True, True, margin_score)
    score_pool, select_batch, select_seed, fit = (
        acquisition.score_pool,
        acquisition.select_batch,
        acquisition.select_seed,
        bayes.fit,
    )

    def density_score_pool(posterior, X, *, strategy=acquisition.DEFAULT_STRATEGY, **kw):  # type: ignore[no-untyped-def]
        if not strategy.startswith("bald_density"):
            return score_pool(posterior, X, strategy=strategy, **kw)
        out = score_pool(posterior, X, strategy="bald", **kw)
        out.scores = out.scores * density[[row_of[r.tobytes()] for r in X]]
        return out

    searched: dict[str, float] = {}

    def grid_fit(X, labels, *, n_classes, prior_precision=None, warm_start=None, **kw):  # type: ignore[no-untyped-def]
        if prior_precision is not None:
            return fit(X, labels, n_classes=n_classes, prior_precision=prior_precision, warm_start=warm_start, **kw)
        n = len(labels)
        if warm_start is None or not searched or n >= bayes.SEARCH_GROWTH * searched["at"]:
            fits = [fit(X, labels, n_classes=n_classes, prior_precision=lam, warm_start=warm_start) for lam in GRID]
            best = max(fits, key=lambda q: q.log_evidence)
            searched.update(lam=best.prior_precision, at=n)
            return best
        return fit(X, labels, n_classes=n_classes, prior_precision=searched["lam"], warm_start=warm_start)

    def random_seed(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(X.shape[0], size=k, replace=False)

    acquisition.score_pool = density_score_pool
    print(f"[{name}] target (LabelHub random @ 1000) {target:.3f}", flush=True)
    for variant in variants:
        strategy, batch, seed_size, per_item, is_random_seed, is_grid = "bald_diversity", 20, 50, 10, False, False
        for part in variant.split("+"):
            if part.startswith("s:"):
                strategy = part[2:]
            elif part.startswith("seed"):
                seed_size = int(part[4:])
            elif part.startswith("b"):
                batch = int(part[1:])
            elif part.startswith("c"):
                per_item = int(part[1:])
            elif part == "randseed":
                is_random_seed = True
            elif part == "evgrid":
                is_grid = True
        acquisition.select_batch = functools.partial(select_batch, candidates_per_item=per_item)
        acquisition.select_seed = random_seed if is_random_seed else select_seed  # type: ignore[assignment]
        bayes.fit = grid_fit if is_grid else fit
        started = time.perf_counter()
        curves = []
        for seed in range(repeats):
            searched.clear()
            points = simulation.run_strategy(
                strategy, X_train=x, y_train=y, X_test=x_test, y_test=y_test, n_classes=len(classes),
                seed_size=seed_size, batch_size=batch, budget=1000, seed=seed,
            )  # fmt: skip
            curves.append([p["macro_f1"] for p in points])
        n_labels = np.array([p["n_labels"] for p in points])
        curve = np.mean(curves, axis=0)
        hits = np.flatnonzero(curve >= target - 1e-12)
        record = {
            "set": name,
            "variant": variant,
            "target": round(float(target), 4),
            "reached": int(n_labels[hits[0]]) if hits.size else None,
            "f1_at_333": round(float(np.interp(333, n_labels, curve)), 4),
            "f1_at_1000": round(float(curve[-1]), 4),
            "seconds": round(time.perf_counter() - started, 1),
            "n_labels": n_labels.tolist(),
            "macro_f1": [round(float(v), 4) for v in curve],
        }
        print(json.dumps({k: v for k, v in record.items() if k not in ("n_labels", "macro_f1")}), flush=True)
        with (Path(__file__).parent / "ablations.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), *(int(a) for a in sys.argv[3:4]))
