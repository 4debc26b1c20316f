"""Encoder throughput: learning.encoder.Encoder vs sentence-transformers on the same texts.

Usage: .venv/bin/python benchmarks/encode_bench.py [--n 2000] [--repeats 2]
Texts: the first n/2 train rows of legal_overruling and of it_service_tickets (real text, long
and short). Both run the same packaged all-MiniLM-L6-v2 on CPU with batch size 64 and
max length 256; the best of --repeats runs is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.label_efficiency import DATA, read_csv  # noqa: E402
from learning.encoder import Encoder, default_model_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    texts = read_csv(DATA / "legal_overruling" / "train.csv")[0][: args.n // 2]
    texts += read_csv(DATA / "it_service_tickets" / "train.csv")[0][: args.n - len(texts)]
    from sentence_transformers import SentenceTransformer

    ours = Encoder(batch_size=64)
    theirs = SentenceTransformer(default_model_path(), device=ours.device)
    best_ours = best_theirs = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        a = ours.encode(texts)
        best_ours = min(best_ours, time.perf_counter() - t)
        t = time.perf_counter()
        b = theirs.encode(texts, batch_size=64, convert_to_numpy=True)
        best_theirs = min(best_theirs, time.perf_counter() - t)
    print(f"{len(texts)} texts on {ours.device}")
    print(f"Encoder.encode                 {len(texts) / best_ours:8.1f} texts/s ({best_ours:.1f}s)")
    print(f"SentenceTransformer.encode     {len(texts) / best_theirs:8.1f} texts/s ({best_theirs:.1f}s)")
    print(f"ratio ours/theirs              {best_theirs / best_ours:8.2f}x   max |diff| {np.abs(a - b).max():.2e}")


if __name__ == "__main__":
    main()
