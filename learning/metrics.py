"""Quality figures: accuracy, F1 with bootstrap intervals, calibration, confusion matrices.

Plain module (numpy only plus learning.bayes), so the live-quality job, the evaluation
harness and the tests share one implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from learning import bayes, calibration
from learning.folds import stratified_folds


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(y_true == np.asarray(y_pred))) if len(y_true) else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predictions."""
    # bincount, not np.add.at: the bootstraps call this hundreds of times per model update.
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _bootstrap_confusions(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_bootstrap: int, rng: np.random.Generator
) -> np.ndarray:
    """Confusion matrices (B, K, K) of ``n_bootstrap`` resamples of the items, in one bincount."""
    n = len(y_true)
    idx = rng.integers(0, n, (n_bootstrap, n))
    cells = n_classes * n_classes
    flat = np.arange(n_bootstrap)[:, None] * cells + y_true[idx] * n_classes + y_pred[idx]
    return np.bincount(flat.ravel(), minlength=n_bootstrap * cells).reshape(n_bootstrap, n_classes, n_classes)


def _prf_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 of a confusion matrix (K, K), or of a stack (..., K, K)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    predicted = cm.sum(axis=-2).astype(np.float64)
    actual = cm.sum(axis=-1).astype(np.float64)
    # 0/0 counts as 0, as in scikit-learn's zero_division=0: a class never predicted has no
    # precision to speak of and must drag macro-F1 down, not vanish from it.
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Mean F1 over the classes present in ``y_true`` or ``y_pred``."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    cm = confusion_matrix(y_true, y_pred, n_classes)
    _, _, f1 = _prf_from_confusion(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(f1[present].mean()) if present.any() else float("nan")


@dataclass
class ClassReport:
    precision: float
    recall: float
    f1: float
    support: int
    precision_interval: tuple[float, float]
    recall_interval: tuple[float, float]
    f1_interval: tuple[float, float]


def per_class_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    *,
    n_bootstrap: int = 200,
    level: float = 0.9,
    rng: np.random.Generator | None = None,
) -> list[ClassReport]:
    """Per-class precision/recall/F1 with percentile bootstrap intervals (resampling items)."""
    rng = rng or np.random.default_rng(0)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    p, r, f = _prf_from_confusion(confusion_matrix(y_true, y_pred, n_classes))
    boots = np.stack(_prf_from_confusion(_bootstrap_confusions(y_true, y_pred, n_classes, n_bootstrap, rng)), axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], axis=0)
    support = np.bincount(y_true, minlength=n_classes)
    return [
        ClassReport(
            precision=float(p[k]),
            recall=float(r[k]),
            f1=float(f[k]),
            support=int(support[k]),
            precision_interval=(float(lo[0, k]), float(hi[0, k])),
            recall_interval=(float(lo[1, k]), float(hi[1, k])),
            f1_interval=(float(lo[2, k]), float(hi[2, k])),
        )
        for k in range(n_classes)
    ]


def bootstrap_interval(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric: str = "macro_f1",
    *,
    n_classes: int | None = None,
    n_bootstrap: int = 200,
    level: float = 0.9,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy or macro-F1."""
    rng = rng or np.random.default_rng(0)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    cms = _bootstrap_confusions(y_true, y_pred, n_classes, n_bootstrap, rng)
    if metric == "accuracy":
        values = np.trace(cms, axis1=1, axis2=2) / len(y_true)
    else:
        # Macro-F1 of each resample over the classes present in it, as ``macro_f1`` does.
        _, _, f1 = _prf_from_confusion(cms)
        present = (cms.sum(axis=1) + cms.sum(axis=2)) > 0
        values = (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# ---- calibration --------------------------------------------------------------------------
def reliability_diagram(proba: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15) -> dict[str, list[float]]:
    """Per equal-width bin of top-class confidence: mean confidence, accuracy, count (empty bins kept)."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; confidence 0 cannot happen with >= 1 class.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        mean_acc = np.where(counts > 0, acc_sum / counts, np.nan)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_acc.tolist(),
        "count": counts.tolist(),
    }


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE over top-class confidence, 15 equal-width bins, weighted by bin size."""
    diagram = reliability_diagram(proba, y_true, n_bins=n_bins)
    counts = np.array(diagram["count"])
    if counts.sum() == 0:
        return float("nan")
    gap = np.abs(np.nan_to_num(np.array(diagram["accuracy"])) - np.nan_to_num(np.array(diagram["confidence"])))
    return float(np.sum(counts * gap) / counts.sum())


# ---- multi-label --------------------------------------------------------------------------
def multilabel_scores(Y_true: np.ndarray, Y_pred: np.ndarray) -> dict[str, float]:
    """Micro-F1, macro-F1 (over labels present in truth or prediction) and subset accuracy."""
    T = np.asarray(Y_true).astype(bool)
    P = np.asarray(Y_pred).astype(bool)
    tp = (T & P).sum(axis=0).astype(np.float64)
    fp = (~T & P).sum(axis=0).astype(np.float64)
    fn = (T & ~P).sum(axis=0).astype(np.float64)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / micro_denom) if micro_denom > 0 else 0.0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (T.sum(axis=0) + P.sum(axis=0)) > 0
    return {
        "micro_f1": micro,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "subset_accuracy": float(np.mean(np.all(T == P, axis=1))),
    }


def multilabel_calibration_error(proba: np.ndarray, Y_true: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE over every (item, label) Bernoulli prediction, confidence = max(p, 1-p)."""
    p = np.asarray(proba, dtype=np.float64).ravel()
    y = np.asarray(Y_true).ravel()
    two = np.stack([1 - p, p], axis=1)
    return expected_calibration_error(two, y.astype(np.int64), n_bins=n_bins)


# ---- cross-validation ---------------------------------------------------------------------
@dataclass
class OutOfFold:
    """Out-of-fold logit moments from cross-validation, before any calibration."""

    mu: np.ndarray  # (N, K) posterior mean logits of each item under the fold that held it out
    var: np.ndarray  # (N, K) their Laplace variances
    fitted: np.ndarray  # (N,) False where the fold could not be fitted
    fallback: np.ndarray  # (N, K) smoothed label frequencies, used where not fitted
    multi_label: bool

    def proba(self, temperature: float = 1.0, variance_scale: float = 1.0) -> np.ndarray:
        """Predictive probabilities (N, K) under a calibration (T, c); fallback rows as they are."""
        out = self.fallback.copy()
        z = self.mu[self.fitted] / np.sqrt(temperature**2 + bayes.PI_OVER_8 * variance_scale * self.var[self.fitted])
        out[self.fitted] = bayes.sigmoid(z) if self.multi_label else bayes.softmax(z)
        return out


def out_of_fold_logits(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    folds: int = 5,
    rng: np.random.Generator | None = None,
    prior_precision: float | None = None,
    multi_label: bool = False,
    warm_start: bayes.Posterior | None = None,
    should_stop: Callable[[], bool] | None = None,
    bias_feature: float | None = None,
    evaluate_on: np.ndarray | None = None,
) -> OutOfFold | None:
    """Each item's logit mean and variance from a ``bayes.fit`` on the folds that exclude it.

    ``evaluate_on`` (bool mask): only those items are held out and get moments (the OutOfFold then
    has their rows only, in order); the others are in every fold's training part. The quality
    report of a fine-tuned encoder's model uses it: the items the encoder was trained on sit
    closer to their labels than new text will, so only the others can measure it.

    A fold whose training part lacks a second class cannot be fitted; its items get the
    training part's label frequencies (smoothed) instead. ``warm_start`` (the model fitted on
    all the labels) starts every fold's MAP, and preconditions it when the fold has about as
    many labels (see ``bayes.fit``): same optimum, fewer L-BFGS steps; with ``prior_precision``
    fixed too, no fold searches lambda. (Starting each fold from the previous fold instead was
    tried: more steps on trec, sms_spam and legal_overruling.) ``should_stop`` is asked before
    each fold; None comes back if it answered True.
    """
    rng = rng or np.random.default_rng(0)
    X = np.asarray(X)
    y = np.asarray(y)
    n = X.shape[0]
    evaluated = np.arange(n) if evaluate_on is None else np.flatnonzero(np.asarray(evaluate_on, dtype=bool))
    folds = max(2, min(folds, len(evaluated)))
    assignment = np.full(n, -1)
    assignment[evaluated] = stratified_folds(y[evaluated], folds, rng, multi_label=multi_label)
    mu = np.zeros((n, n_classes))
    var = np.zeros((n, n_classes))
    fitted = np.full(n, True)
    fallback = np.zeros((n, n_classes))
    for fold in range(folds):
        held = assignment == fold
        if not held.any():
            continue
        if should_stop is not None and should_stop():
            return None
        try:
            if multi_label:
                post = bayes.fit_multilabel(X[~held], y[~held], prior_precision=prior_precision, warm_start=warm_start,
                                            bias_feature=bias_feature)
            else:
                post = bayes.fit(X[~held], y[~held], n_classes=n_classes, prior_precision=prior_precision,
                                 warm_start=warm_start, bias_feature=bias_feature)
            mu[held], var[held] = post.logit_mean_var(X[held])
        except bayes.ModelFitError:
            fitted[held] = False
            if multi_label:
                fallback[held] = (y[~held].sum(axis=0) + 1.0) / (len(y[~held]) + 2.0)
            else:
                counts = np.bincount(y[~held], minlength=n_classes) + 1.0
                fallback[held] = counts / counts.sum()
    if evaluate_on is None:
        return OutOfFold(mu=mu, var=var, fitted=fitted, fallback=fallback, multi_label=multi_label)
    return OutOfFold(mu=mu[evaluated], var=var[evaluated], fitted=fitted[evaluated], fallback=fallback[evaluated],
                     multi_label=multi_label)


def fit_out_of_fold_calibration(oof: OutOfFold, y: np.ndarray) -> tuple[float, float]:
    """(temperature, variance_scale) fitted on the out-of-fold logits; (1, 1) with under 10 of them."""
    if oof.fitted.sum() < 10:
        return 1.0, 1.0
    return calibration.fit_calibration(oof.mu[oof.fitted], oof.var[oof.fitted], np.asarray(y)[oof.fitted],
                                 multi_label=oof.multi_label)


def cross_validated_proba(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    folds: int = 5,
    rng: np.random.Generator | None = None,
    prior_precision: float | None = None,
    multi_label: bool = False,
    calibrated: bool = True,
    warm_start: bayes.Posterior | None = None,
) -> np.ndarray:
    """Out-of-fold predictive probabilities (N, K) from ``bayes.fit``; the live-quality estimate.

    A fold whose training part lacks a second class cannot be fitted; its items get the
    training part's label frequencies (smoothed) instead, so the output has no NaN. Rows of
    a single-label result sum to one.
    """
    oof = out_of_fold_logits(X, y, n_classes=n_classes, folds=folds, rng=rng, prior_precision=prior_precision,
                             multi_label=multi_label, warm_start=warm_start)
    assert oof is not None  # no should_stop: never interrupted
    # Two calibration parameters fitted on these same out-of-fold logits: a mild optimism we
    # accept, since without them the raw Laplace predictive is badly under-confident (see
    # calibration.fit_calibration).
    t, c = fit_out_of_fold_calibration(oof, y) if calibrated else (1.0, 1.0)
    return oof.proba(t, c)


# ---- accuracy against coverage ------------------------------------------------------------
def accuracy_coverage(confidence: np.ndarray, correct: np.ndarray, *, max_points: int = 50) -> list[dict[str, float]]:
    """Accuracy of the items kept by each confidence threshold, and the share kept.

    Thresholds are the distinct values of ``confidence`` at ``max_points`` evenly spaced
    quantiles (each is a real confidence, so every threshold keeps at least one item), floored
    to 6 decimals so a consumer comparing stored thresholds against stored confidences gets the
    same coverage. For threshold t: coverage = share of items with confidence >= t, accuracy =
    share of those that are correct. Sorted by threshold ascending; coverage is then
    non-increasing and the first point (the lowest confidence) has coverage 1.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return []
    order = np.argsort(confidence, kind="stable")
    ascending = confidence[order]
    # Suffix sums: items at or above position i in ascending order.
    correct_above = np.cumsum(correct[order][::-1])[::-1]
    levels = np.linspace(0.0, 1.0, max(2, max_points))
    picks = ascending[np.minimum((levels * (n - 1)).round().astype(np.int64), n - 1)]
    thresholds = np.unique(np.floor(picks * 1e6) / 1e6)
    first = np.searchsorted(ascending, thresholds, side="left")
    kept = n - first
    return [
        {"threshold": float(t), "coverage": float(k / n), "accuracy": float(correct_above[i] / k)}
        for t, i, k in zip(thresholds.tolist(), first.tolist(), kept.tolist(), strict=True)
    ]
