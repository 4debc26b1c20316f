"""Fine-tuning the sentence encoder on a project's labels (the slow loop).

The fast loop keeps the encoder frozen and refits a Bayesian last layer in under a second.
This module is the other half: it updates the transformer's own weights on the labels, so
that the frozen-feature model that follows (re-embedding + the same Bayesian layer) starts
from better features. The Bayesian layer is never replaced: the fine-tuned body is saved as
an ordinary encoder folder that `learning.encoder.get_encoder` loads like the packaged one,
and everything downstream (BALD, calibration, mislabels, serving) works on its vectors.

Two methods, compared in `benchmarks/finetune_bench.py`:

- ``classifier``: standard sequence-classification fine-tuning — the encoder's mean-pooled
  output under a linear softmax head, cross-entropy, AdamW with linear warm-up and decay.
  Two choices measured on hwu64 (64 intents, 1,000 labels, seed 0; benchmarks/README.md):
  the head is first fitted on the frozen features (linear probe, then fine-tune; Kumar et al.
  2022), and it reads the pooled features L2-normalised, as the Bayesian layer that replaces it
  reads the encoder's output. From a random head on raw features, fine-tuning lost 0.3 macro-F1
  points against the frozen encoder; with the probe +2.4 (+2.9 at 5 epochs), with both +3.5.
- ``setfit``: SetFit's contrastive sentence-pair fine-tuning (the `setfit` library, Tunstall
  et al. 2022): pairs of same/different-label texts pulled together/apart by cosine loss.
  Its classification head is discarded; the Bayesian layer takes its place.

Plain module (torch + transformers, no Django): the worker job and the benchmark call the
same `finetune`. CUDA is used when asked for (bf16 autocast where the card supports it,
else fp16 with loss scaling); CPU runs use smaller defaults (`FinetuneConfig.for_device`).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("classifier", "setfit")
DEFAULT_METHOD = "classifier"
HEAD_INITS = ("probe", "random")
# Files of a sentence-transformers folder the Encoder and other tools read besides the weights.
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")

ProgressCallback = Callable[[int, int, float], None]  # (step, total steps, loss)


class FinetuneCancelled(RuntimeError):
    """Raised between steps when `should_stop` says the run was cancelled."""


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = DEFAULT_METHOD
    epochs: int = 5
    batch_size: int = 16
    max_length: int = 128
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_share: float = 0.1
    # At least this many optimiser steps: with 250 labels, 4 epochs are only 64 steps.
    min_steps: int = 150
    # classifier only: "probe" fits the head on the frozen body's features before the body moves
    # (linear probe, then fine-tune: LP-FT, Kumar et al. 2022), "random" starts it from scratch.
    head_init: str = "probe"
    # classifier only: the head sees the pooled features L2-normalised (times NORMALISED_SCALE), as the
    # encoder's output the Bayesian layer reads is.
    normalise: bool = True
    # setfit only: contrastive pairs per labelled text (SetFit's num_iterations, ×2 pairs each).
    setfit_iterations: int = 5
    # setfit only: a cap on pairs so a large label set stays within the time budget.
    setfit_max_pairs: int = 12_000
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> FinetuneConfig:
        """Defaults per device: a CPU run trades a little accuracy for minutes (texts cut at 64
        tokens, fewer steps at small label counts); a GPU run keeps the full recipe."""
        if device.startswith("cuda"):
            base = cls(device=device, batch_size=32)
        else:
            base = cls(device="cpu", max_length=64, min_steps=120)
        return replace(base, **overrides)


@dataclass
class FinetuneResult:
    path: Path
    method: str
    seconds: float
    steps: int
    final_loss: float
    config: dict[str, Any]


def _torch() -> Any:
    import torch

    return torch


def _load_body(model_path: str | os.PathLike[str], device: str) -> tuple[Any, Any]:
    from learning.encoder import _transformers

    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    body = transformers.AutoModel.from_pretrained(str(model_path), local_files_only=True).to(device)
    return tokenizer, body


def _mean_pool(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _autocast(device: str) -> Any:
    torch = _torch()
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def save_encoder(body: Any, tokenizer: Any, base_path: str | os.PathLike[str], out: Path) -> None:
    """Write the fine-tuned body as an encoder folder: HF weights + tokenizer, and the
    sentence-transformers files of the base model (same pooling), so `get_encoder(out)`,
    transformers and sentence-transformers all load it."""
    out.mkdir(parents=True, exist_ok=True)
    body.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    base = Path(base_path)
    for name in _ST_FILES:
        if (base / name).exists():
            shutil.copy2(base / name, out / name)
    if (base / "1_Pooling").is_dir():
        shutil.copytree(base / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)


def finetune(
    model_path: str | os.PathLike[str],
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    n_classes: int,
    out: str | os.PathLike[str],
    config: FinetuneConfig | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Fine-tune the encoder at ``model_path`` on (texts, labels) and save it to ``out``.

    ``labels`` are class indices in [0, n_classes). ``progress`` is called after each step;
    ``should_stop`` is polled between steps and raises `FinetuneCancelled` when true (the
    folder is then not written). Deterministic for a given seed on CPU.
    """
    config = config or FinetuneConfig()
    if config.method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {config.method!r}; choose one of {', '.join(METHODS)}")
    if config.head_init not in HEAD_INITS:
        raise ValueError(f"unknown head_init {config.head_init!r}; choose one of {', '.join(HEAD_INITS)}")
    y = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(y) or len(y) == 0:
        raise ValueError("fine-tuning needs as many labels as texts, and at least one")
    if len(np.unique(y)) < 2:
        raise ValueError("fine-tuning needs labels of at least two classes")
    torch = _torch()
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    out_path = Path(out)
    if config.method == "setfit":
        steps, loss = _setfit(model_path, texts, y, out_path, config, progress, should_stop)
    else:
        steps, loss = _classifier(model_path, texts, y, n_classes, out_path, config, progress, should_stop)
    return FinetuneResult(path=out_path, method=config.method, seconds=time.perf_counter() - started,
                          steps=steps, final_loss=loss, config=asdict(config))


def optimiser_step(loss: Any, body: Any, optimizer: Any, scheduler: Any, scaler: Any | None) -> None:
    """One update: backward (loss-scaled when ``scaler``), the body's gradients clipped to norm 1, step, schedule."""
    torch = _torch()
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(body.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body.parameters(), 1.0)
        optimizer.step()
    scheduler.step()


def _schedule(optimizer: Any, total: int, warmup: int) -> Any:
    torch = _torch()

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _classifier(model_path: str | os.PathLike[str], texts: Sequence[str], y: np.ndarray, n_classes: int,
                out: Path, config: FinetuneConfig, progress: ProgressCallback | None,
                should_stop: Callable[[], bool] | None) -> tuple[int, float]:
    torch = _torch()
    tokenizer, body = _load_body(model_path, config.device)
    head = torch.nn.Linear(body.config.hidden_size, n_classes).to(config.device)
    n = len(texts)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    # Class weights: a few rare classes must not be drowned by a frequent one.
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    class_weights = torch.tensor(weights, dtype=torch.float32, device=config.device)
    if config.head_init == "probe":
        features = _features(_pooled(body, tokenizer, texts, config), config)
        _fit_probe(head, features, torch.as_tensor(y, device=config.device), class_weights)
    per_epoch = math.ceil(n / config.batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / per_epoch))
    total = epochs * per_epoch
    decay = [p for name, p in body.named_parameters() if not any(k in name for k in ("bias", "LayerNorm"))]
    no_decay = [p for name, p in body.named_parameters() if any(k in name for k in ("bias", "LayerNorm"))]
    optimizer = torch.optim.AdamW([
        {"params": decay, "weight_decay": config.weight_decay, "lr": config.learning_rate},
        {"params": no_decay, "weight_decay": 0.0, "lr": config.learning_rate},
        {"params": head.parameters(), "weight_decay": 0.0, "lr": config.head_learning_rate},
    ])
    scheduler = _schedule(optimizer, total, int(config.warmup_share * total))
    use_scaler = config.device.startswith("cuda") and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights)
    rng = np.random.default_rng(config.seed)
    body.train()
    step, loss_value = 0, float("nan")
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            if should_stop is not None and should_stop():
                raise FinetuneCancelled("fine-tuning was cancelled")
            rows = order[start:start + config.batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                              max_length=config.max_length, return_tensors="pt").to(config.device)
            target = torch.as_tensor(y[rows], device=config.device)
            with _autocast(config.device):
                hidden = body(**batch).last_hidden_state
                logits = head(_features(_mean_pool(hidden, batch["attention_mask"]).float(), config))
                loss = loss_fn(logits.float(), target)
            optimiser_step(loss, body, optimizer, scheduler, scaler)
            step += 1
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step, total, loss_value)
    body.eval()
    save_encoder(body, tokenizer, model_path, out)
    return step, loss_value


NORMALISED_SCALE = 10.0


def _features(pooled: Any, config: FinetuneConfig) -> Any:
    if not config.normalise:
        return pooled
    return NORMALISED_SCALE * _torch().nn.functional.normalize(pooled, dim=1)


def _pooled(body: Any, tokenizer: Any, texts: Sequence[str], config: FinetuneConfig) -> Any:
    """Mean-pooled features of the body as it is now (eval mode, no gradients)."""
    torch = _torch()
    body.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(list(texts[start:start + 64]), padding=True, truncation=True,
                              max_length=config.max_length, return_tensors="pt").to(config.device)
            with _autocast(config.device):
                hidden = body(**batch).last_hidden_state
            chunks.append(_mean_pool(hidden, batch["attention_mask"]).float())
    return torch.cat(chunks)


def _fit_probe(head: Any, features: Any, target: Any, class_weights: Any, l2: float = 1e-3) -> None:
    """Fit the linear head on fixed features (weighted cross-entropy + a small L2), full batch.

    Starting the body's updates from a fitted head keeps the first steps from pushing random
    gradients into the pretrained features, which is what hurt on many-class sets with a few
    labels per class (hwu64: 64 intents, about 15 labels each at 1,000)."""
    torch = _torch()
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=200, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(head(features), target) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def _setfit(model_path: str | os.PathLike[str], texts: Sequence[str], y: np.ndarray, out: Path,
            config: FinetuneConfig, progress: ProgressCallback | None,
            should_stop: Callable[[], bool] | None) -> tuple[int, float]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import TrainerCallback

    model = SetFitModel.from_pretrained(str(model_path), local_files_only=True, device=config.device)
    # SetFit draws 2 pairs per text per iteration; cap the steps so big label sets stay bounded.
    pairs = min(2 * config.setfit_iterations * len(texts), config.setfit_max_pairs)
    max_steps = max(1, math.ceil(pairs / config.batch_size))

    seen: dict[str, float] = {"step": 0, "loss": float("nan")}

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> Any:
            if logs and "embedding_loss" in logs:
                seen["loss"] = float(logs["embedding_loss"])
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if should_stop is not None and should_stop():
                raise FinetuneCancelled("fine-tuning was cancelled")
            seen["step"] = int(state.global_step)
            if progress is not None:
                progress(int(seen["step"]), max_steps, seen["loss"])
            return control

    scratch = tempfile.mkdtemp(prefix="labelhub-setfit-")  # its Trainer writes checkpoints otherwise into the cwd
    arguments = TrainingArguments(
        output_dir=scratch, save_strategy="no",
        batch_size=config.batch_size, num_epochs=1, num_iterations=config.setfit_iterations,
        max_steps=max_steps, body_learning_rate=config.learning_rate / 2.5, max_length=config.max_length,
        seed=config.seed, report_to="none", show_progress_bar=False, logging_steps=1,
        use_amp=config.device.startswith("cuda"),
    )
    data = Dataset.from_dict({"text": list(texts), "label": [int(v) for v in y]})
    trainer = Trainer(model=model, args=arguments, train_dataset=data, callbacks=[Progress()])
    # Only the contrastive body: the Bayesian layer replaces SetFit's logistic head.
    try:
        trainer.train_embeddings(*trainer.dataset_to_parameters(data), args=arguments)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    body = model.model_body
    out.mkdir(parents=True, exist_ok=True)
    body.save(str(out))
    return int(seen["step"]), float(seen["loss"])


def heldout_split(y: np.ndarray, n_classes: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of labels ``y``: per label, ``share`` of its items held out (at least one, and
    never all of them: a label with a single item stays in training only)."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        if len(rows) < 2:
            continue
        k = min(len(rows) - 1, max(1, int(round(share * len(rows)))))
        held.extend(int(i) for i in rng.choice(rows, size=k, replace=False))
    held_rows = np.array(sorted(held), dtype=np.int64)
    return np.setdiff1d(np.arange(len(y)), held_rows), held_rows
