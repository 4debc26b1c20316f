"""Frozen against fine-tuned token features under the same span Bayesian model (issue 16).

    .venv/bin/python benchmarks/ner_finetune_bench.py [--dataset conll2003] [--train 500] [--test 1000]
        [--device cpu] [--seed 0]

The first ``--train`` sentences of the set's train file are the labelled ones; ``--test`` sentences of its test
file (a fixed random subsample, seed 0, as benchmarks/ner_efficiency.py draws it) are scored. Both sides fit the
app's span model (`learning.spans.SpanModel`: Bayesian last layer over BIO tags, then calibrated as the quality
report does) on the token vectors of the labelled sentences and decode the test sentences:

- frozen: `Encoder.encode_tokens` of the packaged encoder (what a span project uses before any fine-tune);
- fine-tuned: `learning.finetune_spans.finetune_tokens` on the same labelled sentences with the worker's defaults
  for the device (`FinetuneConfig.for_device`), then `encode_tokens` of the fine-tuned encoder.

Prints strict entity F1 (micro, as seqeval) with a 95 % bootstrap interval over test sentences, the paired
interval of the difference, and CPU seconds (process time; one torch/BLAS thread on CPU) for fine-tuning and for
encoding. Writes benchmarks/out/ner_finetune-<set>.json (ignored by git).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

from learning import spans  # noqa: E402
from learning.encoder import Encoder, default_model_path  # noqa: E402
from learning.finetune import FinetuneConfig  # noqa: E402
from learning.finetune_spans import finetune_tokens  # noqa: E402
from learning.management.commands.simulate import read_tagged_jsonl  # noqa: E402

DATA = Path(os.environ.get("LABELHUB_DATA_DIR", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "out"
N_BOOT = 1000


def load(name: str, split: str, n: int, *, sample: bool) -> tuple[list[str], list[list[tuple[int, int]]],
                                                                     list[list[dict[str, Any]]]]:
    texts, offsets, row_spans = read_tagged_jsonl(str(DATA / name / f"{split}.jsonl"))
    keep = np.arange(min(n, len(texts)))
    if sample and len(texts) > n:
        keep = np.sort(np.random.default_rng(0).choice(len(texts), n, replace=False))
    return [texts[i] for i in keep], [offsets[i] for i in keep], [row_spans[i] for i in keep]


def fit_predict(train_vectors: list[np.ndarray], train_tags: list[np.ndarray], test_vectors: list[np.ndarray],
                tagset: spans.TagSet, seed: int) -> tuple[list[set[spans.Entity]], float]:
    started = time.process_time()
    model = spans.SpanModel.fit(train_vectors, train_tags, tagset)
    model.calibrate(train_vectors, train_tags, rng=np.random.default_rng(seed))
    predicted = [spans.entities_from_ids(p.tags, tagset) for p in model.predict(test_vectors)]
    return predicted, time.process_time() - started


def encode(encoder: Encoder, texts: list[str], offsets: list[list[tuple[int, int]]]) -> tuple[list[np.ndarray], float]:
    started = time.process_time()
    vectors = encoder.encode_tokens(texts, offsets)
    return vectors, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="conll2003")
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    if args.device == "cpu":
        torch.set_num_threads(1)
        threadpool_limits(1)
    train_texts, train_offsets, train_spans = load(args.dataset, "train", args.train, sample=False)
    test_texts, test_offsets, test_spans = load(args.dataset, "test", args.test, sample=True)
    tagset = spans.TagSet(sorted({s["label"] for row in train_spans + test_spans for s in row}))
    train_tags = [spans.tag_ids(o, s, tagset) for o, s in zip(train_offsets, train_spans, strict=True)]
    test_tags = [spans.tag_ids(o, s, tagset) for o, s in zip(test_offsets, test_spans, strict=True)]
    gold = [spans.entities_from_ids(t, tagset) for t in test_tags]
    print(f"{args.dataset}: {len(train_texts)} labelled sentences ({sum(len(t) for t in train_tags):,} tokens), "
          f"{len(test_texts)} test sentences ({sum(len(g) for g in gold):,} entities)", flush=True)

    frozen_encoder = Encoder(default_model_path(), backend="torch", device=args.device, threads=1)
    frozen_train, frozen_train_cpu = encode(frozen_encoder, train_texts, train_offsets)
    frozen_test, frozen_test_cpu = encode(frozen_encoder, test_texts, test_offsets)
    frozen_pred, frozen_fit_cpu = fit_predict(frozen_train, train_tags, frozen_test, tagset, args.seed)

    config = FinetuneConfig.for_device(args.device, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="ner-finetune-") as folder:
        started = time.process_time()
        result = finetune_tokens(default_model_path(), train_texts, train_offsets, train_tags, n_tags=len(tagset),
                                 out=Path(folder) / "tuned", config=config)
        finetune_cpu = time.process_time() - started
        tuned_encoder = Encoder(result.path, backend="torch", device=args.device, threads=1)
        tuned_train, tuned_train_cpu = encode(tuned_encoder, train_texts, train_offsets)
        tuned_test, tuned_test_cpu = encode(tuned_encoder, test_texts, test_offsets)
    tuned_pred, tuned_fit_cpu = fit_predict(tuned_train, train_tags, tuned_test, tagset, args.seed)

    keys = list(tagset.keys)
    rng = np.random.default_rng(args.seed)
    weights = rng.multinomial(len(gold), np.full(len(gold), 1 / len(gold)), size=N_BOOT).astype(np.float64)

    def figures(predicted: list[set[spans.Entity]]) -> tuple[dict[str, Any], np.ndarray]:
        counts = spans.entity_counts(gold, predicted, keys).sum(axis=1).astype(np.float64)  # (sentences, 3)
        _, _, boot = spans._prf(*(weights @ counts).T)
        report = spans.entity_report(gold, predicted, keys, n_boot=0)
        return {"entity_f1": report["f1"]["value"], "entity_f1_low": float(np.quantile(boot, 0.025)),
                "entity_f1_high": float(np.quantile(boot, 0.975)), "precision": report["precision"]["value"],
                "recall": report["recall"]["value"], "macro_f1": report["macro_f1"]["value"],
                "per_label": {row["label"]: row["f1"] for row in report["per_label"]}}, boot

    frozen, frozen_boot = figures(frozen_pred)
    tuned, tuned_boot = figures(tuned_pred)
    diff = tuned_boot - frozen_boot
    out = {
        "dataset": args.dataset, "train_sentences": len(train_texts), "test_sentences": len(test_texts),
        "train_tokens": int(sum(len(t) for t in train_tags)), "test_entities": int(sum(len(g) for g in gold)),
        "device": args.device, "config": result.config, "steps": result.steps, "final_loss": result.final_loss,
        "frozen": {**frozen, "encode_train_cpu_s": frozen_train_cpu, "encode_test_cpu_s": frozen_test_cpu,
                   "fit_predict_cpu_s": frozen_fit_cpu},
        "finetuned": {**tuned, "finetune_cpu_s": finetune_cpu, "finetune_wall_s": result.seconds,
                      "encode_train_cpu_s": tuned_train_cpu, "encode_test_cpu_s": tuned_test_cpu,
                      "fit_predict_cpu_s": tuned_fit_cpu},
        "difference": {"entity_f1": tuned["entity_f1"] - frozen["entity_f1"],
                       "low": float(np.quantile(diff, 0.025)), "high": float(np.quantile(diff, 0.975)),
                       "share_of_resamples_better": float((diff > 0).mean())},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"ner_finetune-{args.dataset}.json"
    path.write_text(json.dumps(out, indent=2))
    print()
    print("| features | entity F1 (95 % interval) | precision | recall | macro F1 | CPU s |")
    print("|---|---|---|---|---|---|")
    for name, row, cpu in (("frozen", frozen, frozen_train_cpu + frozen_test_cpu + frozen_fit_cpu),
                           ("fine-tuned", tuned, finetune_cpu + tuned_train_cpu + tuned_test_cpu + tuned_fit_cpu)):
        print(f"| {name} | {row['entity_f1']:.3f} ({row['entity_f1_low']:.3f}–{row['entity_f1_high']:.3f}) | "
              f"{row['precision']:.3f} | {row['recall']:.3f} | {row['macro_f1']:.3f} | {cpu:.0f} |")
    d = out["difference"]
    print(f"\ndifference {d['entity_f1']:+.3f} entity F1 (paired 95 % interval {d['low']:+.3f} to {d['high']:+.3f}); "
          f"fine-tuning {result.steps} steps in {finetune_cpu:.0f} s CPU ({result.seconds:.0f} s wall); encoding "
          f"{len(train_texts)} + {len(test_texts)} sentences {tuned_train_cpu + tuned_test_cpu:.0f} s CPU; "
          f"span model fit + calibrate + decode {tuned_fit_cpu:.1f} s CPU. Written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
