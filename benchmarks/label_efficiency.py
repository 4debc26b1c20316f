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

from learning import simulation  # noqa: E402
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


def run_dataset(name: str, *, strategies: list[str], repeats: int, budget: int, seed_size: int, batch_size: int) -> dict:
    x_train, train_labels, x_test, test_labels = embed(name)
    classes = sorted(set(train_labels))
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([label in index for label in test_labels])
    y_train = np.array([index[c] for c in train_labels])
    y_test = np.array([index[c] for c, k in zip(test_labels, keep) if k])
    started = time.perf_counter()

    def progress(strategy: str, seed: int, n_labels: int, point: dict) -> None:
        if n_labels % 200 < batch_size or n_labels >= min(budget, len(y_train)):
            print(
                f"  [{name}] {strategy:<15} seed {seed} {n_labels:>5} labels  macro-F1 {point['macro_f1']:.3f}  "
                f"ECE {point['ece']:.3f}  update {point['update_seconds']:.2f}s",
                flush=True,
            )

    result = simulation.simulate(
        X_train=x_train,
        y_train=y_train,
        X_test=x_test[keep],
        y_test=y_test,
        n_classes=len(classes),
        strategies=strategies,
        seed_size=seed_size,
        batch_size=batch_size,
        budget=budget,
        repeats=repeats,
        label_names=classes,
        progress=progress,
    )
    result["config"]["dataset"] = name
    result["config"]["pool_cap"] = MAX_TRAIN
    result["config"]["test_cap"] = MAX_TEST
    result["config"]["seconds"] = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"label_efficiency-{name}.json").write_text(json.dumps(result, indent=1))
    simulation.plot_curves(result, str(OUT / f"label_efficiency-{name}.png"), title=f"{name}: macro-F1 vs labels")
    return result


def table(results: dict[str, dict]) -> str:
    lines = [
        "| set | pool | strategy | macro-F1 @ budget | ECE @ budget | labels to reach random@budget | ratio | median update s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        for strategy, entry in result["strategies"].items():
            summary = entry["summary"]
            last = [run["points"][-1] for run in entry["runs"]]
            updates = [p["update_seconds"] for run in entry["runs"] for p in run["points"]]
            reached = summary["labels_to_reach_random_final"]
            ratio = summary["ratio_to_random"]
            lines.append(
                f"| {name} | {result['config']['n_train']} | {strategy} | {summary['final_macro_f1']:.3f} | "
                f"{np.mean([p['ece'] for p in last]):.3f} | {reached if reached is not None else 'not reached'} | "
                f"{f'{ratio:.2f}' if ratio is not None else '-'} | {np.median(updates):.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seed-size", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--encode-only", action="store_true", help="fill the embedding cache and stop")
    args = parser.parse_args(argv)
    if args.encode_only:
        for name in args.datasets:
            embed(name)
        return
    results = {}
    for name in args.datasets:
        results[name] = run_dataset(
            name,
            strategies=args.strategies,
            repeats=args.repeats,
            budget=args.budget,
            seed_size=args.seed_size,
            batch_size=args.batch_size,
        )
        print(table({name: results[name]}), flush=True)
    print()
    print(f"Pools capped at {MAX_TRAIN} random train rows and {MAX_TEST} random test rows per set.")
    print(table(results))
    (OUT / "label_efficiency.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
