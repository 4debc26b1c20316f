"""Fine-tuning the encoder on a span (NER) project's labels: token classification under the Bayesian token layer.

`learning.finetune` fine-tunes on sentence labels through the mean-pooled sentence vector; a span project's
model reads word vectors instead (`Encoder.encode_tokens`: a word's vector is the mean of its sub-words' last
hidden states, DEFAULT_TOKEN_POOLING). This module trains the body through exactly those word vectors: a linear
head over them, cross-entropy over the IOB2 tag ids of `learning.spans.TagSet`, AdamW with linear warm-up and
decay, the same progress/cancel contract and the same saved folder as `learning.finetune.finetune`. The head is
discarded afterwards: the Bayesian token layer (`learning.spans.SpanModel`) is fitted on the fine-tuned encoder's
word vectors, as on the frozen one's.

The sub-word -> word alignment is `learning.encoder`'s own (`_OffsetTokenizer`, `_pool_words`): `_pool_words` of
an identity matrix is the (words x sub-words) mean-pooling matrix, so the vectors trained on are the ones
`encode_tokens` computes, word-fallbacks included, and gradients flow through the pooling.

Plain module (torch + transformers, no Django), like `learning.finetune`: the worker job (`learning.finetuning`),
the tests and `benchmarks/ner_finetune_bench.py` call the same `finetune_tokens`.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learning.finetune import (
    FinetuneCancelled,
    FinetuneConfig,
    FinetuneResult,
    ProgressCallback,
    _autocast,
    _load_body,
    _schedule,
    _torch,
    optimiser_step,
    save_encoder,
)

# What a span fine-tune records as its method (FinetuneRun.method): LABELHUB_FINETUNE_METHOD chooses between the
# sentence-level methods; a span project has this one only.
METHOD = "token-classifier"
# The FinetuneConfig fields a token fine-tune reads (what its result records).
_USED = ("epochs", "batch_size", "max_length", "learning_rate", "head_learning_rate", "weight_decay", "warmup_share",
         "min_steps", "device", "seed")
# Target of a word the model input does not hold whole (cut at a window's edge): left out of the loss.
IGNORE = -100


@dataclass
class _Window:
    """One model input: sub-words [lo, hi) of a text, the pooling matrix of the words wholly inside, their tags."""

    ids: list[int]  # the model input: special tokens around the sub-words
    start: int  # where the sub-words start in ``ids`` (after the prefix: [CLS] for BERT)
    pool: np.ndarray  # (n_words, hi - lo) float32, rows sum to 1
    tags: np.ndarray  # (n_words,) int64, IGNORE for a word cut by the window


def _windows(model_path: str | os.PathLike[str], texts: Sequence[str], offsets: Sequence[Sequence[Sequence[int]]],
             tags: Sequence[np.ndarray], max_length: int) -> list[_Window]:
    """Model inputs of the texts: each text whole when its sub-words fit ``max_length`` (with the special tokens),
    else cut into consecutive windows that do; a word split between two windows teaches nothing.

    A window's pooling matrix is `_pool_words` of the sub-word vectors "one-hot in the window, zero elsewhere": a
    word's row sums to the share of its sub-words inside the window (1: it is whole there), and a word without a
    sub-word of its own gets encode_tokens' fallback. Memory per window: sub-words x window width, not squared."""
    from learning.encoder import DEFAULT_TOKEN_POOLING, _OffsetTokenizer, _pool_words

    tokenizer = _OffsetTokenizer(Path(model_path))
    width = max(8, max_length - len(tokenizer.prefix) - len(tokenizer.suffix))
    ids, sub_offsets = tokenizer([str(t) for t in texts])
    out: list[_Window] = []
    for row, subs, words, target in zip(ids, sub_offsets, offsets, tags, strict=True):
        m = len(row)
        if m == 0 or len(words) == 0:
            continue
        spans = np.asarray(words, dtype=np.int64).reshape(-1, 2)
        target = np.asarray(target, dtype=np.int64)
        for lo in range(0, m, width):
            hi = min(m, lo + width)
            # The words whose characters meet the window's (a contiguous run: words are sorted and disjoint).
            first = int(np.searchsorted(spans[:, 1], subs[lo, 0], side="right"))
            stop = int(np.searchsorted(spans[:, 0], subs[hi - 1, 1], side="left"))
            if stop <= first:
                continue
            onehot = np.zeros((m, hi - lo), dtype=np.float32)
            onehot[lo:hi] = np.eye(hi - lo, dtype=np.float32)
            pool = _pool_words(onehot, subs, words[first:stop], DEFAULT_TOKEN_POOLING, hi - lo)
            share = pool.sum(axis=1)
            touched = share > 1e-6
            if not touched.any():
                continue
            whole = np.abs(share - 1.0) < 1e-4
            part_tags = np.where(whole, target[first:stop], IGNORE)[touched]
            out.append(_Window(ids=[*tokenizer.prefix, *row[lo:hi], *tokenizer.suffix], start=len(tokenizer.prefix),
                               pool=pool[touched], tags=part_tags.astype(np.int64)))
    return out


def _check(texts: Sequence[str], offsets: Sequence[Sequence[Sequence[int]]], tags: Sequence[Sequence[int]],
           n_tags: int) -> list[np.ndarray]:
    if len(texts) != len(offsets) or len(texts) != len(tags) or not texts:
        raise ValueError("fine-tuning needs as many offset lists and tag arrays as texts, and at least one text")
    arrays = [np.asarray(t, dtype=np.int64) for t in tags]
    for i, (o, t) in enumerate(zip(offsets, arrays, strict=True)):
        if len(o) != len(t):
            raise ValueError(f"text {i}: {len(o)} tokens but {len(t)} tags")
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    if len(flat) == 0:
        raise ValueError("fine-tuning needs at least one token")
    if flat.min() < 0 or flat.max() >= n_tags:
        raise ValueError(f"tag ids must lie in [0, {n_tags}), got {int(flat.min())}..{int(flat.max())}")
    if not (flat > 0).any():
        raise ValueError("fine-tuning needs at least one tagged entity: every labelled token is O")
    if not (flat == 0).any():
        raise ValueError("fine-tuning needs some plain (O) tokens: every labelled token is inside an entity")
    return arrays


def finetune_tokens(
    model_path: str | os.PathLike[str],
    texts: Sequence[str],
    offsets: Sequence[Sequence[Sequence[int]]],
    tags: Sequence[Sequence[int]],
    *,
    n_tags: int,
    out: str | os.PathLike[str],
    config: FinetuneConfig | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Fine-tune the encoder at ``model_path`` on word-level tags and save it to ``out`` (an encoder folder).

    ``offsets[i]``: text i's word tokens as [start, end) character offsets (``Example.tokens``); ``tags[i]``: their
    tag ids in [0, n_tags) (``learning.spans.tag_ids``, 0 = O). ``config``: ``FinetuneConfig`` (its ``method`` is
    ignored: this is the token-classification method, `METHOD`); ``max_length`` bounds one model input, a longer
    text is cut into windows. ``progress(step, total, loss)`` after each step; ``should_stop`` is polled between
    steps and raises `FinetuneCancelled` when true (``out`` is then not written). Deterministic for a given seed
    on CPU.
    """
    config = config or FinetuneConfig()
    arrays = _check(texts, offsets, tags, n_tags)
    torch = _torch()
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    out_path = Path(out)
    windows = _windows(model_path, texts, offsets, arrays, config.max_length)
    if not any((w.tags >= 0).any() for w in windows):
        raise ValueError("no word fits a model input whole: raise max_length")
    tokenizer, body = _load_body(model_path, config.device)
    head = torch.nn.Linear(body.config.hidden_size, n_tags).to(config.device)
    n = len(windows)
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
    # Unweighted: the O majority is the Bayesian layer's business (its evidence-chosen prior and calibration); the
    # fine-tune only has to move the word vectors of the entity types apart.
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    pad = int(tokenizer.pad_token_id or 0)
    rng = np.random.default_rng(config.seed)
    body.train()
    step, loss_value = 0, float("nan")
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            if should_stop is not None and should_stop():
                raise FinetuneCancelled("fine-tuning was cancelled")
            batch = [windows[i] for i in order[start:start + config.batch_size]]
            input_ids, mask = _padded([w.ids for w in batch], pad, config.device)
            target = torch.as_tensor(np.concatenate([w.tags for w in batch]), device=config.device)
            with _autocast(config.device):
                hidden = body(input_ids=input_ids, attention_mask=mask).last_hidden_state
                words = _word_vectors(hidden.float(), batch, config.device)
                loss = loss_fn(head(words).float(), target)
            optimiser_step(loss, body, optimizer, scheduler, scaler)
            step += 1
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step, total, loss_value)
    body.eval()
    save_encoder(body, tokenizer, model_path, out_path)
    used = {k: v for k, v in asdict(config).items() if k in _USED}  # not the sentence-level methods' own settings
    return FinetuneResult(path=out_path, method=METHOD, seconds=time.perf_counter() - started, steps=step,
                          final_loss=loss_value, config={"method": METHOD, **used})


def _padded(rows: list[list[int]], pad: int, device: str) -> tuple[Any, Any]:
    """Right-padded input ids and attention mask of the batch."""
    torch = _torch()
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return torch.as_tensor(ids, device=device), torch.as_tensor(mask, device=device)


def _word_vectors(hidden: Any, batch: list[_Window], device: str) -> Any:
    """The words' vectors of each window (its pooling matrix times its sub-words' hidden states), concatenated in
    batch order: (sum of the windows' words, dim)."""
    torch = _torch()
    parts = []
    for r, window in enumerate(batch):
        pool = torch.as_tensor(window.pool, device=device)
        parts.append(pool @ hidden[r, window.start:window.start + window.pool.shape[1]])
    return torch.cat(parts)
