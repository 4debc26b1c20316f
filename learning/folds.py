"""Cross-validation folds that keep every class in every fold where it can. Pure math (no Django)."""
from __future__ import annotations

import numpy as np


def stratified_folds(y: np.ndarray, folds: int, rng: np.random.Generator, *, multi_label: bool = False) -> np.ndarray:
    """Fold index per example; each class is dealt round-robin from a random start."""
    keys = y.argmax(axis=1) if multi_label and y.ndim == 2 else y
    assignment = np.empty(len(keys), dtype=np.int64)
    offset = 0
    for cls in np.unique(keys):
        members = np.flatnonzero(keys == cls)
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return assignment
