"""Shared set-up of the prediction API tests: a fake encoder and a project with a trained model.

(No tests here; the prediction, serving and webhook tests import these fixtures.)
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from django.core.cache import cache

from annotation.models import Annotation, AnnotationSource
from learning import actions, serving, store
from learning.models import EmbeddingChunk, ModelVersion, TrainingRun
from projects.models import Example, Project

DIM = 16
_rng = np.random.default_rng(7)
CENTRES = _rng.normal(size=(2, DIM))
CENTRES /= np.linalg.norm(CENTRES, axis=1, keepdims=True)


class FakeEncoder:
    """Texts with "overrule" sit near one centre, "affirm" near the other, anything else in between."""

    name = "fake-encoder-16"
    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16)
            noise = np.random.default_rng(seed).normal(size=DIM) * 0.35
            if "overrule" in text:
                base = CENTRES[0]
            elif "affirm" in text:
                base = CENTRES[1]
            else:
                base = (CENTRES[0] + CENTRES[1]) / 2
            v = base * 2 + noise
            out[i] = v / np.linalg.norm(v)
        return out


ENCODER = FakeEncoder()


@pytest.fixture
def fake_encoder(monkeypatch: Any, settings: Any) -> FakeEncoder:
    settings.TRAIN_DEBOUNCE_SECONDS = 0
    monkeypatch.setattr(actions, "current_encoder", lambda: ENCODER)
    serving.forget()
    store._cache.clear()
    cache.clear()
    yield ENCODER
    serving.forget()
    store._cache.clear()


def add_examples(project: Project, texts: list[str]) -> list[Example]:
    from projects.importing import content_hash

    examples = Example.objects.bulk_create(
        Example(project=project, text=t, content_hash=content_hash(t)) for t in texts)
    ids = np.array([e.pk for e in examples], dtype=np.int64)
    vectors = ENCODER.encode(texts).astype(np.float16)
    EmbeddingChunk.objects.create(project=project, encoder=ENCODER.name, dim=DIM, count=len(texts),
                                  example_ids=ids.tobytes(), vectors=vectors.tobytes())
    return examples


def label(project: Project, user: Any, examples: list[Example], names: list[str]) -> None:
    taxonomy = project.current_taxonomy()
    keys = dict(taxonomy.labels.values_list("name", "key"))
    Annotation.objects.bulk_create(
        Annotation(example=e, annotator=user, taxonomy_version=taxonomy, label_keys=[keys[n]],
                   source=AnnotationSource.UI) for e, n in zip(examples, names, strict=True))


def train(project: Project) -> ModelVersion:
    TrainingRun.objects.create(project=project)
    run = actions.run_training(project.pk)
    assert run is not None and run.model_version is not None, run and run.error
    return run.model_version


@pytest.fixture
def trained(project: Project, alice: Any, fake_encoder: FakeEncoder) -> Project:
    """`project` with 40 labelled examples, 10 unlabelled ones and model v1."""
    texts = [f"we overrule case {i}" for i in range(20)] + [f"we affirm case {i}" for i in range(20)]
    examples = add_examples(project, texts + [f"pool text {i} overrule" for i in range(10)])
    label(project, alice, examples[:40], ["Yes"] * 20 + ["No"] * 20)
    train(project)
    return project


CURVE = [
    {"threshold": 0.5, "coverage": 1.0, "accuracy": 0.90},
    {"threshold": 0.7, "coverage": 0.8, "accuracy": 0.94},
    {"threshold": 0.8, "coverage": 0.6, "accuracy": 0.96},
    {"threshold": 0.9, "coverage": 0.4, "accuracy": 0.99},
]


def give_curve(version: ModelVersion, curve: list[dict[str, float]] = CURVE) -> None:
    version.metrics = {**version.metrics, "accuracy_coverage": curve}
    version.save(update_fields=["metrics"])


def drop_curve(version: ModelVersion) -> None:
    """Make `version` look trained before the quality report had the accuracy-vs-coverage curve."""
    version.metrics = {k: v for k, v in version.metrics.items() if k != "accuracy_coverage"}
    version.save(update_fields=["metrics"])
