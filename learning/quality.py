"""Live quality of a project's model, from cross-validated predictions on its labels.

Plain module (numpy only). Above `MAX_EVAL_ITEMS` labels, quality and calibration
are estimated on a random subsample so the report stays within a few seconds; the
interval widths say how precise that estimate is.

The report is off the model update's critical path: a new model first takes the previous
model's calibration (``carry_calibration``) and is scored and served with it at once; then a
separate, lower-priority job (``learning.jobs.report_project``) calls
``evaluate(..., posterior=model)`` and ``calibrate(model, ..., report=report)``: one 5-fold
cross-validation at the model's prior precision, every fold warm-started from the model,
serves both the quality figures and the model's calibration. ``should_stop`` lets that job
give way between folds to a model update that is waiting.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learning import bayes, calibration, metrics

MAX_EVAL_ITEMS = 2000
FOLDS = 5
# After a fine-tune, the fewest items its encoder never saw that the report is measured on alone.
MIN_UNSEEN = 2 * FOLDS
LEVEL = 0.95


@dataclass
class QualityReport:
    n_eval: int
    # {"value", "low", "high"}: no interval (None) for multi-label sets.
    accuracy: dict[str, float | None]
    macro_f1: dict[str, float | None]
    ece: float
    per_class: list[dict[str, Any]] = field(default_factory=list)
    confusion: dict[str, Any] = field(default_factory=dict)
    # NaN for empty bins until as_dict turns it into null.
    reliability: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    # Threshold on the confidence of the whole prediction -> share of items kept and their
    # accuracy (``metrics.accuracy_coverage``), from the calibrated out-of-fold predictions.
    accuracy_coverage: list[dict[str, float]] = field(default_factory=list)
    # (temperature, variance_scale) fitted on the out-of-fold logits; not in as_dict.
    calibration: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (no NaN: PostgreSQL's jsonb refuses it)."""
        return _clean({
            "n_eval": self.n_eval, "accuracy": self.accuracy, "macro_f1": self.macro_f1, "ece": self.ece,
            "per_class": self.per_class, "confusion": self.confusion, "reliability": self.reliability,
            "accuracy_coverage": self.accuracy_coverage, "interval_level": LEVEL, **self.extra,
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


class ReportInterrupted(Exception):
    """``should_stop`` asked the cross-validation to give way (a newer model is about to be fitted)."""


def carry_calibration(posterior: bayes.Posterior, previous: bayes.Posterior | None) -> bayes.Posterior:
    """Give a new model the previous model's temperature and variance scale (same outputs only).

    The new model serves and scores the pool at once; its own calibration comes with its
    quality report, a few seconds later. Consecutive models differ by a few labels, so the
    previous calibration is the best one available meanwhile. Returns ``posterior``.
    """
    if (previous is not None and previous.n_classes == posterior.n_classes
            and previous.multi_label == posterior.multi_label):
        posterior.temperature, posterior.variance_scale = previous.temperature, previous.variance_scale
        posterior.info["calibration_from"] = "previous"
    return posterior


def evaluation_rows(n: int, unseen: np.ndarray | None,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows the report uses, mask of the rows it measures within them, or None for all of them).

    ``unseen`` (bool, per item): the items the encoder was not fine-tuned on; None when it never was.
    With at least ``MIN_UNSEEN`` of them only they are measured (every fold still trains on the rest);
    below that the report is measured on every item and says how many the encoder saw
    (``QualityReport.extra["trained_on"]``). Each part is subsampled to ``MAX_EVAL_ITEMS``.
    """
    if unseen is None or int(np.sum(unseen)) < MIN_UNSEEN:
        return _subsample(n, rng), None
    unseen = np.asarray(unseen, dtype=bool)
    measured, rest = np.flatnonzero(unseen), np.flatnonzero(~unseen)
    measured = measured[_subsample(len(measured), rng)]
    rest = rest[_subsample(len(rest), rng)]
    rows = np.sort(np.concatenate([measured, rest]))
    return rows, np.isin(rows, measured)


def evaluate(X: np.ndarray, y: np.ndarray, *, n_classes: int, label_names: list[str], multi_label: bool,
             seed: int, posterior: bayes.Posterior | None = None,
             should_stop: Callable[[], bool] | None = None, unseen: np.ndarray | None = None) -> QualityReport:
    """Cross-validated accuracy, macro-F1 (with bootstrap intervals), per-class F1, ECE, confusion
    and accuracy against coverage.

    With ``posterior`` (the model fitted on all of ``X, y``), every fold uses its prior
    precision and starts its MAP from it: no evidence search per fold.
    Lambda then comes from all the labels, held-out ones included: one hyperparameter, a
    negligible optimism next to the calibration's (below). Without it each fold searches its
    own, as before. ``should_stop`` is asked before each fold; when it answers True,
    ``ReportInterrupted`` is raised.

    ``unseen``: after a fine-tune, which items its encoder was not trained on (``evaluation_rows``).
    The items it was trained on sit closer to their labels than new text will: cross-validated on
    them, hwu64's report said macro-F1 0.94 for a model that scored 0.87 on the test split
    (benchmarks/README.md, "The quality report after a fine-tune"). Only the others are measured,
    and the calibration is fitted on them.
    """
    rng = np.random.default_rng(seed)
    n_all = len(y)
    keep, measured = evaluation_rows(n_all, unseen, rng)
    X, y = X[keep], y[keep]
    oof = metrics.out_of_fold_logits(
        X, y, n_classes=n_classes, folds=FOLDS, rng=rng, multi_label=multi_label,
        prior_precision=None if posterior is None else posterior.prior_precision, warm_start=posterior,
        should_stop=should_stop, evaluate_on=measured,
    )
    if oof is None:
        raise ReportInterrupted
    report = _report(oof, y if measured is None else y[measured], n_classes=n_classes, label_names=label_names,
                     multi_label=multi_label, rng=rng)
    if unseen is not None:
        n_unseen = int(np.sum(unseen))
        report.extra["trained_on"] = 0 if measured is not None else n_all - n_unseen
        report.extra["unseen_only"] = measured is not None
    return report


def _report(oof: metrics.OutOfFold, y: np.ndarray, *, n_classes: int, label_names: list[str], multi_label: bool,
            rng: np.random.Generator) -> QualityReport:
    # The report describes the calibrated model, so it uses the calibration fitted on these
    # same out-of-fold logits (a mild optimism, two parameters) and so does the
    # accuracy/coverage curve: its thresholds are meant to be applied to calibrated confidences.
    calibration = metrics.fit_out_of_fold_calibration(oof, y)
    proba = oof.proba(*calibration)
    if multi_label:
        predicted = (proba >= 0.5).astype(np.int8)
        scores = metrics.multilabel_scores(y, predicted)
        ece = metrics.multilabel_calibration_error(proba, y)
        per_label_acc = float(np.mean(predicted == y))
        # Confidence of the whole label set, as the app shows it: prod max(p, 1 - p) (independent labels).
        joint = np.prod(np.maximum(proba, 1.0 - proba), axis=1)
        return QualityReport(
            n_eval=len(y), accuracy={"value": scores["subset_accuracy"], "low": None, "high": None},
            macro_f1={"value": scores["macro_f1"], "low": None, "high": None}, ece=ece,
            per_class=[
                {"label": name, "f1": _binary_f1(y[:, k], predicted[:, k]), "f1_low": None, "f1_high": None,
                 "precision": None, "recall": None, "support": int(y[:, k].sum())}
                for k, name in enumerate(label_names)
            ],
            extra={"micro_f1": scores["micro_f1"], "label_accuracy": per_label_acc},
            accuracy_coverage=metrics.accuracy_coverage(joint, np.all(predicted == y, axis=1)),
            calibration=calibration,
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
        accuracy_coverage=metrics.accuracy_coverage(proba.max(axis=1), predicted == y),
        calibration=calibration,
    )


def _binary_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp = float(np.sum((truth == 1) & (predicted == 1)))
    denom = float(np.sum(truth == 1) + np.sum(predicted == 1))
    return 2 * tp / denom if denom else 0.0


def calibrate(posterior: bayes.Posterior, X: np.ndarray, y: np.ndarray, *, seed: int,
              report: QualityReport | None = None) -> bayes.Posterior:
    """Fit the posterior's temperature and variance scale on cross-validated logits (subsampled).

    Given the ``report`` that ``evaluate(..., posterior=posterior)`` made, reuse the calibration
    it fitted on its out-of-fold logits (5 folds at this posterior's prior precision) instead of
    cross-validating again.
    """
    if report is not None and report.calibration is not None:
        posterior.temperature, posterior.variance_scale = report.calibration
        posterior.info["calibration_folds"] = FOLDS
        posterior.info.pop("calibration_from", None)
        return posterior
    rng = np.random.default_rng(seed)
    keep = _subsample(len(y), rng)
    return calibration.calibrate(posterior, X[keep], y[keep], rng=rng)
