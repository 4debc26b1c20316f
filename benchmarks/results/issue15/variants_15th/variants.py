"""Variants of our finder's flag selection and second pass on one (set, N, repeat) of the issue-15 grid.

Usage (from the repository root; the grid's JSON for that set, N and repeat must exist, for cleanlab's figures):
    OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python \
        benchmarks/results/issue15/variants_15th/variants.py SET N REPEAT VARIANT[,VARIANT...] OUT.json

Same rows, flips, folds and first-pass probabilities as ``mislabel_bench.py`` (the ``two`` variant reproduces the
grid's ``labelhub`` precision@k); cleanlab's precision@k is read from benchmarks/results/issue15/SET-N-rREPEAT.json.
Variants (precision@k, k = number of flips):
- ``two``: the product (first pass, second pass without the top half of the first pass's flags).
- ``one``: first pass only.
- ``avgproba``: analyse the mean of the first and second pass's probabilities.
- ``avgscore``: second pass's flags, ranked by the mean of both passes' scores; ``avgunion``: the same with the
  union of both passes' flags.
- ``foldsx``: second pass whose left-out items are predicted by one of the kept items' fold models (same scale
  as the kept items' out-of-fold probabilities) instead of one model fitted on all kept items.
- ``cell``: cleanlab's ``prune_by_noise_rate`` selection in both passes: for each off-diagonal cell (i, j) of the
  calibrated confident joint, its count of the items labelled i with the largest p_j - p_i (instead of each class's
  off-diagonal total by self-confidence); ranked by self-confidence.
- ``cellunion``: the union of the product's flags and ``cell``'s, in both passes; ``cellfirst``: ``cell``'s flags
  choose the first pass's left-out items, the product's selection the final flags.
- ``cellrow``: per given class, ``cell``'s selection where one cell holds at least half of the class's expected
  issues (noise concentrated on one other class), the product's otherwise; both passes.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import mislabel_bench as mb  # noqa: E402

from learning import bayes, metrics, mislabels, quality  # noqa: E402


def second_pass_folds(X, y, excl, n_classes, posterior, seed):
    keep = ~excl
    rng = np.random.default_rng(seed)
    kept = np.flatnonzero(keep)
    assign = np.full(len(y), -1)
    assign[kept] = metrics.stratified_folds(y[kept], quality.FOLDS, rng)
    assign[excl] = rng.integers(0, quality.FOLDS, size=int(excl.sum()))
    mu = np.zeros((len(y), n_classes))
    var = np.zeros((len(y), n_classes))
    for f in range(quality.FOLDS):
        train = keep & (assign != f)
        post = bayes.fit(X[train], y[train], n_classes=n_classes, prior_precision=posterior.prior_precision,
                         warm_start=posterior, bias_feature=mislabels.FINDER_BIAS_FEATURE)
        held = assign == f
        mu[held], var[held] = post.logit_mean_var(X[held])
    ones = np.ones(len(y), dtype=bool)
    oof = metrics.OutOfFold(mu=mu[keep], var=var[keep], fitted=ones[keep], fallback=np.zeros((keep.sum(), n_classes)),
                            multi_label=False)
    full = metrics.OutOfFold(mu=mu, var=var, fitted=ones, fallback=np.zeros((len(y), n_classes)), multi_label=False)
    return full.proba(*metrics.fit_out_of_fold_calibration(oof, y[keep]))


def analyse_cell(proba, given, union=False, by_row=False):
    """``mislabels.analyse`` with cleanlab's per-cell, by-margin selection (``union``: or the product's flags;
    ``by_row``: only in the classes whose expected issues are mostly in one cell, the product's flags elsewhere)."""
    base = mislabels.analyse(proba, given)
    proba = np.clip(np.asarray(proba, dtype=np.float64), mislabels.EPS, 1.0)
    k = proba.shape[1]
    counts = np.bincount(given, minlength=k).astype(np.float64)
    joint = base.confident_joint
    row_sums = joint.sum(axis=1).astype(np.float64)
    expected = np.rint(joint * np.divide(counts, row_sums, out=np.zeros(k), where=row_sums > 0)[:, None]).astype(int)
    np.fill_diagonal(expected, 0)
    flagged = np.zeros(len(given), dtype=bool)
    rows = np.ones(k, dtype=bool)
    if by_row:
        rows = (expected.max(axis=1) * 2 >= expected.sum(axis=1)) & (expected.sum(axis=1) > 0)
        flagged |= base.flagged & ~rows[given]
    for cls, other in zip(*np.nonzero(expected * rows[:, None]), strict=True):
        members = np.flatnonzero(given == cls)
        margin = proba[members, other] - proba[members, cls]
        flagged[members[np.argsort(-margin, kind="stable")[: expected[cls, other]]]] = True
    flagged &= proba.argmax(axis=1) != given
    if union:
        flagged |= base.flagged
    return mislabels.Analysis(scores=base.scores, flagged=flagged, predicted=base.predicted,
                              thresholds=base.thresholds, confident_joint=joint)


def two_passes(x, noisy, proba, k, finder, seed, select):
    """The finder's two passes with ``select`` (an ``analyse``-like function) in both: (second-pass probabilities,
    the second pass's analysis)."""
    excluded = select(proba, noisy)
    excluded = mislabels.second_pass_exclusions(excluded.flagged, excluded.scores)
    again = mislabels.second_pass_proba(x, noisy, excluded, n_classes=k, posterior=finder, seed=seed + 1)
    return again, select(again, noisy)


def main(name: str, n: int, repeat: int, variants: list[str], out: Path) -> None:
    data = Path(os.environ.get("LABELHUB_DATA_DIR", ROOT.parent / "shared" / "data")) / name
    stored = json.loads((ROOT / f"benchmarks/results/issue15/{name}-{n}-r{repeat}.json").read_text())["results"]
    texts, labels = mb.capped(*mb.read_csv(data / "train.csv"), mb.MAX_TRAIN, seed=0)
    test_texts, test_labels = mb.capped(*mb.read_csv(data / "test.csv"), mb.MAX_TEST, seed=1)
    embed = mb.cache_embedder()
    n = min(n, len(texts))
    pool = np.array(labels)
    sample = np.sort(np.random.default_rng(mb._seed(0, repeat, "sample")).choice(len(texts), size=n, replace=False))
    x = np.asarray(embed([texts[i] for i in sample]), dtype=np.float32)
    classes = sorted(set(pool[sample].tolist()))
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    truth = np.array([index[c] for c in pool[sample]])
    x_test = np.asarray(embed(test_texts), dtype=np.float32)
    keep_test = np.array([label in index for label in test_labels])
    y_test = np.array([index[label] for label in np.array(test_labels)[keep_test]])
    targets = mb.confusable_targets(bayes.fit(x, truth, n_classes=k), x_test[keep_test], y_test, x, truth, k)
    rows = []
    for kind in ("uniform", "confusable"):
        for rate in (0.05, 0.1, 0.2):
            rng = np.random.default_rng(mb._seed(0, repeat, kind, rate))
            noisy, flipped = mb.inject(truth, rate, kind, k, targets, rng)
            seed = mb._seed(0, repeat, kind, rate, "folds")
            posterior = bayes.fit(x, noisy, n_classes=k)
            proba = mislabels.out_of_fold_proba(x, noisy, n_classes=k, posterior=posterior, seed=seed)
            finder = mislabels.finder_posterior(x, noisy, n_classes=k, posterior=posterior)
            row = {"set": name, "n": n, "kind": kind, "rate": rate, "repeat": repeat, "k": int(flipped.sum())}
            for method in mb.METHODS:
                row[method] = next(s["precision_at_k"] for s in stored
                                   if s["method"] == method and s["kind"] == kind and s["noise"] == rate)
            first = mislabels.analyse(proba, noisy)
            excl = mislabels.second_pass_exclusions(first.flagged, first.scores)
            results = {"one": first}
            if set(variants) & {"two", "avgproba", "avgscore", "avgunion"}:
                again = mislabels.second_pass_proba(x, noisy, excl, n_classes=k, posterior=finder, seed=seed + 1)
                second = results["two"] = mislabels.analyse(again, noisy)
                results["avgproba"] = mislabels.analyse((proba + again) / 2, noisy)
                mean_scores = (first.scores + second.scores) / 2
                results["avgscore"] = mislabels.Analysis(mean_scores, second.flagged, second.predicted,
                                                         second.thresholds, second.confident_joint)
                results["avgunion"] = mislabels.Analysis(mean_scores, second.flagged | first.flagged,
                                                         second.predicted, second.thresholds, second.confident_joint)
            if "foldsx" in variants:
                results["foldsx"] = mislabels.analyse(second_pass_folds(x, noisy, excl, k, finder, seed + 1), noisy)
            if {"cell", "cellfirst"} & set(variants):
                again, results["cell"] = two_passes(x, noisy, proba, k, finder, seed, analyse_cell)
                results["cellfirst"] = mislabels.analyse(again, noisy)
            if "cellrow" in variants:
                results["cellrow"] = two_passes(x, noisy, proba, k, finder, seed,
                                                lambda p, g: analyse_cell(p, g, by_row=True))[1]
            if "cellunion" in variants:
                results["cellunion"] = two_passes(x, noisy, proba, k, finder, seed,
                                                  lambda p, g: analyse_cell(p, g, union=True))[1]
            for variant in variants:
                analysis = results[variant]
                row[variant] = mb.score_ranking(analysis.ranking(), analysis.flagged, flipped)["precision_at_k"]
                row[variant + ":n_flagged"] = int(analysis.flagged.sum())
            rows.append(row)
            print(json.dumps(row), flush=True)
    if out.exists():  # a later run of other variants on the same rows: add its columns
        rows = [{**old, **new} for old, new in zip(json.loads(out.read_text()), rows, strict=True)]
    out.write_text(json.dumps(rows, indent=0) + "\n")


if __name__ == "__main__":
    with threadpool_limits(1):
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(","), Path(sys.argv[5]))
