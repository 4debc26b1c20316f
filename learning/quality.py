"""Live quality of a project's model, from cross-validated predictions on its labels.

Plain module (numpy only). Above `MAX_EVAL_ITEMS` labels, quality and calibration
are estimated on a stratified random subsample so a model update stays about a
second; the interval widths say how precise that estimate is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learning import bayes, metrics

MAX_EVAL_ITEMS = 2000
FOLDS = 5
LEVEL = 0.95


@dataclass
class QualityReport:
    n_eval: int
    accuracy: dict[str, float]
    macro_f1: dict[str, float]
    ece: float
    per_class: list[dict[str, Any]] = field(default_factory=list)
    confusion: dict[str, Any] = field(default_factory=dict)
    reliability: dict[str, list[float | None]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (no NaN: PostgreSQL's jsonb refuses it)."""
        return _clean({
            "n_eval": self.n_eval, "accuracy": self.accuracy, "macro_f1": self.macro_f1, "ece": self.ece,
            "per_class": self.per_class, "confusion": self.confusion, "reliability": self.reliability,
            "interval_level": LEVEL, **self.extra,
        })


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def _subsample(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, MAX_EVAL_ITEMS, replace=False)) if n > MAX_EVAL_ITEMS else np.arange(n)


def evaluate(X: np.ndarray, y: np.ndarray, *, n_classes: int, label_names: list[str], multi_label: bool,
             seed: int) -> QualityReport:
    """Cross-validated accuracy, macro-F1 (with bootstrap intervals), per-class F1, ECE and confusion."""
    rng = np.random.default_rng(seed)
    keep = _subsample(len(y), rng)
    X, y = X[keep], y[keep]
    proba = metrics.cross_validated_proba(X, y, n_classes=n_classes, folds=FOLDS, rng=rng, multi_label=multi_label)
    if multi_label:
        predicted = (proba >= 0.5).astype(np.int8)
        scores = metrics.multilabel_scores(y, predicted)
        ece = metrics.multilabel_calibration_error(proba, y)
        per_label_acc = float(np.mean(predicted == y))
        return QualityReport(
            n_eval=len(y), accuracy={"value": scores["subset_accuracy"], "low": None, "high": None},
            macro_f1={"value": scores["macro_f1"], "low": None, "high": None}, ece=ece,
            per_class=[
                {"label": name, "f1": _binary_f1(y[:, k], predicted[:, k]), "f1_low": None, "f1_high": None,
                 "precision": None, "recall": None, "support": int(y[:, k].sum())}
                for k, name in enumerate(label_names)
            ],
            extra={"micro_f1": scores["micro_f1"], "label_accuracy": per_label_acc},
        )
    predicted = proba.argmax(axis=1)
    acc_low, acc_high = metrics.bootstrap_interval(y, predicted, "accuracy", level=LEVEL, rng=rng)
    f1_low, f1_high = metrics.bootstrap_interval(y, predicted, "macro_f1", n_classes=n_classes, level=LEVEL, rng=rng)
    classes = metrics.per_class_report(y, predicted, n_classes, level=LEVEL, rng=rng)
    return QualityReport(
        n_eval=len(y),
        accuracy={"value": metrics.accuracy(y, predicted), "low": acc_low, "high": acc_high},
        macro_f1={"value": metrics.macro_f1(y, predicted, n_classes), "low": f1_low, "high": f1_high},
        ece=metrics.expected_calibration_error(proba, y),
        per_class=[
            {"label": name, "f1": c.f1, "f1_low": c.f1_interval[0], "f1_high": c.f1_interval[1],
             "precision": c.precision, "recall": c.recall, "support": c.support}
            for name, c in zip(label_names, classes, strict=True)
        ],
        confusion={"labels": label_names, "matrix": metrics.confusion_matrix(y, predicted, n_classes).tolist()},
        reliability=metrics.reliability_diagram(proba, y),
    )


def _binary_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp = float(np.sum((truth == 1) & (predicted == 1)))
    denom = float(np.sum(truth == 1) + np.sum(predicted == 1))
    return 2 * tp / denom if denom else 0.0


def calibrate(posterior: bayes.Posterior, X: np.ndarray, y: np.ndarray, *, seed: int) -> bayes.Posterior:
    """Fit the posterior's temperature and variance scale on cross-validated logits (subsampled)."""
    rng = np.random.default_rng(seed)
    keep = _subsample(len(y), rng)
    return bayes.calibrate(posterior, X[keep], y[keep], rng=rng)
