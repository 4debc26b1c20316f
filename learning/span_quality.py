"""Live quality of a span model: cross-validated entity-level P/R/F1, per label with intervals, and its errors.

Plain module (numpy only). Like ``learning.quality`` for classification, it runs in the report job,
after the version already serves: 5 folds over the labelled examples (at most ``MAX_EVAL_ITEMS`` of
them), each fold's model warm-started from the version's, predicting the held-out examples' spans.

Scoring is ``learning.spans``' (seqeval's strict IOB2 definition: an entity counts only if its label
and both boundaries match): precision, recall and F1 micro over entities, overall and per label, with
95% percentile-bootstrap intervals over examples (entities of one sentence move together), and its
error breakdown (wrong type, wrong boundary, missed, spurious), which this module also splits by label
for the dashboard. ``accuracy_coverage`` is per example (all of the example's entities exactly right,
against its confidence: what routing an input to people needs) and ``span_precision_coverage`` per
predicted span (the precision of the spans kept at each confidence threshold).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from learning import acquisition, metrics, quality
from learning import spans as spanml

MAX_EVAL_ITEMS = 2000
FOLDS = 5
LEVEL = 0.95
N_BOOTSTRAP = 500


@dataclass
class PoolPrediction:
    """A span model's output on some examples (the rescore's and the cross-validation's unit)."""

    spans: list[list[dict[str, Any]]]  # per example: {"start", "end", "label", "confidence"} (char offsets)
    scores: np.ndarray  # per example: the acquisition score (token BALD aggregated by learning.spans)
    confidence: np.ndarray  # per example: the least sure token's probability of its most probable tag


def predict_pool(model: spanml.SpanModel, flat: np.ndarray, bounds: np.ndarray,
                 offsets: Sequence[Sequence[tuple[int, int]]], *, strategy: str = acquisition.DEFAULT_STRATEGY,
                 rng: np.random.Generator | None = None) -> PoolPrediction:
    """Suggested char spans, acquisition scores (per-token scores of ``strategy`` aggregated per example by
    ``spans.DEFAULT_AGGREGATION``) and confidences of some examples, from one pass over their packed token
    vectors (``flat``, example i owning rows [bounds[i], bounds[i + 1])). An example without tokens scores 0,
    has confidence 1 and no suggestion."""
    proba, scores = model.example_scores(np.asarray(flat, dtype=np.float32), bounds, strategy=strategy, rng=rng)
    proba = np.asarray(proba, dtype=np.float32)
    _, spans = model.predict_flat(proba, bounds, offsets, digits=4)
    # Each example's least sure token: one reduction over the chunk.
    confidence = np.ones(len(bounds) - 1)
    nonempty = np.diff(bounds) > 0
    if nonempty.any():
        confidence[nonempty] = np.minimum.reduceat(proba.max(axis=1), bounds[:-1][nonempty])
    return PoolPrediction(spans, np.asarray(scores, dtype=np.float64), confidence)


@dataclass
class ScoredPool:
    """A rescore of the whole pool: what the queue's rows hold."""

    scores: np.ndarray  # acquisition score (times density for the strategies that weight by it)
    priority: np.ndarray  # queue order: the diverse batch on top, then by score
    confidence: np.ndarray
    spans: list[list[dict[str, Any]]]


def score_pool(model: spanml.SpanModel,
               chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[Sequence[tuple[int, int]]]]],
               n: int, *, strategy: str, rng: np.random.Generator, density: np.ndarray | None,
               example_vectors: Callable[[], np.ndarray], batch_size: int) -> ScoredPool:
    """Score a pool of ``n`` examples given as consecutive chunks of (ids, packed token vectors, bounds, token
    offsets) (``token_store.TokenStore.iter_chunks`` plus the offsets), so only one chunk's vectors are in
    memory at a time; then weight by ``density`` and spread the next ``batch_size`` for diversity on the
    examples' sentence vectors (``example_vectors()``, read only if the strategy asks), as the classification
    default does. An example without tokens scores 0 and gets no suggestion."""
    spec = acquisition.get_strategy(strategy)
    scores = np.zeros(n)
    confidence = np.ones(n)
    suggested: list[list[dict[str, Any]]] = []
    at = 0
    for part, flat, bounds, offsets in chunks:
        pred = predict_pool(model, flat, bounds, offsets, strategy=strategy, rng=rng)
        scores[at:at + len(part)] = pred.scores
        confidence[at:at + len(part)] = pred.confidence
        suggested += pred.spans
        at += len(part)
    if at != n:
        raise ValueError(f"the chunks held {at} examples, not {n}")
    if spec.density and density is not None:
        scores = scores * density
    priority = scores.astype(np.float64).copy()
    if spec.diversity and n:
        batch = acquisition.select_batch(strategy, scores=scores, embeddings=example_vectors(),
                                         batch_size=batch_size, rng=rng)
        priority[batch] = float(priority.max()) + 1.0 + (len(batch) - np.arange(len(batch)))
    return ScoredPool(scores, priority, confidence, suggested)


class ReportInterrupted(Exception):
    """``should_stop`` asked the cross-validation to give way (a newer model is about to be fitted)."""


def label_errors(gold: Sequence[set[spanml.Entity]], pred: Sequence[set[spanml.Entity]], labels: Sequence[str]
                 ) -> list[dict[str, Any]]:
    """``spans.error_breakdown``'s counts split by label: wrong type and missed under the gold entity's label,
    wrong boundary and spurious under the predicted one's (the per-label rows add up to its totals)."""
    per: dict[str, dict[str, int]] = {label: {"wrong_type": 0, "wrong_boundary": 0, "missed": 0, "spurious": 0}
                                      for label in labels}
    for g, p in zip(gold, pred, strict=True):
        exact = g & p
        gold_bounds = {(a, b): label for label, a, b in g}
        for label, a, b in p - exact:
            if (a, b) in gold_bounds:
                per[gold_bounds[(a, b)]]["wrong_type"] += 1
            elif any(ga < b and a < gb for _, ga, gb in g):
                per[label]["wrong_boundary"] += 1
            else:
                per[label]["spurious"] += 1
        for label, a, b in g - exact:
            if not any(pa < b and a < pb for _, pa, pb in p):
                per[label]["missed"] += 1
    return [{"label": label, **per[label]} for label in labels]


def evaluate(vectors: Sequence[np.ndarray], targets: Sequence[np.ndarray], tagset: spanml.TagSet, *,
             label_names: Sequence[str], seed: int, model: spanml.SpanModel,
             should_stop: Callable[[], bool] | None = None, unseen: np.ndarray | None = None) -> dict[str, Any]:
    """The cross-validated report of a span model (JSON-safe dict for ``ModelVersion.metrics``).

    ``unseen`` (bool per sentence): after a fine-tune, the sentences its encoder was not trained on; only they are
    measured (every fold trains on the rest too), as ``quality.evaluate`` does for classification.
    """
    rng = np.random.default_rng(seed)
    n = len(vectors)
    keep, measured = quality.evaluation_rows(n, unseen, rng)
    folds = np.full(len(keep), -1)
    at = np.arange(len(keep)) if measured is None else np.flatnonzero(measured)
    folds[at] = rng.permutation(len(at)) % FOLDS
    predicted: list[set[spanml.Entity]] = [set() for _ in keep]
    span_conf: list[list[tuple[spanml.Entity, float]]] = [[] for _ in keep]
    example_conf = np.ones(len(keep))
    for fold in range(min(FOLDS, len(at))):
        if should_stop is not None and should_stop():
            raise ReportInterrupted
        test = np.flatnonzero(folds == fold)
        train = np.flatnonzero(folds != fold)
        try:
            fold_model = spanml.SpanModel.fit([vectors[keep[i]] for i in train], [targets[keep[i]] for i in train],
                                              tagset, warm=model, prior_precision=model.posterior.prior_precision)
        except spanml.bayes.ModelFitError:
            continue  # this fold's training part has no entity: its examples count as predicted empty
        out = fold_model.predict([vectors[keep[i]] for i in test])  # token spans: start/end are token indices
        for j, i in enumerate(test.tolist()):
            predicted[i] = spanml.entities_from_ids(out[j].tags, tagset)
            span_conf[i] = [((s["label"], s["start"], s["end"]), float(s["confidence"])) for s in out[j].spans]
            example_conf[i] = _example_confidence(out[j].marginals)
    if measured is not None:  # only the sentences the encoder never saw are scored
        predicted = [predicted[j] for j in at]
        span_conf = [span_conf[j] for j in at]
        example_conf = example_conf[at]
        keep = keep[at]
    gold = [spanml.entities_from_ids(targets[i], tagset) for i in keep.tolist()]
    keys = list(tagset.keys)
    report = spanml.entity_report(gold, predicted, keys, level=LEVEL, n_boot=N_BOOTSTRAP, rng=rng)
    names = dict(zip(keys, label_names, strict=True))
    per_class = [{**row, "label": names[row["label"]]} for row in report["per_label"]]
    errors = {**report["errors"], "per_label": [{**row, "label": names[row["label"]]}
                                                for row in label_errors(gold, predicted, keys)]}
    exact = np.array([g == p for g, p in zip(gold, predicted, strict=True)], dtype=np.float64)
    flat = [(c, float(e in gold[i])) for i, row in enumerate(span_conf) for e, c in row]
    n_pred = int(sum(len(p) for p in predicted))
    return _clean({
        "task": "span",
        "n_eval": int(len(keep)),
        "n_gold_entities": int(sum(len(g) for g in gold)),
        "n_predicted_entities": n_pred,
        # Precision is undefined (None, not 0) when the model predicted nothing.
        "entity_f1": report["f1"], "entity_recall": report["recall"],
        "entity_precision": report["precision"] if n_pred else {"value": None, "low": None, "high": None},
        # The classification figures' names, so lists, webhooks and the learning curve read span versions too:
        # macro_f1 is the entity F1 averaged over labels with gold entities, accuracy the share of examples
        # whose entities are all exactly right.
        "macro_f1": report["macro_f1"],
        "accuracy": {"value": float(exact.mean()) if len(exact) else None, "low": None, "high": None},
        "per_class": per_class,
        "errors": errors,
        "accuracy_coverage": metrics.accuracy_coverage(example_conf, exact),
        "span_precision_coverage": metrics.accuracy_coverage(np.array([c for c, _ in flat]),
                                                             np.array([ok for _, ok in flat])),
        "span_ece": spanml.span_calibration_error(np.array([c for c, _ in flat]), np.array([ok for _, ok in flat]))
        if flat else None,
        "interval_level": LEVEL,
        **({} if unseen is None else {"unseen_only": measured is not None,
                                      "trained_on": 0 if measured is not None else int(n - np.sum(unseen))}),
    })


def _example_confidence(marginals: np.ndarray) -> float:
    """The least sure token's probability of its most probable tag (1 for an empty example)."""
    return float(marginals.max(axis=1).min()) if len(marginals) else 1.0


def _macro(per_label: list[dict[str, Any]]) -> dict[str, float | None]:
    values = [row["f1"] for row in per_label if row["f1"] is not None and (row["support"] or row["predicted"])]
    return {"value": float(np.mean(values)) if values else None, "low": None, "high": None}


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
