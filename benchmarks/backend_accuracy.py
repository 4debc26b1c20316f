"""Do the encoder backends give the same embeddings, and what does int8 cost in accuracy?

    .venv/bin/python benchmarks/backend_accuracy.py [--sets trec legal_overruling hwu64] [--train 2000] [--test 1000]

For each set in ../shared/data: up to --train train rows (random, seed 0) and --test test rows
(seed 1), encoded with PyTorch, ONNX Runtime and int8 ONNX Runtime (one thread each); prints the
cosine between each ONNX backend's vectors and PyTorch's (min / mean over the test rows) and the
test accuracy of a logistic regression (C = 10) trained and tested on each backend's embeddings.
The int8 backend is used by `auto` only if it loses at most 0.5 point on every set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.label_efficiency import DATA, capped, read_csv  # noqa: E402
from learning.encoder import get_encoder  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["trec", "legal_overruling", "hwu64"])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    import torch
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    encoders = {b: get_encoder(backend=b, threads=1) for b in BACKENDS}
    print("| set | train / test | ONNX cosine min / mean | int8 cosine min / mean | accuracy PyTorch | ONNX | int8 "
          "| int8 − PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.sets:
        train, y_train = capped(*read_csv(DATA / name / "train.csv"), args.train, seed=0)
        test, y_test = capped(*read_csv(DATA / name / "test.csv"), args.test, seed=1)
        vectors = {}
        for backend, encoder in encoders.items():
            started = time.perf_counter()
            vectors[backend] = (encoder.encode(train), encoder.encode(test))
            print(f"[{name}] {backend}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        accuracy = {}
        for backend, (x_train, x_test) in vectors.items():
            model = LogisticRegression(C=10, max_iter=2000).fit(x_train, y_train)
            accuracy[backend] = float((model.predict(x_test) == np.array(y_test)).mean())
        cosine = {b: (vectors["torch"][1] * vectors[b][1]).sum(axis=1) for b in ("onnx", "onnx-int8")}
        print(f"| {name} | {len(train):,} / {len(test):,} | {cosine['onnx'].min():.5f} / {cosine['onnx'].mean():.5f} | "
              f"{cosine['onnx-int8'].min():.3f} / {cosine['onnx-int8'].mean():.3f} | {accuracy['torch']:.3f} | "
              f"{accuracy['onnx']:.3f} | {accuracy['onnx-int8']:.3f} | "
              f"{(accuracy['onnx-int8'] - accuracy['torch']) * 100:+.1f} |", flush=True)
        print(json.dumps({"set": name, "accuracy": accuracy}), file=sys.stderr)


if __name__ == "__main__":
    main()
