"""Monitoring of the prediction API: volume, automation rate, confidence over time, and drift.

Drift compares the embeddings of recent inputs with a sample of the serving version's
training embeddings (`DriftReference`, stored after training): the share of recent
inputs farther from every training example than 95 % of training examples are from
their nearest neighbour. Without drift that share stays near 5 %; a rise means inputs
unlike anything the model was trained on.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from projects.models import Project
from serving.models import DriftReference, Prediction

CONFIDENCE_BINS = 10
RECENT_FOR_DRIFT = 1000
EXPECTED_OUTSIDE = 0.05


def nearest_neighbour_radius(X: np.ndarray, *, quantile: float = 0.95) -> float:
    """The `quantile` of each row's cosine distance to its nearest other row (rows are unit vectors)."""
    X = np.asarray(X, dtype=np.float32)
    if len(X) < 2:
        return 1.0
    nearest = np.full(len(X), np.inf, dtype=np.float32)
    for start in range(0, len(X), 1024):
        sims = X[start:start + 1024] @ X.T
        np.fill_diagonal(sims[:, start:start + 1024], -np.inf)
        nearest[start:start + 1024] = 1.0 - sims.max(axis=1)
    return float(np.quantile(nearest, quantile))


def distance_to_reference(X: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine distance of each row of X to its nearest reference row."""
    out = np.empty(len(X), dtype=np.float32)
    for start in range(0, len(X), 1024):
        out[start:start + 1024] = 1.0 - (X[start:start + 1024] @ reference.T).max(axis=1)
    return out


def drift(project: Project, *, version_id: int | None) -> dict[str, Any] | None:
    """{'outside', 'expected', 'n_recent', 'centroid_shift', 'model_version', 'level'} or None when unknown."""
    reference = DriftReference.objects.filter(model_version_id=version_id).first() if version_id else None
    if reference is None:
        return None
    rows = list(Prediction.objects.filter(project=project, embedding__isnull=False)
                .order_by("-created_at").values_list("embedding", flat=True)[:RECENT_FOR_DRIFT])
    vectors = [np.frombuffer(bytes(b), dtype=np.float16) for b in rows if b]
    vectors = [v for v in vectors if v.shape[0] == reference.dim]
    if len(vectors) < 20:
        return {"n_recent": len(vectors), "outside": None, "expected": EXPECTED_OUTSIDE, "centroid_shift": None,
                "level": "unknown", "radius": reference.radius}
    X = np.stack(vectors).astype(np.float32)
    R = reference.vectors_array()
    outside = float((distance_to_reference(X, R) > reference.radius).mean())
    a, b = X.mean(axis=0), R.mean(axis=0)
    shift = float(1.0 - a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    level = "ok" if outside < 0.15 else ("watch" if outside < 0.3 else "drift")
    return {"n_recent": len(vectors), "outside": outside, "expected": EXPECTED_OUTSIDE, "centroid_shift": shift,
            "level": level, "radius": reference.radius}


def timeline(project: Project, *, days: int = 14, now: Any = None) -> dict[str, Any]:
    """Per day (or per hour when the window is a day or less): volume, automation rate, routed count,
    and the confidence distribution (10 bins), for the Chart.js panels."""
    now = now or timezone.now()
    since = now - timedelta(days=days)
    hourly = days <= 1
    rows = list(Prediction.objects.filter(project=project, created_at__gte=since)
                .order_by("created_at").values_list("created_at", "confidence", "is_uncertain", "is_routed")[:200000])
    buckets: dict[str, dict[str, Any]] = {}
    for created_at, confidence, uncertain, routed in rows:
        moment = timezone.localtime(created_at)
        key = moment.strftime("%Y-%m-%d %H:00") if hourly else moment.strftime("%Y-%m-%d")
        bucket = buckets.setdefault(key, {"period": key, "total": 0, "automated": 0, "routed": 0,
                                          "bins": [0] * CONFIDENCE_BINS})
        bucket["total"] += 1
        bucket["automated"] += 0 if uncertain else 1
        bucket["routed"] += 1 if routed else 0
        bucket["bins"][min(int(confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1
    series = list(buckets.values())
    for bucket in series:
        bucket["automation_rate"] = bucket["automated"] / bucket["total"]
    total = len(rows)
    automated = sum(b["automated"] for b in series)
    overall_bins = [sum(b["bins"][i] for b in series) for i in range(CONFIDENCE_BINS)]
    return {
        "days": days, "series": series, "total": total, "automated": automated,
        "routed": sum(b["routed"] for b in series),
        "automation_rate": automated / total if total else None,
        "confidence_bins": overall_bins,
        "bin_edges": [i / CONFIDENCE_BINS for i in range(CONFIDENCE_BINS + 1)],
    }
