"""Inter-annotator agreement on items labelled by several people (projects with an overlap above 1).

Plain module (no Django), so the math has its own property tests. An item's
label is the set of label keys an annotator gave it; two annotators agree when
the sets are equal, so the same measure serves single- and multi-label projects.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


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
