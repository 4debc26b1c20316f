"""The same label-efficiency replay with the `small-text` library's query strategies.

Used by label_efficiency.py so both sets of curves come from one run: the same cached
embeddings, the same seed set per repeat (built by the same code as ours, see
``learning.simulation.run_strategy``), the same batch size, budget and test split. Only the
model and the query strategy differ: small-text's ``PoolBasedActiveLearner`` drives the loop
with its ``SklearnClassifier`` wrapping a scikit-learn ``LogisticRegression`` (library defaults,
C=1.0, retrained from scratch on every update as small-text does), and its own strategies
choose each batch.

Strategies, as named in small-text 1.4.1:
- random: ``RandomSampling``
- least_confidence: ``LeastConfidence``
- entropy: ``PredictionEntropy`` (its per-row scoring vectorised, same values: see below)
- margin: ``BreakingTies`` (smallest gap between the two most likely classes)
- bald: ``BALD``. small-text computes it from ``clf.predict_proba(dataset,
  dropout_sampling=S)``, which only its PyTorch/transformers classifiers implement (MC dropout);
  its ``SklearnClassifier`` has no such argument, so BALD cannot run on it as shipped. To still
  compare, ``BootstrapClassifier`` below answers that call with the predictions of S logistic
  regressions fitted on bootstrap resamples of the labelled set (a standard stand-in for
  posterior samples of a model without dropout). small-text's BALD code then scores and picks
  as usual. This adapter is ours, not small-text's.

Plain module: no Django.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import entropy as scipy_entropy
from sklearn.linear_model import LogisticRegression
from small_text import (
    BALD,
    LABEL_UNLABELED,
    BreakingTies,
    LeastConfidence,
    PoolBasedActiveLearner,
    PredictionEntropy,
    RandomSampling,
    SklearnClassifier,
    SklearnClassifierFactory,
    SklearnDataset,
)
from small_text.query_strategies import QueryStrategy

from learning import acquisition, metrics, simulation

STRATEGIES = ["random", "least_confidence", "entropy", "margin", "bald"]
BOOTSTRAP_MEMBERS = 10
ProgressCallback = Callable[[str, int, int, dict[str, float]], None]


def small_text_version() -> str:
    from importlib.metadata import version

    return version("small-text")


def base_estimator() -> LogisticRegression:
    # Library defaults except max_iter: lbfgs' default 100 iterations stops short on a few
    # hundred 384-d rows and floods the log with ConvergenceWarnings.
    return LogisticRegression(max_iter=1000)


def full_proba(model: LogisticRegression, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities; a class absent from the labelled set gets probability 0."""
    proba = np.zeros((X.shape[0], n_classes))
    proba[:, model.classes_] = model.predict_proba(X)
    return proba


class BootstrapClassifier(SklearnClassifier):
    """SklearnClassifier that answers ``predict_proba(..., dropout_sampling=S)`` (BALD's call)
    with S bootstrap-resampled logistic regressions, shape (N, S, K)."""

    def __init__(
        self, model: LogisticRegression, num_classes: int, *, members: int = BOOTSTRAP_MEMBERS, seed: int = 0
    ) -> None:
        super().__init__(model, num_classes)
        self.members = members
        self.rng = np.random.default_rng(seed)
        self.ensemble: list[LogisticRegression] = []

    def fit(self, train_set: SklearnDataset, weights: np.ndarray | None = None) -> BootstrapClassifier:
        super().fit(train_set, weights=weights)
        X, y = train_set.x, np.asarray(train_set.y)
        self.ensemble = []
        while len(self.ensemble) < self.members:
            take = self.rng.integers(0, len(y), size=len(y))
            if np.unique(y[take]).size < 2:
                continue
            self.ensemble.append(base_estimator().fit(X[take], y[take]))
        return self

    def predict_proba(self, data_set: SklearnDataset, dropout_sampling: int = 1) -> np.ndarray:
        if dropout_sampling <= 1:
            return super().predict_proba(data_set)
        members = self.ensemble[: min(dropout_sampling, len(self.ensemble))]
        return np.stack([full_proba(m, data_set.x, self.num_classes) for m in members], axis=1)


class BootstrapClassifierFactory(SklearnClassifierFactory):
    def __init__(self, num_classes: int, seed: int) -> None:
        super().__init__(base_estimator(), num_classes)
        self.seed = seed
        self.built = 0

    def new(self) -> BootstrapClassifier:
        self.built += 1
        return BootstrapClassifier(base_estimator(), self.num_classes, seed=self.seed * 100_003 + self.built)


class VectorisedPredictionEntropy(PredictionEntropy):
    """small-text's PredictionEntropy, scored in one call instead of one scipy call per row.

    The library applies ``scipy.stats.entropy`` row by row (``np.apply_along_axis``): about
    2 s per batch on a 2,000-row pool and 10 s on 10,000 rows here, which would dominate the
    whole benchmark. ``entropy(proba, axis=1)`` computes the same values; the selection
    (``ConfidenceBasedQueryStrategy.query``) is the library's own.
    """

    def get_confidence(self, clf, dataset, _indices_unlabeled, _indices_labeled, _y):  # type: ignore[no-untyped-def]
        return scipy_entropy(clf.predict_proba(dataset), axis=1)


def _query_strategy(name: str) -> QueryStrategy:
    if name == "random":
        return RandomSampling()
    if name == "least_confidence":
        return LeastConfidence()
    if name == "entropy":
        return VectorisedPredictionEntropy()
    if name == "margin":
        return BreakingTies()
    if name == "bald":
        return BALD(dropout_samples=BOOTSTRAP_MEMBERS)
    raise ValueError(f"unknown small-text strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def _evaluate(model: LogisticRegression, X_test: np.ndarray, y_test: np.ndarray, n_classes: int) -> dict[str, float]:
    proba = full_proba(model, X_test.astype(np.float64), n_classes)
    pred = proba.argmax(axis=1)
    return {
        "accuracy": metrics.accuracy(y_test, pred),
        "macro_f1": metrics.macro_f1(y_test, pred, n_classes),
        "ece": metrics.expected_calibration_error(proba, y_test),
    }


def run_strategy(
    name: str,
    *,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    seed_size: int,
    batch_size: int,
    budget: int,
    seed: int,
    progress: ProgressCallback | None = None,
) -> list[dict[str, float]]:
    """One small-text learning curve, point for point comparable with simulation.run_strategy."""
    rng = np.random.default_rng(seed)
    n = X_train.shape[0]
    budget = min(budget, n)
    # The very same seed set as ours for this repeat: random rows for random, the diverse
    # (k-means) seed for every other strategy, drawn from the same generator state.
    if name == "random":
        initial = rng.choice(n, size=min(seed_size, budget), replace=False)
    else:
        initial = acquisition.select_seed(X_train, min(seed_size, budget), rng)
    np.random.seed(seed)  # small-text's RandomSampling draws from numpy's global generator
    if name == "bald":
        factory: SklearnClassifierFactory = BootstrapClassifierFactory(n_classes, seed)
    else:
        factory = SklearnClassifierFactory(base_estimator(), n_classes)
    # The pool carries no gold labels: the simulated annotator answers only what is queried.
    # float64: with float32 rows scikit-learn returns float32 probabilities, and the entropy
    # of the many items near a tie then rounds to equal values, so ties, not the strategy,
    # would pick the batch.
    pool = SklearnDataset(X_train.astype(np.float64), np.full(n, LABEL_UNLABELED), target_labels=np.arange(n_classes))
    learner = PoolBasedActiveLearner(factory, _query_strategy(name), pool)
    started = time.perf_counter()
    learner.initialize_data(np.asarray(initial, dtype=np.int64), y_train[initial])
    fit_seconds = time.perf_counter() - started
    points: list[dict[str, float]] = []
    while True:
        n_labels = len(learner.indices_labeled)
        remaining = budget - n_labels
        query_seconds = 0.0
        queried = np.empty(0, dtype=np.int64)
        if remaining > 0:
            started = time.perf_counter()
            queried = learner.query(num_samples=min(batch_size, remaining))
            query_seconds = time.perf_counter() - started
        model = learner.classifier.model
        point = {"n_labels": int(n_labels), **_evaluate(model, X_test, y_test, n_classes)}
        point["update_seconds"] = float(fit_seconds + query_seconds)
        points.append(point)
        if progress is not None:
            progress(f"small-text {name}", seed, n_labels, point)
        if remaining <= 0:
            break
        started = time.perf_counter()
        learner.update(y_train[queried])  # retrains on all labels so far
        fit_seconds = time.perf_counter() - started
    return points


def simulate(
    *,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    strategies: list[str],
    seed_size: int,
    batch_size: int,
    budget: int,
    repeats: int,
    reference_target: float | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """small-text curves in the harness's JSON shape (summaries against small-text's own random).

    ``reference_target`` (our random's macro-F1 at the budget) adds
    ``labels_to_reach_reference`` to each summary, so the two libraries can also be read
    against one yardstick.
    """
    for name in strategies:
        _query_strategy(name)
    y_train = np.asarray(y_train)
    y_test = np.asarray(y_test)
    result: dict[str, Any] = {
        "strategies": {},
        "config": {
            "library": f"small-text {small_text_version()}",
            "classifier": "SklearnClassifier(LogisticRegression(max_iter=1000)), refit from scratch each batch",
            "bald": f"small-text BALD over {BOOTSTRAP_MEMBERS} bootstrap LogisticRegressions (our adapter)",
            "strategies": list(strategies),
            "seed_size": seed_size,
            "batch_size": batch_size,
            "budget": int(min(budget, len(y_train))),
            "repeats": repeats,
        },
    }
    simulation.run_repeats(result, strategies, repeats, lambda name, seed: run_strategy(
        name, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, n_classes=n_classes,
        seed_size=seed_size, batch_size=batch_size, budget=budget, seed=seed, progress=progress,
    ))
    simulation.summarise(result)
    for entry in result["strategies"].values():
        reached = None
        if reference_target is not None:
            n_labels = np.array([p["n_labels"] for p in entry["runs"][0]["points"]])
            curve = np.mean([[p["macro_f1"] for p in run["points"]] for run in entry["runs"]], axis=0)
            hits = np.flatnonzero(curve >= reference_target - 1e-12)
            reached = int(n_labels[hits[0]]) if hits.size else None
        entry["summary"]["reference_macro_f1"] = reference_target
        entry["summary"]["labels_to_reach_reference"] = reached
    return result
