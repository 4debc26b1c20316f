"""Quality figures: accuracy, F1 with bootstrap intervals, calibration, confusion matrices.

Plain module (numpy only plus learning.bayes), so the live-quality job, the evaluation
harness and the tests share one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learning import bayes


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(y_true == np.asarray(y_pred))) if len(y_true) else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predictions."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def _prf_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
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
    n = len(y_true)
    p, r, f = _prf_from_confusion(confusion_matrix(y_true, y_pred, n_classes))
    boots = np.empty((n_bootstrap, 3, n_classes))
    for b in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        boots[b] = _prf_from_confusion(confusion_matrix(y_true[idx], y_pred[idx], n_classes))
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
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    n = len(y_true)
    values = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        values[b] = (
            accuracy(y_true[idx], y_pred[idx]) if metric == "accuracy" else macro_f1(y_true[idx], y_pred[idx], n_classes)
        )
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
def stratified_folds(y: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per example. Each class is dealt round-robin from a shuffled order, so a class
    with fewer examples than folds simply appears in fewer folds (never an error)."""
    return bayes._stratified_folds(np.asarray(y), folds, rng)


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
) -> np.ndarray:
    """Out-of-fold predictive probabilities (N, K) from ``bayes.fit``; the live-quality estimate.

    A fold whose training part lacks a second class cannot be fitted; its items get the
    training part's label frequencies (smoothed) instead, so the output has no NaN. Rows of
    a single-label result sum to one.
    """
    rng = rng or np.random.default_rng(0)
    X = np.asarray(X)
    y = np.asarray(y)
    n = X.shape[0]
    folds = max(2, min(folds, n))
    assignment = bayes._stratified_folds(y, folds, rng, multi_label=multi_label)
    mu = np.zeros((n, n_classes))
    var = np.zeros((n, n_classes))
    fallback = np.full(n, False)
    out = np.empty((n, n_classes))
    for fold in range(folds):
        held = assignment == fold
        if not held.any():
            continue
        try:
            if multi_label:
                post = bayes.fit_multilabel(X[~held], y[~held], prior_precision=prior_precision)
            else:
                post = bayes.fit(X[~held], y[~held], n_classes=n_classes, prior_precision=prior_precision)
            mu[held], var[held] = post.logit_mean_var(X[held])
        except bayes.ModelFitError:
            fallback[held] = True
            if multi_label:
                out[held] = (y[~held].sum(axis=0) + 1.0) / (len(y[~held]) + 2.0)
            else:
                counts = np.bincount(y[~held], minlength=n_classes) + 1.0
                out[held] = counts / counts.sum()
    fitted = ~fallback
    if fitted.any():
        # Two calibration parameters fitted on these same out-of-fold logits: a mild optimism
        # we accept, since without them the raw Laplace predictive is badly under-confident
        # (see bayes.fit_calibration).
        if calibrated and fitted.sum() >= 10:
            t, c = bayes.fit_calibration(mu[fitted], var[fitted], y[fitted], multi_label=multi_label)
        else:
            t, c = 1.0, 1.0
        z = mu[fitted] / np.sqrt(t**2 + bayes.PI_OVER_8 * c * var[fitted])
        out[fitted] = bayes._sigmoid(z) if multi_label else bayes._softmax(z)
    return out
