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
    n_chunks: int = 0  # how many chunks these rows came from: fewer in the database means some were dropped

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
    stored = EmbeddingChunk.objects.filter(project_id=project_id, encoder=encoder)
    if cached is not None and stored.filter(id__lte=after).count() != cached.n_chunks:
        # Examples were deleted (`drop`, maybe in another process): their chunks were rewritten.
        cached, after = None, 0
    chunks = list(stored.filter(id__gt=after).order_by("id"))
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
    result = ProjectEmbeddings(ids[order], vectors[order], chunks[-1].id if chunks else after,
                               (cached.n_chunks if cached else 0) + len(chunks))
    with _lock:
        _cache[(project_id, encoder)] = result
    return result


_density: dict[tuple[int, str], tuple[int, np.ndarray, np.ndarray]] = {}
REDENSITY_GROWTH = 0.1


def density_of(project_id: int, encoder: str, ids: np.ndarray) -> np.ndarray:
    """Information density of the given examples among all of the project's, cached per process.

    It depends only on the embeddings. The full computation (against a fixed reference
    sample, a few seconds for a million examples) reruns when the project has grown by a
    tenth; examples that arrive in between (e.g. inputs routed by the prediction API) are
    measured against the cached values' ids only, which costs next to nothing.
    """
    from learning.acquisition import information_density

    emb = load(project_id, encoder)
    with _lock:
        cached = _density.get((project_id, encoder))
    if cached is None or len(emb.example_ids) > len(cached[1]) * (1 + REDENSITY_GROWTH):
        values = information_density(emb.vectors, rng=np.random.default_rng(project_id))
        cached = (emb.last_chunk_id, emb.example_ids.copy(), values)
    elif cached[0] != emb.last_chunk_id:
        known = np.isin(emb.example_ids, cached[1], assume_unique=True)
        values = np.empty(len(emb.example_ids))
        values[known] = cached[2][np.searchsorted(cached[1], emb.example_ids[known])]
        if (~known).any():
            # Against the rows already measured (plus themselves), as a stand-in until the next full pass.
            sample = emb.vectors[known][:2000]
            fresh = emb.vectors[~known]
            values[~known] = information_density(np.vstack([fresh, sample]))[: len(fresh)]
        cached = (emb.last_chunk_id, emb.example_ids.copy(), values)
    with _lock:
        _density[(project_id, encoder)] = cached
    return cached[2][np.searchsorted(cached[1], ids)]


def drop(project_id: int, example_ids: list[int] | np.ndarray) -> int:
    """Remove deleted examples' vectors (in the caller's transaction); returns how many rows went.

    A chunk holding any of them is replaced by a new one without them, so every process sees
    its cached chunk count fall and reloads (`load`) instead of scoring examples that are gone.
    """
    gone = np.asarray(example_ids, dtype=np.int64)
    dropped = 0
    chunks = (EmbeddingChunk.objects.filter(project_id=project_id).select_for_update().order_by("id")
              .only("id", "encoder", "dim", "example_ids", "created_at"))  # vectors read only where needed
    for chunk in chunks:
        ids = chunk.ids_array()
        keep = ~np.isin(ids, gone)
        if keep.all():
            continue
        dropped += int((~keep).sum())
        if keep.any():
            EmbeddingChunk.objects.create(project_id=project_id, encoder=chunk.encoder, dim=chunk.dim,
                                          count=int(keep.sum()), example_ids=ids[keep].tobytes(),
                                          vectors=chunk.vectors_array()[keep].tobytes(), created_at=chunk.created_at)
        chunk.delete()
    forget(project_id)
    return dropped


def forget(project_id: int) -> None:
    with _lock:
        for key in [key for key in _cache if key[0] == project_id]:
            del _cache[key]
        for key in [key for key in _density if key[0] == project_id]:
            del _density[key]
