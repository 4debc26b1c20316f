"""The packaged sentence encoder and the embedding cache (no database)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from learning.encoder import (
    AUTO_CPU_BACKEND,
    EmbeddingCache,
    Encoder,
    default_model_path,
    encoder_name,
    get_encoder,
    resolve_backend,
)

TEXTS = [
    "The court overrules its earlier decision in Smith v. Jones.",
    "We hereby overrule the prior holding of that case.",
    "My laptop will not connect to the office printer.",
    "ok",
    "",
    "A much longer sentence " * 40,
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return get_encoder(backend="torch", threads=1)


def test_it_returns_unit_vectors_in_input_order(encoder: Encoder) -> None:
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(encoder.encode([TEXTS[2]])[0], vectors[2], atol=1e-5)


def test_it_matches_sentence_transformers(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(default_model_path(), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert np.abs(encoder.encode(TEXTS) - reference).max() < 1e-4


def test_it_puts_similar_sentences_closer_than_unrelated_ones(encoder: Encoder) -> None:
    a, b, c = encoder.encode(TEXTS[:3])
    assert a @ b > a @ c + 0.2


def test_it_pads_no_text_much_beyond_its_length_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts of mixed lengths (a request's batch) are grouped by length, so little compute goes to padding,
    and each text's vector is the one it gets alone."""
    encoder = get_encoder(backend="torch", threads=1)
    texts = ["ok", "a short one", "a sentence of middling length about a court", "word " * 120, "word " * 60] * 3
    widths: list[tuple[int, int]] = []
    forward = encoder._forward

    def recording(batch: dict[str, np.ndarray]) -> np.ndarray:
        lengths = batch["attention_mask"].sum(axis=1)
        widths.append((int(lengths.min()), int(lengths.max())))
        return forward(batch)

    monkeypatch.setattr(encoder, "_forward", recording)
    together = encoder.encode(texts)
    assert all(shortest >= encoder.pad_ratio * longest for shortest, longest in widths), widths
    assert len(widths) < len(texts)  # texts of one length still share a batch
    alone = np.stack([encoder.encode([t])[0] for t in texts[:5]])
    assert np.allclose(together[:5], alone, atol=1e-5)


def test_it_loads_once_per_process() -> None:
    assert get_encoder(backend="torch") is get_encoder(backend="torch")


def test_it_caches_embeddings_on_disk(encoder: Encoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    calls: list[int] = []
    first = cache.encode(encoder, TEXTS[:3], progress=lambda done, total: calls.append(total))
    again = EmbeddingCache(tmp_path).encode(encoder, [TEXTS[1], TEXTS[3], TEXTS[0]],
                                            progress=lambda d, t: calls.append(t))
    assert calls[0] == 3 and calls[-1] == 1  # the second call encoded only the new text
    assert np.allclose(again[0], first[1]) and np.allclose(again[2], first[0])
    assert encoder.name in {p.name for p in tmp_path.iterdir()} or any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.slow
def test_the_onnx_backend_agrees_with_pytorch_and_shares_its_name(
    encoder: Encoder, onnx_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    onnx = Encoder(backend="onnx", threads=1, onnx_dir=onnx_dir)  # exported here, from the packaged weights
    # The optimiser and quantiser log ~1,500 records (every fusion, every tensor); none reaches a handler.
    assert [r.getMessage() for r in caplog.records if f"{os.sep}onnxruntime{os.sep}" in r.pathname] == []
    reference, vectors = encoder.encode(TEXTS), onnx.encode(TEXTS)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert (reference * vectors).sum(axis=1).min() >= 0.99  # 0.9999+ in practice
    assert onnx.name == encoder.name == encoder_name(backend="onnx")  # their embeddings mix
    assert np.allclose(onnx.encode([TEXTS[2]])[0], vectors[2], atol=1e-5)  # batching does not change a vector
    assert Encoder(backend="onnx", onnx_dir=onnx_dir).onnx_file == onnx.onnx_file  # exported once, then reused


@pytest.mark.slow
def test_int8_vectors_stay_close_but_carry_a_name_of_their_own(encoder: Encoder, onnx_dir: Path) -> None:
    int8 = Encoder(backend="onnx-int8", threads=1, onnx_dir=onnx_dir)
    cosine = (encoder.encode(TEXTS) * int8.encode(TEXTS)).sum(axis=1)
    # Near 1 but not equal, and CPU-dependent: without AVX-512/VNNI (an AVX2-only EPYC) these six texts, two of
    # them nearly empty, give min 0.953 and mean 0.980; legal sentences mean 0.990 (benchmarks/README.md).
    assert cosine.min() >= 0.95 and cosine.mean() >= 0.97
    assert int8.name == encoder.name + "-int8" == encoder_name(backend="onnx-int8")  # never mixed with float


def test_auto_runs_pytorch_on_a_gpu_and_onnx_on_cpu() -> None:
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == AUTO_CPU_BACKEND
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="Unknown encoder backend"):
        resolve_backend("tensorflow")


def test_auto_falls_back_to_pytorch_when_the_onnx_folder_cannot_be_written(
        encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from learning import encoder as module

    def read_only(*args: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(module, "export_onnx", read_only)
    fallback = get_encoder(backend="auto", device="cpu", onnx_dir=tmp_path / "ro")
    assert fallback.backend == "torch" and fallback.name == encoder.name
    with pytest.raises(PermissionError):
        Encoder(backend="onnx", onnx_dir=tmp_path / "ro")  # asked for by name: no silent fallback


@pytest.mark.slow
def test_predicting_with_onnx_never_imports_torch(encoder: Encoder, onnx_dir: Path) -> None:
    import subprocess
    import sys

    Encoder(backend="onnx", onnx_dir=onnx_dir)  # exported (which needs torch) beforehand, as at install
    script = ("import sys; from learning.encoder import get_encoder; "
              "e = get_encoder(device='cpu', threads=1, onnx_dir=sys.argv[1]); e.encode(['a sentence']); "
              "print(e.backend, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script, str(onnx_dir)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    # A web process that only predicts stays small: torch costs seconds and ~200 MB per process.
    assert out.stdout.split() == ["onnx", "False"]


def test_onnxruntime_chatter_is_dropped_during_the_export_only_and_its_errors_still_show() -> None:
    from learning.encoder import _quiet_onnxruntime

    def record(path: str, level: int) -> logging.LogRecord:
        return logging.LogRecord("onnx_model", level, path, 1, "fused", None, None)

    ort = os.path.join("site-packages", "onnxruntime", "transformers", "onnx_model.py")
    ours = os.path.join("learning", "encoder.py")
    handler = logging.NullHandler()
    logging.getLogger().addHandler(handler)
    try:
        with _quiet_onnxruntime():
            assert not handler.filter(record(ort, logging.INFO))
            assert not handler.filter(record(ort, logging.WARNING))
            assert handler.filter(record(ort, logging.ERROR))
            assert handler.filter(record(ours, logging.INFO))
        assert handler.filter(record(ort, logging.INFO)) and handler.filters == []
    finally:
        logging.getLogger().removeHandler(handler)
