"""From predictive probabilities to decisions: the labels a model predicts and its confidence in them.

Pure math on arrays (no Django): the learning loop's suggestions and the
prediction API's answers both come from here, so they cannot disagree.
"""
from __future__ import annotations

import numpy as np


def predicted_keys(proba: np.ndarray, keys: list[str], multi_label: bool) -> list[list[str]]:
    """The predicted label keys per row: the argmax, or every label at 0.5 or more for multi-label."""
    if multi_label:
        return [[keys[j] for j in np.flatnonzero(row >= 0.5)] for row in proba]
    best = np.argmax(proba, axis=1)
    return [[keys[j]] for j in best.tolist()]


def confidence(proba: np.ndarray, multi_label: bool) -> np.ndarray:
    """The probability that the prediction is right (for multi-label, every per-label decision)."""
    if multi_label:
        # The probability that every per-label decision is right, under independence.
        return np.prod(np.maximum(proba, 1 - proba), axis=1)
    return proba.max(axis=1)
