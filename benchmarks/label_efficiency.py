"""Label-efficiency benchmark: learning curves of acquisition strategies on every set.

Usage (from the repository root):
    .venv/bin/python benchmarks/label_efficiency.py [--datasets trec sms_spam] [--repeats 3] [--budget 1000]

Pools are capped so the run fits on 2 CPU cores: at most 10,000 random train rows (the pool)
and 2,000 random test rows per set (fixed seed, so every run and every strategy sees the same
rows). Embeddings come from the EmbeddingCache, so only the first run pays for encoding.
Writes benchmarks/out/label_efficiency-<set>.json and .png, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.encoder import EmbeddingCache, get_encoder  # noqa: E402

DATA = Path(os.environ.get("LABELHUB_DATA_DIR", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "out"
DATASETS = [
    "ag_news",
    "trec",
    "sst2",
    "sst2_sentences",
    "sms_spam",
    "legal_overruling",
    "it_service_tickets",
    "cfpb_complaints",
]
STRATEGIES = ["random", "entropy", "margin", "bald", "bald_diversity"]
MAX_TRAIN = 10_000
MAX_TEST = 2_000


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    csv.field_size_limit(sys.maxsize)
    texts: list[str] = []
    labels: list[str] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels


def capped(texts: list[str], labels: list[str], cap: int, seed: int) -> tuple[list[str], list[str]]:
    if len(texts) <= cap:
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=cap, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def load_dataset(name: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train texts, train labels, test texts, test labels), capped with a fixed seed."""
    train_texts, train_labels = capped(*read_csv(DATA / name / "train.csv"), MAX_TRAIN, seed=0)
    test_texts, test_labels = capped(*read_csv(DATA / name / "test.csv"), MAX_TEST, seed=1)
    return train_texts, train_labels, test_texts, test_labels


def cache_dir() -> Path:
    return Path(os.environ.get("LABELHUB_CACHE_DIR", ROOT / "var" / "cache" / "embeddings"))


def embed(name: str) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    train_texts, train_labels, test_texts, test_labels = load_dataset(name)
    cache = EmbeddingCache(cache_dir())
    encoder = get_encoder()
    started = time.perf_counter()
    x_train = cache.encode(encoder, train_texts)
    x_test = cache.encode(encoder, test_texts)
    print(f"[{name}] embeddings {x_train.shape} + {x_test.shape} in {time.perf_counter() - started:.1f}s", flush=True)
    return x_train, train_labels, x_test, test_labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--encode-only", action="store_true", help="fill the embedding cache and stop")
    args = parser.parse_args(argv)
    for name in args.datasets:
        embed(name)


if __name__ == "__main__":
    main()
