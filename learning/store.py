"""Loading a project's embeddings fast, once per process.

A worker keeps the last matrices it loaded (per project and encoder) and only
reads the chunks added since, so a model update after each few labels costs no
database read of the whole pool.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from learning.models import EmbeddingChunk


@dataclass
class ProjectEmbeddings:
    example_ids: np.ndarray  # (N,) int64, sorted
    vectors: np.ndarray  # (N, D) float32
    last_chunk_id: int

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of the given example ids (every id must be present)."""
        return np.searchsorted(self.example_ids, ids)

    def has(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.example_ids, ids)
        pos = np.minimum(pos, max(len(self.example_ids) - 1, 0))
        return (self.example_ids[pos] == ids) if len(self.example_ids) else np.zeros(len(ids), dtype=bool)


_cache: dict[tuple[int, str], ProjectEmbeddings] = {}
_lock = threading.Lock()


def load(project_id: int, encoder: str) -> ProjectEmbeddings:
    """All embeddings of a project for an encoder, reading only chunks this process has not seen."""
    with _lock:
        cached = _cache.get((project_id, encoder))
    after = cached.last_chunk_id if cached else 0
    chunks = list(EmbeddingChunk.objects.filter(project_id=project_id, encoder=encoder, id__gt=after).order_by("id"))
    if cached is not None and not chunks:
        return cached
    parts_ids = [cached.example_ids] if cached else []
    parts_vec = [cached.vectors] if cached else []
    for chunk in chunks:
        parts_ids.append(chunk.ids_array())
        parts_vec.append(chunk.vectors_array().astype(np.float32))
    if not parts_ids:
        empty = ProjectEmbeddings(np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32), 0)
        return empty
    ids = np.concatenate(parts_ids)
    vectors = np.concatenate(parts_vec)
    order = np.argsort(ids, kind="stable")
    result = ProjectEmbeddings(ids[order], vectors[order], chunks[-1].id if chunks else after)
    with _lock:
        _cache[(project_id, encoder)] = result
    return result


def forget(project_id: int) -> None:
    with _lock:
        for key in [key for key in _cache if key[0] == project_id]:
            del _cache[key]
