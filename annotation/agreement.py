"""Inter-annotator agreement on items labelled by several people (projects with an overlap above 1).

Plain module (no Django), so the math has its own tests against published worked examples. An
item's label is the set of label keys an annotator gave it; two annotators agree when the sets are
equal, so the same measures serve single- and multi-label projects. Per label, each annotator's
answer is reduced to "gave this label or not" (one-vs-rest), which is where a multi-label project's
disagreements usually show.

Three chance-corrected measures, because readers come with different habits: Cohen's kappa for a
pair of annotators, Fleiss' kappa for any number, Krippendorff's alpha (nominal; the `krippendorff`
package computes the point value) which also copes with missing ratings and small samples. The
intervals are percentile bootstraps over items (items are the sampling unit; annotators are
fixed): every resample reweights the items, and each measure is a closed form of per-item counts,
so a resample costs one matrix product instead of a recomputation.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import krippendorff
import numpy as np


@dataclass(frozen=True)
class Agreement:
    items: int  # items with at least two annotators
    ratings: int
    observed: float  # share of agreeing annotator pairs, averaged over items
    kappa: float | None  # Fleiss' kappa; None where chance agreement is 1 (one category only)


def fleiss(items: Sequence[Sequence[Hashable]]) -> Agreement | None:
    """Observed pairwise agreement and Fleiss' kappa, for items with varying numbers of annotators.

    Each item lists the categories its annotators chose; items with fewer than two
    are ignored. Chance agreement uses the pooled category shares (Fleiss 1971,
    with per-item pair weights so items may have different numbers of raters).
    """
    rated = [item for item in items if len(item) >= 2]
    if not rated:
        return None
    pooled: Counter[Hashable] = Counter()
    per_item = []
    for item in rated:
        counts = Counter(item)
        pooled.update(counts)
        n = len(item)
        per_item.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
    observed = sum(per_item) / len(per_item)
    total = sum(pooled.values())
    expected = sum((c / total) ** 2 for c in pooled.values())
    kappa = None if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return Agreement(items=len(rated), ratings=total, observed=observed, kappa=kappa)


# --- Closed forms on count matrices, vectorised over bootstrap weights ----------------------------------------------
#
# `counts` is (items, categories): how many annotators chose each category for each item. `weights` is
# (B, items): how often each item is drawn in each resample (all ones: the point value). Each function
# returns (B,) values, NaN where the measure is undefined (one category only).


def _fleiss_weighted(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    m = counts.sum(axis=1)
    per_item = (counts * (counts - 1)).sum(axis=1) / (m * (m - 1))
    total_w = weights.sum(axis=1)
    observed = weights @ per_item / total_w
    shares = (weights @ counts) / (weights @ m)[:, None]
    expected = (shares**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected < 1.0 - 1e-12, (observed - expected) / (1.0 - expected), np.nan)


def _alpha_weighted(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Krippendorff's nominal alpha: 1 - (n - 1) * sum_u d_u / (n^2 - sum_c n_c^2), with
    d_u = (m_u^2 - sum_c n_uc^2) / (m_u - 1) the disagreeing pairable values of item u."""
    m = counts.sum(axis=1)
    disagreeing = (m**2 - (counts**2).sum(axis=1)) / (m - 1)
    n = weights @ m
    n_c = weights @ counts
    denominator = n**2 - (n_c**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 1e-12, 1.0 - (n - 1) * (weights @ disagreeing) / denominator, np.nan)


def _cohen_weighted(a: np.ndarray, b: np.ndarray, n_categories: int, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of two raters' category indices over the same items."""
    eye = np.eye(n_categories)
    total = weights.sum(axis=1)
    observed = weights @ (a == b).astype(np.float64) / total
    expected = ((weights @ eye[a]) * (weights @ eye[b])).sum(axis=1) / total**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected < 1.0 - 1e-12, (observed - expected) / (1.0 - expected), np.nan)


def _counts(items: Sequence[Sequence[Hashable]]) -> np.ndarray:
    """(items, categories) counts of the items with at least two ratings."""
    rated = [item for item in items if len(item) >= 2]
    index: dict[Hashable, int] = {}
    for item in rated:
        for value in item:
            index.setdefault(value, len(index))
    counts = np.zeros((len(rated), max(len(index), 1)))
    for u, item in enumerate(rated):
        for value in item:
            counts[u, index[value]] += 1
    return counts


def _value(values: np.ndarray) -> float | None:
    value = float(values[0])
    return None if np.isnan(value) else value


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two annotators' answers on the same items, in the same order (None: one category only)."""
    if len(a) != len(b):
        raise ValueError("Cohen's kappa needs both annotators' answers on the same items.")
    if not a:
        return None
    index: dict[Hashable, int] = {}
    ia = np.array([index.setdefault(v, len(index)) for v in a])
    ib = np.array([index.setdefault(v, len(index)) for v in b])
    return _value(_cohen_weighted(ia, ib, len(index), np.ones((1, len(a)))))


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa of items with two or more answers each (see `fleiss`)."""
    counts = _counts(items)
    return _value(_fleiss_weighted(counts, np.ones((1, len(counts))))) if len(counts) else None


def krippendorff_alpha(items: Sequence[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha (nominal) from each item's answers, by the `krippendorff` package.

    Items with fewer than two answers carry no pairable values and are left out, as alpha does.
    """
    counts = _counts(items)
    if len(counts) == 0 or np.isnan(_alpha_weighted(counts, np.ones((1, len(counts))))[0]):
        return None  # one category only: alpha's expected disagreement is 0
    return float(krippendorff.alpha(value_counts=counts, level_of_measurement="nominal"))


# --- Intervals ------------------------------------------------------------------------------------------------------

BOOTSTRAP = 200
_BLOCK = 50  # resamples per matrix product: bounds memory at 50 x items floats


@dataclass(frozen=True)
class Estimate:
    """A measure with its 95% percentile-bootstrap interval over items (None where undefined)."""

    value: float | None
    low: float | None = None
    high: float | None = None
    items: int = 0


def _resample_weights(n_items: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n_items): how often each item is drawn in each of `size` resamples with replacement."""
    drawn = rng.integers(0, n_items, size=(size, n_items)) + (np.arange(size) * n_items)[:, None]
    return np.bincount(drawn.ravel(), minlength=size * n_items).reshape(size, n_items).astype(np.float64)


def _bootstrap(measure: object, n_items: int, *, rng: np.random.Generator, point: float | None,
               resamples: int = BOOTSTRAP, shared: dict[int, list[np.ndarray]] | None = None) -> Estimate:
    """`measure(weights)` -> (B,) values; resample items with replacement `resamples` times.

    `shared` keeps the resamples per item count, so the measures of one report over the same items (overall
    and per label) are read off the same draws: cheaper, and their intervals comparable.
    """
    if point is None or n_items < 2 or resamples <= 0:
        return Estimate(point, None, None, n_items)
    values = []
    blocks = shared.get(n_items) if shared is not None else None
    if blocks is None:
        blocks = [_resample_weights(n_items, min(_BLOCK, resamples - start), rng)
                  for start in range(0, resamples, _BLOCK)]
        if shared is not None:
            shared[n_items] = blocks
    for weights in blocks:
        values.append(measure(weights))  # type: ignore[operator]
    sample = np.concatenate(values)
    sample = sample[~np.isnan(sample)]
    if len(sample) < resamples // 2:
        return Estimate(point, None, None, n_items)
    low, high = np.percentile(sample, [2.5, 97.5])
    return Estimate(point, float(low), float(high), n_items)


# --- The report -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelAgreement:
    key: str
    items: int  # items on which at least one annotator gave this label
    fleiss: Estimate
    alpha: Estimate


@dataclass(frozen=True)
class PairAgreement:
    a: Hashable
    b: Hashable
    items: int  # items both labelled
    observed: float  # share of those on which they gave the same labels
    kappa: Estimate


@dataclass(frozen=True)
class AnnotatorAgreement:
    rater: Hashable
    items: int  # items this annotator labelled that have a final label
    adjudicated: int  # of which a manager adjudicated
    observed: float  # share on which this annotator's answer is the final label
    kappa: Estimate


@dataclass(frozen=True)
class AgreementReport:
    items: int
    ratings: int
    observed: float
    fleiss: Estimate
    alpha: Estimate
    per_label: list[LabelAgreement] = field(default_factory=list)
    pairs: list[PairAgreement] = field(default_factory=list)
    annotators: list[AnnotatorAgreement] = field(default_factory=list)


Answer = tuple[str, ...]


def agreement_report(answers: Sequence[Mapping[Any, Answer]], *, label_keys: Sequence[str],
                     targets: Sequence[Answer | None] | None = None, adjudicated: Sequence[bool] | None = None,
                     resamples: int = BOOTSTRAP, seed: int = 0) -> AgreementReport | None:
    """Every agreement figure of a set of items labelled by several annotators.

    `answers[i]` maps each annotator of item i to the sorted label keys they gave; items with fewer than
    two annotators are left out. `targets[i]` is item i's final label (adjudicated, unanimous or
    majority; None for an unresolved tie) and `adjudicated[i]` whether a person chose it; each
    annotator's agreement with the final label is measured on the items that have one.
    """
    rows = [(i, item) for i, item in enumerate(answers) if len(item) >= 2]
    if not rows:
        return None
    rng = np.random.default_rng(seed)
    shared: dict[int, list[np.ndarray]] = {}  # the overall and per-label measures share the item resamples
    overall = [list(item.values()) for _, item in rows]
    counts = _counts(overall)
    n = len(counts)
    plain = fleiss(overall)
    assert plain is not None
    alpha_point = krippendorff_alpha(overall)
    fleiss_est = _bootstrap(lambda w: _fleiss_weighted(counts, w), n, rng=rng, point=plain.kappa,
                            resamples=resamples, shared=shared)
    alpha_est = _bootstrap(lambda w: _alpha_weighted(counts, w), n, rng=rng, point=alpha_point, resamples=resamples,
                           shared=shared)

    # Per item: how many annotators gave each label, and how many answered.
    label_index = {key: j for j, key in enumerate(label_keys)}
    gave = np.zeros((n, len(label_keys)))
    for u, (_, item) in enumerate(rows):
        for answer in item.values():
            for key in answer:
                if key in label_index:
                    gave[u, label_index[key]] += 1
    answered = counts.sum(axis=1)
    per_label = []
    for key in label_keys:
        yes = gave[:, label_index[key]]
        given = np.column_stack([answered - yes, yes])
        with_key = int((given[:, 1] > 0).sum())
        if not with_key:
            continue
        ones = np.ones((1, n))
        f_point = _value(_fleiss_weighted(given, ones))
        a_point = (float(krippendorff.alpha(value_counts=given, level_of_measurement="nominal"))
                   if _value(_alpha_weighted(given, ones)) is not None else None)
        per_label.append(LabelAgreement(
            key=key, items=with_key,
            fleiss=_bootstrap(lambda w, g=given: _fleiss_weighted(g, w), n, rng=rng, point=f_point,
                              resamples=resamples, shared=shared),
            alpha=_bootstrap(lambda w, g=given: _alpha_weighted(g, w), n, rng=rng, point=a_point,
                             resamples=resamples, shared=shared)))

    raters = sorted({r for _, item in rows for r in item}, key=str)
    pairs = []
    for a, b in combinations(raters, 2):
        both = [(item[a], item[b]) for _, item in rows if a in item and b in item]
        if not both:
            continue
        index: dict[Answer, int] = {}
        ia = np.array([index.setdefault(x, len(index)) for x, _ in both])
        ib = np.array([index.setdefault(y, len(index)) for _, y in both])
        k = len(index)
        point = _value(_cohen_weighted(ia, ib, k, np.ones((1, len(both)))))
        pairs.append(PairAgreement(
            a=a, b=b, items=len(both), observed=float((ia == ib).mean()),
            kappa=_bootstrap(lambda w, x=ia, y=ib, c=k: _cohen_weighted(x, y, c, w), len(both), rng=rng,
                             point=point, resamples=resamples)))

    annotators = []
    if targets is not None:
        flags = adjudicated if adjudicated is not None else [False] * len(answers)
        for rater in raters:
            paired = [(item[rater], targets[i], flags[i]) for i, item in rows
                      if rater in item and targets[i] is not None]
            if not paired:
                continue
            index = {}
            ia = np.array([index.setdefault(x, len(index)) for x, _, _ in paired])
            it = np.array([index.setdefault(t, len(index)) for _, t, _ in paired])  # type: ignore[arg-type]
            k = len(index)
            point = _value(_cohen_weighted(ia, it, k, np.ones((1, len(paired)))))
            annotators.append(AnnotatorAgreement(
                rater=rater, items=len(paired), adjudicated=sum(1 for *_, f in paired if f),
                observed=float((ia == it).mean()),
                kappa=_bootstrap(lambda w, x=ia, y=it, c=k: _cohen_weighted(x, y, c, w), len(paired), rng=rng,
                                 point=point, resamples=resamples)))

    return AgreementReport(items=n, ratings=plain.ratings, observed=plain.observed, fleiss=fleiss_est,
                           alpha=alpha_est, per_label=per_label, pairs=pairs, annotators=annotators)
