"""Token vectors of a span project's pool, float16 on local disk, read in bounded chunks.

Plain module (numpy only; the caller passes the folder). Span models need one vector per token,
about 15 per sentence on news text: a 100k-sentence pool is 1.5M x 384 floats, 2.2 GB as float32
in memory, too much to keep in every worker. Here they are written once by the embed job, as
float16 (1.1 GB for that pool) in append-only chunk files per (project, encoder), and read back
memory-mapped: a refit reads only the labelled examples' rows, a rescore walks the pool a chunk
of examples at a time, so a worker's resident memory grows with the chunk, not with the pool.

Layout under ``root/<project>/<encoder slug>/``: ``NNNNNN.vec.npy`` (float16, (tokens, dim)) and
``NNNNNN.idx.npy`` (int64, (examples, 3): example id, first row, token count). The index file is
written last and renamed into place: a chunk without one is an interrupted write and is ignored.
An example written twice (re-encoded) reads from its newest chunk. The files are a cache of the
encoder's output: a worker on another machine (no shared disk) encodes what it lacks again
(``missing``), so nothing is lost when the folder is.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _slug(encoder: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder)[:60]
    return f"{readable}-{hashlib.sha1(encoder.encode()).hexdigest()[:10]}"


@dataclass
class _Index:
    example_ids: np.ndarray  # (N,) sorted
    chunk: np.ndarray  # (N,) position in `files`
    start: np.ndarray  # (N,) first row in its chunk
    length: np.ndarray  # (N,) token count
    files: list[Path]
    n_files: int


class TokenStore:
    """The token vectors of one project for one encoder."""

    def __init__(self, root: str | os.PathLike[str], project_id: int, encoder: str) -> None:
        self.folder = Path(root) / str(project_id) / _slug(encoder)
        self._lock = threading.Lock()
        self._index: _Index | None = None
        self._maps: dict[Path, np.ndarray] = {}

    # --- reading ------------------------------------------------------------------------------------------------

    def _chunk_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.idx.npy") if p.name[:6].isdigit())

    def _load_index(self) -> _Index:
        files = self._chunk_files()
        with self._lock:
            if self._index is not None and self._index.n_files == len(files):
                return self._index
        parts = []
        for position, path in enumerate(files):
            rows = np.load(path)
            parts.append(np.column_stack([rows, np.full(len(rows), position, dtype=np.int64)]))
        table = np.concatenate(parts) if parts else np.empty((0, 4), dtype=np.int64)
        # Newest chunk wins for an example written twice: a stable sort by id keeps file order, take the last.
        order = np.lexsort((table[:, 3], table[:, 0]))
        table = table[order]
        last = np.ones(len(table), dtype=bool)
        if len(table):
            last[:-1] = table[1:, 0] != table[:-1, 0]
        table = table[last]
        index = _Index(table[:, 0].copy(), table[:, 3].copy(), table[:, 1].copy(), table[:, 2].copy(),
                       [Path(str(p).replace(".idx.npy", ".vec.npy")) for p in files], len(files))
        with self._lock:
            self._index = index
        return index

    @property
    def example_ids(self) -> np.ndarray:
        return self._load_index().example_ids

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """The ids (of those given) that have no vectors here."""
        return np.setdiff1d(np.asarray(ids, dtype=np.int64), self.example_ids)

    def token_counts(self, ids: np.ndarray) -> np.ndarray:
        index = self._load_index()
        return index.length[self._positions(index, ids)]

    def _positions(self, index: _Index, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(index.example_ids, ids)
        ok = (pos < len(index.example_ids)) & (index.example_ids[np.minimum(pos, len(index.example_ids) - 1)] == ids)
        if not ok.all():
            raise KeyError(f"no token vectors for examples {ids[~ok][:5].tolist()}")
        return pos

    def _map(self, path: Path) -> np.ndarray:
        with self._lock:
            mapped = self._maps.get(path)
        if mapped is None:
            mapped = np.load(path, mmap_mode="r")
            with self._lock:
                self._maps[path] = mapped
        return mapped

    def get(self, ids: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """float32 (tokens, dim) per example, in the order given (KeyError for an id not stored): views into
        ``get_flat``'s one array."""
        flat, bounds = self.get_flat(ids)
        return [flat[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]

    def get_flat(self, ids: Sequence[int] | np.ndarray, *, buffer: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (tokens, dim), bounds (n + 1,)) of ``ids`` packed end to end in the order given, example i
        owning rows [bounds[i], bounds[i + 1]): one gather per chunk file, not one read per example (a pool
        pass reads thousands of short sentences). With ``buffer`` (float32, at least (tokens, dim)) the vectors
        are written into its first rows and that view is returned, instead of into new memory."""
        index = self._load_index()
        pos = self._positions(index, np.asarray(ids, dtype=np.int64))
        lengths = index.length[pos]
        bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        chunks = index.chunk[pos]
        dim = int(self._map(index.files[int(chunks[0])]).shape[1]) if len(pos) else 0
        total = int(bounds[-1])
        if buffer is not None and buffer.dtype == np.float32 and buffer.shape[0] >= total and buffer.shape[1] == dim:
            out = buffer[:total]
        else:
            out = np.empty((total, dim), dtype=np.float32)
        for chunk in np.unique(chunks).tolist():
            members = np.flatnonzero(chunks == chunk)
            rows = _ranges(index.start[pos[members]], lengths[members])
            if not len(rows):
                continue
            mapped = self._map(index.files[chunk])
            # A pool pass asks for ids in stored order: rows are then one run, or a few, and slices copy fastest.
            source = mapped[int(rows[0]):int(rows[-1]) + 1] if (np.diff(rows) == 1).all() else mapped[rows]
            if members[-1] - members[0] + 1 == len(members):
                out[bounds[members[0]]:bounds[members[-1] + 1]] = source
            else:
                out[_ranges(bounds[members], lengths[members])] = source
        return out, bounds

    def iter_chunks(self, ids: np.ndarray, *, tokens_per_chunk: int = 65536
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, their packed vectors, bounds) as ``get_flat`` gives them, for consecutive slices of ``ids``
        holding about ``tokens_per_chunk`` tokens: what a pass over the pool keeps in memory at once.

        Every slice's vectors are written into one buffer (replaced by a larger slice's), reused by the next
        slice: a caller copies what it keeps. (A new 50 MB array per slice costs the page faults of fresh memory
        each time; on the span update benchmark the reuse took the rescore's CPU p50 from 0.37 to 0.32-0.35 s,
        two runs each.)"""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        counts = np.maximum(self.token_counts(ids), 1)
        cuts = np.searchsorted(np.cumsum(counts), np.arange(tokens_per_chunk, counts.sum(), tokens_per_chunk))
        buffer: np.ndarray | None = None
        for part in _slices(ids, cuts):
            flat, bounds = self.get_flat(part, buffer=buffer)
            if buffer is None or len(flat) > len(buffer):
                buffer = flat  # new memory (the first slice, or one larger than all before): reused from here on
            yield part, flat, bounds
            # Unmap what this slice touched: a pass over a 100k pool would otherwise leave ~1 GB of token pages
            # mapped in the worker (file-backed and reclaimable, but counted in its RSS).
            with self._lock:
                self._maps.clear()

    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(p.stat().st_size for p in self.folder.glob("*.npy")) if self.folder.is_dir() else 0

    # --- writing ------------------------------------------------------------------------------------------------

    def append(self, ids: Sequence[int] | np.ndarray, vectors: Sequence[np.ndarray], *, dim: int) -> None:
        """Store the token vectors of ``ids`` (one (tokens, dim) array each; zero tokens allowed) as one chunk."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vector arrays")
        if not len(ids):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(v) for v in vectors], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        block = (np.concatenate([np.asarray(v, dtype=np.float16).reshape(-1, dim) for v in vectors])
                 if lengths.sum() else np.empty((0, dim), dtype=np.float16))
        number = self._next_number()
        vec_path = self.folder / f"{number:06d}.vec.npy"
        idx_path = self.folder / f"{number:06d}.idx.npy"
        tmp_vec, tmp_idx = vec_path.with_suffix(".tmp"), idx_path.with_suffix(".tmp")
        with open(tmp_vec, "wb") as handle:
            np.save(handle, block)
        os.replace(tmp_vec, vec_path)
        with open(tmp_idx, "wb") as handle:
            np.save(handle, np.column_stack([ids, starts, lengths]))
        os.replace(tmp_idx, idx_path)  # the commit point: readers see the chunk from here on

    def _next_number(self) -> int:
        taken = [int(p.name[:6]) for p in self.folder.glob("*.npy") if p.name[:6].isdigit()]
        return max(taken, default=0) + 1


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of range(starts[i], starts[i] + lengths[i]) over i."""
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


def _slices(ids: np.ndarray, bounds: np.ndarray) -> Iterator[np.ndarray]:
    edges = np.unique(np.concatenate([[0], bounds + 1, [len(ids)]]))
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi > lo:
            yield ids[lo:hi]


_stores: dict[tuple[str, int, str], TokenStore] = {}
_stores_lock = threading.Lock()


def open_store(root: str | os.PathLike[str], project_id: int, encoder: str) -> TokenStore:
    """The process's one TokenStore per (root, project, encoder): its index and memory maps are reused."""
    key = (str(root), project_id, encoder)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = TokenStore(root, project_id, encoder)
    return store


def forget(project_id: int | None = None) -> None:
    with _stores_lock:
        for key in [k for k in _stores if project_id is None or k[1] == project_id]:
            del _stores[key]
