"""The packaged sentence encoder and the embedding cache (no database)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learning.encoder import EmbeddingCache, Encoder, default_model_path, get_encoder

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
    return get_encoder()


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


def test_it_loads_once_per_process() -> None:
    assert get_encoder() is get_encoder()


def test_it_caches_embeddings_on_disk(encoder: Encoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    calls: list[int] = []
    first = cache.encode(encoder, TEXTS[:3], progress=lambda done, total: calls.append(total))
    again = EmbeddingCache(tmp_path).encode(encoder, [TEXTS[1], TEXTS[3], TEXTS[0]],
                                            progress=lambda d, t: calls.append(t))
    assert calls[0] == 3 and calls[-1] == 1  # the second call encoded only the new text
    assert np.allclose(again[0], first[1]) and np.allclose(again[2], first[0])
    assert encoder.name in {p.name for p in tmp_path.iterdir()} or any(tmp_path.iterdir())
