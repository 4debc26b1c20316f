"""Finder variants measured against the app's finder on a second draw of the issue-15 grid (seventh session).

Usage (from the repository root; one process per set, N and repeat, as run_grid.sh runs the benchmark):
    .venv/bin/python benchmarks/results/issue15/variants.py SET N SEED REPEAT [VARIANT ...]
    .venv/bin/python benchmarks/results/issue15/variants.py --summary benchmarks/results/issue15/variants/*.json

Same rows, flips and folds as ``mislabel_bench.py --seed SEED --only-repeat REPEAT`` (its functions, its seeds),
all six settings (uniform/confusable x 0.05/0.10/0.20); writes precision@k of each variant and of both cleanlab
pipelines to benchmarks/results/issue15/variants/SET-N-sSEED-rREPEAT.json. ``current`` is the app's finder
(``mislabels.analyse_in``). Variants (all kept out of the app: none was better; benchmarks/README.md):

- ``one_pass``: the first pass alone (no refit without the flags).
- ``lr_mean_final`` / ``lr_mean_both`` / ``lr_mean_exclusions`` / ``lr_geo_final``: our probabilities averaged
  (arithmetic or geometric) with the out-of-fold probabilities of cleanlab's default logistic regression, in the
  final ranking, in both passes, or only to choose the second pass's exclusions.
- ``stack_final`` / ``stack_final_w1`` / ``stack_both``: a weighted average with the logistic regression (its own
  second pass with the same exclusions), the weight chosen on a grid of 0.0-1.0 by the log-likelihood of the
  given labels (on the kept items, or the first pass's weight).
- ``two_splits``: second-pass probabilities averaged over two fold splits; ``pass_mean``: first and second pass
  averaged.
- ``prior_xS`` (S in 1/150, 1/16, 1/4, 4, 16) and ``..._unmoderated``: both passes at S times the finder's prior
  precision (1/150 is about the logistic regression's C = 1 on ag_news), with or without the posterior variance in
  the predictive (``prior_x1_unmoderated`` is the app's finder without it).
"""
from __future__ import annotations

import copy
import json
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mislabel_bench as mb  # noqa: E402

from learning import bayes, metrics, mislabels, quality  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "issue15" / "variants"
SCALES = (1 / 150, 1 / 16, 0.25, 4.0, 16.0)


def lr_second_pass(x: np.ndarray, y: np.ndarray, k: int, seed: int, excluded: np.ndarray) -> np.ndarray:
    """The logistic regression out of fold on the kept items, fitted on them for the excluded ones."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    keep = ~excluded
    out = np.empty((len(y), k))
    out[keep] = mb.cleanlab_default_proba(x[keep], y[keep], k, seed)
    if excluded.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(max_iter=1000).fit(x[keep], y[keep])
        full = np.zeros((int(excluded.sum()), k))
        full[:, model.classes_] = model.predict_proba(x[excluded])
        out[excluded] = full
    return out


def best_weight(a: np.ndarray, b: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> float:
    rows = np.arange(len(y)) if rows is None else rows
    grid = np.linspace(0.0, 1.0, 11)
    likelihood = [np.mean(np.log(np.clip(w * a[rows, y[rows]] + (1 - w) * b[rows, y[rows]], 1e-12, 1)))
                  for w in grid]
    return float(grid[int(np.argmax(likelihood))])


def two_passes(x: np.ndarray, y: np.ndarray, k: int, posterior: bayes.Posterior, seed: int, scale: float,
               moderated: bool) -> np.ndarray:
    """The finder's two passes at ``scale`` times its prior precision; the second pass's probabilities.

    ``mislabels.out_of_fold_proba`` then ``second_pass_proba`` on the scaled posterior, written out because those
    always apply the fitted variance scale and the unmoderated variants set it to 0 (at scale 1, moderated, this
    gives ``current``'s figures exactly: checked on all 24 settings it ran on)."""
    posterior = copy.copy(posterior)
    posterior.prior_precision *= scale
    mod = 1.0 if moderated else 0.0

    def oof(X: np.ndarray, Y: np.ndarray, s: int) -> tuple[np.ndarray, float, float]:
        logits = metrics.out_of_fold_logits(X, Y, n_classes=k, folds=quality.FOLDS, rng=np.random.default_rng(s),
                                            prior_precision=posterior.prior_precision, warm_start=posterior,
                                            bias_feature=mislabels.FINDER_BIAS_FEATURE)
        assert logits is not None
        t, c = metrics.fit_out_of_fold_calibration(logits, Y)
        return logits.proba(t, c * mod), t, c

    first = mislabels.analyse(oof(x, y, seed)[0], y)
    excluded = mislabels.second_pass_exclusions(first.flagged, first.scores)
    keep = ~excluded
    kept, t, c = oof(x[keep], y[keep], seed + 1)
    proba = np.empty((len(y), k))
    proba[keep] = kept
    model = bayes.fit(x[keep], y[keep], n_classes=k, prior_precision=posterior.prior_precision, warm_start=posterior,
                      bias_feature=mislabels.FINDER_BIAS_FEATURE)
    model.temperature, model.variance_scale = t, c * mod
    proba[excluded] = model.predict_proba(x[excluded])
    return proba


def variants(x: np.ndarray, y: np.ndarray, k: int, posterior: bayes.Posterior, proba: np.ndarray, seed: int,
             lr: np.ndarray, wanted: set[str] | None) -> dict[str, mislabels.Analysis]:
    def want(name: str) -> bool:
        return wanted is None or name in wanted

    out = {}
    first = mislabels.analyse(proba, y)
    excluded = mislabels.second_pass_exclusions(first.flagged, first.scores)
    p2 = mislabels.second_pass_proba(x, y, excluded, n_classes=k, posterior=posterior, seed=seed + 1)
    assert p2 is not None
    out["current"] = mislabels.analyse(p2, y)
    out["one_pass"] = first
    if want("lr_mean_final"):
        out["lr_mean_final"] = mislabels.analyse(0.5 * (p2 + lr), y)
    if want("lr_geo_final"):
        g = np.sqrt(np.clip(p2, 1e-12, 1) * np.clip(lr, 1e-12, 1))
        out["lr_geo_final"] = mislabels.analyse(g / g.sum(axis=1, keepdims=True), y)
    if want("lr_mean_both") or want("lr_mean_exclusions"):
        f = mislabels.analyse(0.5 * (proba + lr), y)
        p2e = mislabels.second_pass_proba(x, y, mislabels.second_pass_exclusions(f.flagged, f.scores), n_classes=k,
                                          posterior=posterior, seed=seed + 1)
        assert p2e is not None
        out["lr_mean_both"] = mislabels.analyse(0.5 * (p2e + lr), y)
        out["lr_mean_exclusions"] = mislabels.analyse(p2e, y)
    if want("two_splits"):
        p2b = mislabels.second_pass_proba(x, y, excluded, n_classes=k, posterior=posterior, seed=seed + 2)
        assert p2b is not None
        out["two_splits"] = mislabels.analyse(0.5 * (p2 + p2b), y)
    if want("pass_mean"):
        out["pass_mean"] = mislabels.analyse(0.5 * (p2 + proba), y)
    if want("stack_final") or want("stack_final_w1") or want("stack_both"):
        w1 = best_weight(proba, lr, y)
        l2 = lr_second_pass(x, y, k, seed + 1, excluded)
        w2 = best_weight(p2, l2, y, np.flatnonzero(~excluded))
        out["stack_final"] = mislabels.analyse(w2 * p2 + (1 - w2) * l2, y)
        out["stack_final_w1"] = mislabels.analyse(w1 * p2 + (1 - w1) * l2, y)
        f = mislabels.analyse(w1 * proba + (1 - w1) * lr, y)
        ex = mislabels.second_pass_exclusions(f.flagged, f.scores)
        p2s = mislabels.second_pass_proba(x, y, ex, n_classes=k, posterior=posterior, seed=seed + 1)
        assert p2s is not None
        l2s = lr_second_pass(x, y, k, seed + 1, ex)
        w = best_weight(p2s, l2s, y, np.flatnonzero(~ex))
        out["stack_both"] = mislabels.analyse(w * p2s + (1 - w) * l2s, y)
    for scale in (*SCALES, 1.0):
        for moderated in (True, False):
            name = f"prior_x{scale:.3g}" + ("" if moderated else "_unmoderated")
            if (scale != 1.0 or not moderated) and want(name):
                out[name] = mislabels.analyse(two_passes(x, y, k, posterior, seed, scale, moderated), y)
    return out


def run(name: str, n_labels: int, seed: int, repeat: int, wanted: set[str] | None) -> None:
    from threadpoolctl import threadpool_limits

    data = mb.ROOT.parent / "shared" / "data" / name
    train_texts, train_labels = mb.capped(*mb.read_csv(data / "train.csv"), mb.MAX_TRAIN, seed=0)
    test_texts, test_labels = mb.capped(*mb.read_csv(data / "test.csv"), mb.MAX_TEST, seed=1)
    n = min(n_labels, len(train_texts))
    sample = np.sort(np.random.default_rng(mb._seed(seed, repeat, "sample")).choice(len(train_texts), size=n,
                                                                                    replace=False))
    rows = []
    with threadpool_limits(1):
        embed = mb.cache_embedder()
        x = np.asarray(embed([train_texts[i] for i in sample]), dtype=np.float32)
        x_test_all = np.asarray(embed(test_texts), dtype=np.float32)
        pool_labels = np.array(train_labels)
        classes = sorted(set(pool_labels[sample].tolist()))
        index = {c: i for i, c in enumerate(classes)}
        k = len(classes)
        truth = np.array([index[c] for c in pool_labels[sample]])
        keep_test = np.array([label in index for label in test_labels])
        y_test = np.array([index[label] for label in np.array(test_labels)[keep_test]])
        targets = mb.confusable_targets(bayes.fit(x, truth, n_classes=k), x_test_all[keep_test], y_test, x, truth, k)
        for kind in ("uniform", "confusable"):
            for rate in (0.05, 0.1, 0.2):
                noisy, flipped = mb.inject(truth, rate, kind, k, targets,
                                           np.random.default_rng(mb._seed(seed, repeat, kind, rate)))
                folds = mb._seed(seed, repeat, kind, rate, "folds")
                posterior = mislabels.finder_posterior(x, noisy, n_classes=k,
                                                       posterior=bayes.fit(x, noisy, n_classes=k))
                assert posterior is not None
                proba = mislabels.out_of_fold_proba(x, noisy, n_classes=k, posterior=posterior, seed=folds)
                assert proba is not None
                lr = mb.cleanlab_default_proba(x, noisy, k, folds)
                found = {v: mb.score_ranking(a.ranking(), a.flagged, flipped)["precision_at_k"]
                         for v, a in variants(x, noisy, k, posterior, proba, folds, lr, wanted).items()}
                found["cl_same"] = mb.score_ranking(*mb.cleanlab_ranking(noisy, proba), flipped)["precision_at_k"]
                found["cl_default"] = mb.score_ranking(*mb.cleanlab_ranking(noisy, lr), flipped)["precision_at_k"]
                rows.append({"set": name, "n": n, "seed": seed, "rep": repeat, "kind": kind, "rate": rate, **found})
                print(name, n, kind, rate, {v: round(p, 3) for v, p in found.items()}, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}-{n_labels}-s{seed}-r{repeat}.json").write_text(json.dumps(rows) + "\n")


def summary(paths: list[str]) -> None:
    """Per variant: settings where its mean precision@k (over repeats) is at least both cleanlab pipelines'."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            groups[(row["set"], row["n"], row["kind"], row["rate"])].append(row)
    names = sorted({k for rows in groups.values() for r in rows for k in r} - {"set", "n", "seed", "rep", "kind",
                                                                                "rate", "cl_same", "cl_default"})
    print("| variant | settings | at least both cleanlab pipelines | mean margin | worst margin "
          "| current on the same settings |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in ["current", *[v for v in names if v != "current"]]:
        margins, current = [], []
        for rows in groups.values():
            if all(v in r for r in rows):
                bar = max(np.mean([r["cl_same"] for r in rows]), np.mean([r["cl_default"] for r in rows]))
                margins.append(np.mean([r[v] for r in rows]) - bar)
                current.append(np.mean([r["current"] for r in rows]) - bar)
        if margins:
            wins = sum(m >= -1e-9 for m in margins)
            print(f"| {v} | {len(margins)} | {wins} | {np.mean(margins):+.4f} | {np.min(margins):+.4f} "
                  f"| {sum(m >= -1e-9 for m in current)}, {np.mean(current):+.4f} |")


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary(sys.argv[2:])
    else:
        run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), set(sys.argv[5:]) or None)
