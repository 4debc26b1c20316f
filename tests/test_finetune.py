"""Fine-tuning the encoder (learning.finetune): the folder it writes is an encoder the app loads,
and its features separate the labelled classes better than the frozen ones did."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from learning.encoder import default_model_path, get_encoder
from learning.finetune import FinetuneCancelled, FinetuneConfig, finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "trec" / "train.csv"
pytestmark = pytest.mark.slow


def trec_slice(per_class: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Real questions of three TREC classes (DESC, LOC, NUM), `per_class` each."""
    if not DATA.exists():
        pytest.skip("needs ../shared/data/trec")
    wanted = ["DESC", "LOC", "NUM"]
    texts: list[str] = []
    labels: list[int] = []
    with DATA.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["label"] in wanted and labels.count(wanted.index(row["label"])) < per_class:
                texts.append(row["text"])
                labels.append(wanted.index(row["label"]))
    return texts, np.array(labels), wanted


def separation(X: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine to the own class's items minus mean cosine to other classes' items."""
    S = X @ X.T
    same = y[:, None] == y[None, :]
    np.fill_diagonal(same, False)
    other = y[:, None] != y[None, :]
    return float(S[same].mean() - S[other].mean())


def test_fine_tuned_features_separate_the_labelled_classes_better(tmp_path: Path) -> None:
    texts, y, _ = trec_slice(16)
    config = FinetuneConfig.for_device("cpu", epochs=4, min_steps=24, batch_size=16, learning_rate=1e-4)
    steps: list[int] = []
    result = finetune(default_model_path(), texts, y, n_classes=3, out=tmp_path / "tuned", config=config,
                      progress=lambda step, total, loss: steps.append(step))
    assert result.steps == len(steps) >= 24 and result.method == "classifier"
    frozen = get_encoder(backend="torch", threads=1).encode(texts)
    tuned_encoder = get_encoder(result.path, backend="torch", threads=1)
    tuned = tuned_encoder.encode(texts)
    assert tuned.shape == frozen.shape and np.allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-4)
    assert tuned_encoder.name != get_encoder(backend="torch", threads=1).name
    assert separation(tuned, y) > separation(frozen, y) + 0.05


def test_a_cancelled_run_writes_nothing(tmp_path: Path) -> None:
    texts, y, _ = trec_slice(4)
    calls = iter(range(100))
    with pytest.raises(FinetuneCancelled):
        finetune(default_model_path(), texts, y, n_classes=3, out=tmp_path / "tuned",
                 config=FinetuneConfig.for_device("cpu", min_steps=10), should_stop=lambda: next(calls) >= 2)
    assert not (tmp_path / "tuned").exists()


@pytest.mark.parametrize("labels, message", [([0, 0, 0], "two classes"), ([0, 1], "as many labels")])
def test_it_refuses_labels_it_cannot_learn_from(tmp_path: Path, labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        finetune(default_model_path(), ["a", "b", "c"], labels, n_classes=2, out=tmp_path / "x")


def test_the_linear_probe_fits_the_head_before_the_body_moves() -> None:
    """LP-FT's first stage: on fixed features of three real-looking clusters, the fitted head
    classifies them (a random head is at chance), and class weights keep a rare class."""
    import torch

    from learning.finetune import _fit_probe

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32)) * 3
    y = np.array([0] * 40 + [1] * 40 + [2] * 4)
    features = torch.tensor(centres[y] + rng.normal(size=(len(y), 32)), dtype=torch.float32)
    head = torch.nn.Linear(32, 3)
    weights = torch.tensor([1.0, 1.0, 10.0])
    _fit_probe(head, features, torch.as_tensor(y), weights)
    predicted = head(features).argmax(dim=1).numpy()
    assert (predicted == y).mean() > 0.95 and (predicted[y == 2] == 2).all()


def test_it_refuses_an_unknown_head_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_init"):
        finetune(default_model_path(), ["a", "b"], [0, 1], n_classes=2, out=tmp_path / "x",
                 config=FinetuneConfig(head_init="zeros"))
