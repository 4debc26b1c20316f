"""Likely mislabels: labelled items whose given label the model contradicts with confidence.

Plain module (numpy only plus learning.bayes/metrics/quality), so the review queue, the
benchmark against cleanlab (benchmarks/mislabel_bench.py) and the tests share one
implementation.

Why confident learning and not "lowest probability of the given label": a hard class has low
self-confidence everywhere, and a single global cut would fill the queue with its correct items.
Each class j gets a threshold t_j, the average probability the model gives j on the items
labelled j (its average self-confidence). An item labelled i is a candidate when another class
j clears its own threshold (p_j >= t_j) and is the most probable of those that do: the
"confident joint" C[i, j] counts such items. How many items of class i to flag is the
calibrated off-diagonal row sum of C (cleanlab's ``prune_by_noise_rate`` estimate); which ones
are the class's highest-scoring items.

API (stable; the review queue calls it)::

    find_mislabels(proba, given, *, multi_label=False) -> list[Mislabel]

``proba``: (N, K) out-of-fold predicted probabilities (rows sum to one, or independent
per-label probabilities when ``multi_label``); ``given``: (N,) class indices, or an (N, K)
0/1 matrix when ``multi_label``. Returns the flagged items, most suspicious first. Each
``Mislabel`` has the row ``index``, the ``given`` and the model's (``predicted``) label, the
model's ``probability`` of its label, the per-class ``threshold`` it cleared, a ranking
``score`` (higher: more likely wrong) and a short ``reason``. Multi-label is per label: a
``Mislabel`` concerns one ``label`` whose given value (1 = present, 0 = absent) the model
contradicts; one item can appear once per such label.

``out_of_fold_proba(X, y, ...)`` computes the probabilities the way the quality report does
(5 folds at the model's prior precision, every fold warm-started from it, then the two-parameter
calibration fitted on the out-of-fold logits), on every labelled item instead of a subsample.
``find_mislabels_in(X, given, ...)`` runs both and then a second pass (see ``SECOND_PASS``).
``label_issue_scores`` gives the ranking of every item, flagged or not (the benchmark's AUPRC).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from learning import bayes, metrics, quality

# Probabilities are clipped away from 0 and 1 before they are compared or divided.
EPS = 1e-12
# The finder's models put this bias column in the design (``bayes.fit``'s ``bias_feature``): a bias
# prior 100 times weaker than the weights', so the intercept follows the labelled items' class
# frequencies, which is what an out-of-fold judgement of those same items needs (cleanlab's default
# logistic regression leaves its intercept free). With the model's column of 1, the finder lost to
# that pipeline on every sms_spam setting (13 % spam); see benchmarks/README.md, "Mislabel finder".
FINDER_BIAS_FEATURE = 10.0


@dataclass(frozen=True)
class Mislabel:
    index: int  # row of ``given``
    given: int  # single-label: the given class; multi-label: the given value (0/1) of ``label``
    predicted: int  # single-label: the model's class; multi-label: the value the model expects
    probability: float  # the model's probability of ``predicted``
    threshold: float  # the average self-confidence of ``predicted`` (its per-class threshold)
    score: float  # ranking key, higher = more likely mislabelled
    reason: str
    label: int | None = None  # multi-label: the label concerned; None for single-label


@dataclass
class Analysis:
    """Everything the ranking computes, for every item (single-label, or one label of a multi-label set)."""

    scores: np.ndarray  # (N,) higher = more likely mislabelled
    flagged: np.ndarray  # (N,) bool
    predicted: np.ndarray  # (N,) the class the model puts forward (the confident other class if any)
    thresholds: np.ndarray  # (K,) average self-confidence per class
    confident_joint: np.ndarray  # (K, K) given x confident class counts

    def ranking(self) -> np.ndarray:
        """Every item, flagged first (by score), then the rest (by score)."""
        return np.lexsort((-self.scores, ~self.flagged))


def _check(proba: np.ndarray, given: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba, dtype=np.float64)
    given = np.asarray(given)
    if proba.ndim != 2:
        raise ValueError(f"proba must be a 2-D array (items x classes), got shape {proba.shape}")
    if not np.isfinite(proba).all():
        raise ValueError("proba contains NaN or infinity")
    if multi_label:
        if given.shape != proba.shape:
            raise ValueError(f"multi-label given must be a 0/1 matrix of shape {proba.shape}, got {given.shape}")
        if not np.isin(given, (0, 1)).all():
            raise ValueError("multi-label given must hold only 0 and 1")
        return proba, given.astype(np.int64)
    if given.ndim != 1 or len(given) != len(proba):
        raise ValueError(f"given must be a vector of {len(proba)} class indices, got shape {given.shape}")
    if len(given) and (given.min() < 0 or given.max() >= proba.shape[1]):
        raise ValueError(f"given labels must lie in [0, {proba.shape[1]})")
    return proba, given.astype(np.int64)


def per_class_thresholds(proba: np.ndarray, given: np.ndarray) -> np.ndarray:
    """t_j = mean p_j over the items labelled j; a class nobody gave gets 1 (never cleared... except at 1)."""
    k = proba.shape[1]
    sums = np.bincount(given, weights=proba[np.arange(len(given)), given], minlength=k)
    counts = np.bincount(given, minlength=k)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


SCORES = ("self_confidence", "margin", "relative_margin")


def analyse(proba: np.ndarray, given: np.ndarray, *, score: str = "self_confidence") -> Analysis:
    """Confident-learning flags and scores of single-label items (see the module docstring).

    Score (``self_confidence``, the default): one minus the model's probability of the given
    label; measured against cleanlab on the benchmark sets it ranked the flips better than the
    margin to the best other class, plain (``margin``) or with each probability divided by its
    class threshold (``relative_margin``), which are kept for the benchmark's ablations. The
    per-class thresholds act through how many items of each class are flagged, so a hard class
    (low self-confidence everywhere, few confident other classes) is not flooded.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    proba = np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0)
    given = np.asarray(given, dtype=np.int64)
    n, k = proba.shape
    thresholds = per_class_thresholds(proba, given)
    rows = np.arange(n)
    # Confident class: the most probable class among those that clear their threshold.
    above = proba >= thresholds[None, :] - 1e-12
    masked = np.where(above, proba, -1.0)
    confident = masked.argmax(axis=1)
    has_confident = above.any(axis=1)
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (given[has_confident], confident[has_confident]), 1)
    # Calibrate each row to the number of items labelled with it (cleanlab's calibrate_confident_joint),
    # then the off-diagonal mass of a row is the number of issues expected in that given class.
    counts = np.bincount(given, minlength=k).astype(np.float64)
    row_sums = joint.sum(axis=1).astype(np.float64)
    calibrated = joint * np.divide(counts, row_sums, out=np.zeros(k), where=row_sums > 0)[:, None]
    # Rounded per cell: C[i, j] items labelled i are expected to belong to j.
    expected = np.rint(calibrated).astype(np.int64)
    np.fill_diagonal(expected, 0)

    own = proba[rows, given]
    others = proba.copy()
    others[rows, given] = -np.inf
    if score == "self_confidence":
        scores = 1.0 - own
    elif score == "margin":
        scores = others.max(axis=1) - own
    else:
        relative = others / np.maximum(thresholds, EPS)[None, :]
        scores = relative.max(axis=1) - own / np.maximum(thresholds[given], EPS)
    predicted = np.where(has_confident & (confident != given), confident, others.argmax(axis=1))

    # Within each given class i, its C[i, :] off-diagonal total of items, highest scores first,
    # less any whose most probable class is the given one (the model does not contradict it).
    n_issues = expected.sum(axis=1)
    contradicted = proba.argmax(axis=1) != given
    flagged = np.zeros(n, dtype=bool)
    for cls in np.flatnonzero(n_issues):
        members = np.flatnonzero(given == cls)
        top = members[np.argsort(-scores[members], kind="stable")[: n_issues[cls]]]
        flagged[top] = True
    flagged &= contradicted
    return Analysis(scores=scores, flagged=flagged, predicted=predicted, thresholds=thresholds,
                    confident_joint=joint)


def label_issue_scores(proba: np.ndarray, given: np.ndarray, *, multi_label: bool = False) -> list[Analysis]:
    """The analysis of every item: one ``Analysis`` for single-label, one per label for multi-label."""
    proba, given = _check(proba, given, multi_label)
    if not multi_label:
        return [analyse(proba, given)]
    return [analyse(np.stack([1.0 - proba[:, j], proba[:, j]], axis=1), given[:, j]) for j in range(proba.shape[1])]


def _reason(given_name: str, predicted_name: str, probability: float, threshold: float) -> str:
    return (f"labelled {given_name}, but the model gives {predicted_name} {probability:.0%} "
            f"(items labelled {predicted_name} average {threshold:.0%})")


def find_mislabels(proba: np.ndarray, given: np.ndarray, *, multi_label: bool = False,
                   label_names: list[str] | None = None) -> list[Mislabel]:
    """Flagged items, most suspicious first (see the module docstring for the fields)."""
    proba, given = _check(proba, given, multi_label)
    k = proba.shape[1]
    names = label_names if label_names is not None else [str(j) for j in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} label names for {k} classes")
    out: list[Mislabel] = []
    if not multi_label:
        result = analyse(proba, given)
        for i in np.flatnonzero(result.flagged):
            g, p = int(given[i]), int(result.predicted[i])
            prob, thr = float(proba[i, p]), float(result.thresholds[p])
            out.append(Mislabel(index=int(i), given=g, predicted=p, probability=prob, threshold=thr,
                                score=float(result.scores[i]), reason=_reason(names[g], names[p], prob, thr)))
    else:
        for j, result in enumerate(label_issue_scores(proba, given, multi_label=True)):
            for i in np.flatnonzero(result.flagged):
                g = int(given[i, j])
                p = 1 - g
                prob = float(proba[i, j] if p == 1 else 1.0 - proba[i, j])
                thr = float(result.thresholds[p])
                state = ("present", "absent")
                reason = (f"{names[j]} given as {state[1 - g]}, but the model says {state[1 - p]} "
                          f"with {prob:.0%} (items given it {state[1 - p]} average {thr:.0%})")
                out.append(Mislabel(index=int(i), given=g, predicted=p, probability=prob, threshold=thr,
                                    score=float(result.scores[i]), reason=reason, label=j))
    out.sort(key=lambda m: -m.score)
    return out


# ---- from embeddings: the app's code path ---------------------------------------------------
# Refit without the first pass's flagged items and judge every item again: flipped labels in
# the training folds pull the model towards them (most with confusable noise, where the wrong
# labels of one class form a region of their own), and hide one another.
SECOND_PASS = True
# Which first-pass flags the second pass leaves out of its fits: the most suspicious share of them
# (by score). The confident joint over-counts issues when the noise is low
# (about 130 flags for 50 uniform flips in 1,000 ag_news labels), and refitting without all of
# them dropped correct items near the class boundaries: with every flag left out, ours trailed
# cleanlab on the same probabilities on uniform 5 % noise (trec at 1,000 and 5,000 labels, ag_news
# at 5,000) and sms_spam's 20 % settings at 4,460; with the top half, those settings were ahead or
# level and confusable noise kept most of the second pass's gain (benchmarks/README.md).
SECOND_PASS_SHARE = 0.5


def second_pass_exclusions(flagged: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The ``SECOND_PASS_SHARE`` highest-scoring of the ``flagged`` items (bool mask)."""
    flagged = np.asarray(flagged, dtype=bool)
    rows = np.flatnonzero(flagged)
    keep = int(math.ceil(SECOND_PASS_SHARE * len(rows)))
    out = np.zeros(len(flagged), dtype=bool)
    out[rows[np.argsort(-np.asarray(scores)[rows], kind="stable")[:keep]]] = True
    return out


def finder_posterior(X: np.ndarray, y: np.ndarray, *, n_classes: int, multi_label: bool = False,
                     posterior: bayes.Posterior | None) -> bayes.Posterior | None:
    """The model the finder's folds start from and take their prior precision from.

    ``posterior`` itself when its bias column is ``FINDER_BIAS_FEATURE``; else a fit on all the
    labelled items with that column, warm-started from it, its prior precision searched again
    from the posterior's (a weaker bias prior changes what the evidence asks of the weights).
    None when ``posterior`` is None (each fold then searches its own).
    """
    if posterior is None or posterior.bias_feature == FINDER_BIAS_FEATURE:
        return posterior
    try:
        if multi_label:
            return bayes.fit_multilabel(X, y, init_prior_precision=posterior.prior_precision, warm_start=posterior,
                                        bias_feature=FINDER_BIAS_FEATURE)
        return bayes.fit(X, y, n_classes=n_classes, init_prior_precision=posterior.prior_precision,
                         warm_start=posterior, bias_feature=FINDER_BIAS_FEATURE)
    except bayes.ModelFitError:
        return None


def _out_of_fold(X: np.ndarray, y: np.ndarray, *, n_classes: int, multi_label: bool,
                 posterior: bayes.Posterior | None, seed: int,
                 should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, tuple[float, float]] | None:
    """``posterior``: already the finder's (``finder_posterior``)."""
    oof = metrics.out_of_fold_logits(
        X, y, n_classes=n_classes, folds=quality.FOLDS, rng=np.random.default_rng(seed), multi_label=multi_label,
        prior_precision=None if posterior is None else posterior.prior_precision, warm_start=posterior,
        should_stop=should_stop, bias_feature=FINDER_BIAS_FEATURE,
    )
    if oof is None:
        return None
    calibration = metrics.fit_out_of_fold_calibration(oof, y)
    return oof.proba(*calibration), calibration


def out_of_fold_proba(X: np.ndarray, y: np.ndarray, *, n_classes: int, multi_label: bool = False,
                      posterior: bayes.Posterior | None = None, seed: int = 0,
                      should_stop: Callable[[], bool] | None = None) -> np.ndarray | None:
    """Calibrated out-of-fold probabilities of every item, as ``quality.evaluate`` computes them.

    Same folds (``quality.FOLDS``) and calibration as the quality report, from the finder's model
    (``finder_posterior``: the report's, with the finder's bias column), and on every labelled item
    (the report subsamples above ``quality.MAX_EVAL_ITEMS``): each item needs its own held-out
    prediction to be judged. None if ``should_stop`` interrupted it.
    """
    posterior = finder_posterior(X, y, n_classes=n_classes, multi_label=multi_label, posterior=posterior)
    out = _out_of_fold(X, y, n_classes=n_classes, multi_label=multi_label, posterior=posterior, seed=seed,
                       should_stop=should_stop)
    return None if out is None else out[0]


def second_pass_proba(X: np.ndarray, y: np.ndarray, flagged: np.ndarray, *, n_classes: int,
                      multi_label: bool = False, posterior: bayes.Posterior | None = None,
                      seed: int = 0, prior_scale: float = 1.0) -> np.ndarray | None:
    """Probabilities of every item from models that never saw a ``flagged`` label.

    Kept items: out-of-fold among the kept ones. Flagged items: one model fitted on all the kept
    ones, under the calibration of the kept items' folds. None when too few items are kept.
    ``prior_scale`` multiplies the posterior's prior precision (an ablation of the benchmark).
    """
    posterior = finder_posterior(X, y, n_classes=n_classes, multi_label=multi_label, posterior=posterior)
    if posterior is not None and prior_scale != 1.0:
        posterior = copy.copy(posterior)
        posterior.prior_precision *= prior_scale
    keep = ~flagged
    kept_y = y[keep]
    if keep.sum() < 2 * quality.FOLDS or (not multi_label and len(np.unique(kept_y)) < 2):
        return None
    out = _out_of_fold(X[keep], kept_y, n_classes=n_classes, multi_label=multi_label, posterior=posterior,
                       seed=seed)
    if out is None:
        return None
    kept_proba, (temperature, variance_scale) = out
    proba = np.empty((len(y), n_classes))
    proba[keep] = kept_proba
    if flagged.any():
        prior = None if posterior is None else posterior.prior_precision
        try:
            if multi_label:
                model = bayes.fit_multilabel(X[keep], kept_y, prior_precision=prior, warm_start=posterior,
                                             bias_feature=FINDER_BIAS_FEATURE)
            else:
                model = bayes.fit(X[keep], kept_y, n_classes=n_classes, prior_precision=prior, warm_start=posterior,
                                  bias_feature=FINDER_BIAS_FEATURE)
        except bayes.ModelFitError:
            return None
        model.temperature, model.variance_scale = temperature, variance_scale
        proba[flagged] = model.predict_proba(X[flagged])
    return proba


def analyse_in(X: np.ndarray, given: np.ndarray, *, n_classes: int, posterior: bayes.Posterior | None = None,
               proba: np.ndarray | None = None, seed: int = 0, second_pass: bool = SECOND_PASS,
               score: str = "self_confidence", prior_scale: float = 1.0) -> Analysis:
    """``analyse`` of single-label items from their embeddings (``proba``: the first pass's, if computed)."""
    given = np.asarray(given, dtype=np.int64)
    posterior = finder_posterior(X, given, n_classes=n_classes, posterior=posterior)  # once for both passes
    if proba is None:
        proba = out_of_fold_proba(X, given, n_classes=n_classes, posterior=posterior, seed=seed)
        assert proba is not None  # no should_stop: never interrupted
    first = analyse(proba, given, score=score)
    if not second_pass or not first.flagged.any():
        return first
    again = second_pass_proba(X, given, second_pass_exclusions(first.flagged, first.scores), n_classes=n_classes,
                              posterior=posterior, seed=seed + 1, prior_scale=prior_scale)
    return first if again is None else analyse(again, given, score=score)


def find_mislabels_in(X: np.ndarray, given: np.ndarray, *, n_classes: int, multi_label: bool = False,
                      posterior: bayes.Posterior | None = None, seed: int = 0,
                      label_names: list[str] | None = None,
                      proba: np.ndarray | None = None) -> list[Mislabel]:
    """``find_mislabels`` from embeddings: the quality report's out-of-fold probabilities (or
    ``proba``, already computed), then the second pass."""
    X = np.asarray(X)
    given = np.asarray(given)
    # Once for both passes.
    posterior = finder_posterior(X, given, n_classes=n_classes, multi_label=multi_label, posterior=posterior)
    if proba is None:
        proba = out_of_fold_proba(X, given, n_classes=n_classes, multi_label=multi_label, posterior=posterior,
                                  seed=seed)
        assert proba is not None  # no should_stop: never interrupted
    if SECOND_PASS:
        proba, given = _check(proba, given, multi_label)
        if multi_label:
            flagged_items = np.zeros(len(given), dtype=bool)
            for result in label_issue_scores(proba, given, multi_label=True):
                flagged_items |= second_pass_exclusions(result.flagged, result.scores)
        else:
            first = analyse(proba, given)
            flagged_items = second_pass_exclusions(first.flagged, first.scores)
        if flagged_items.any():
            again = second_pass_proba(X, given, flagged_items, n_classes=n_classes, multi_label=multi_label,
                                      posterior=posterior, seed=seed + 1)
            if again is not None:
                proba = again
    return find_mislabels(proba, given, multi_label=multi_label, label_names=label_names)
