"""Wall time of one CPU fine-tune with the app's defaults, on as many threads as a worker gets.

    .venv/bin/python benchmarks/finetune_cpu_time.py --train TRAIN.csv --labels 1000 --threads 2 [--repeats 1]

The issue's bar: a CPU fine-tune of 1,000 labels within 10 minutes on 2 cores. N random items of the train split
(labels as given), `learning.finetune.finetune` with `FinetuneConfig.for_device("cpu")` (what a CPU worker runs),
torch and BLAS limited to ``--threads``; then the N texts embedded with the fine-tuned encoder, to give the rate at
which the job re-embeds a pool (items per second), so its whole length can be read off for a pool of any size.
Prints and writes (``--out``) wall and CPU seconds. Run it on an otherwise idle machine: on shared cores the wall
time is the neighbours' as much as ours.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from finetune_bench import labelled_splits  # noqa: E402

from learning.encoder import default_model_path, get_encoder  # noqa: E402
from learning.finetune import FinetuneConfig, finetune  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    texts_all, y_all, _, _, names = labelled_splits(args.train, None)
    results = []
    for repeat in range(args.repeats):
        rows = np.random.default_rng(repeat).choice(len(texts_all), size=min(args.labels, len(texts_all)),
                                                    replace=False)
        texts = [texts_all[i] for i in rows]
        y = y_all[rows]
        config = FinetuneConfig.for_device("cpu", seed=repeat)
        with tempfile.TemporaryDirectory(prefix="labelhub-finetune-") as folder:
            wall, cpu = time.perf_counter(), time.process_time()
            done = finetune(default_model_path(), texts, y, n_classes=len(names), out=folder, config=config)
            tune_wall, tune_cpu = time.perf_counter() - wall, time.process_time() - cpu
            encoder = get_encoder(folder, backend="torch", device="cpu", threads=args.threads)
            wall = time.perf_counter()
            encoder.encode(texts)
            embed_wall = time.perf_counter() - wall
        result = {"labels": len(texts), "threads": args.threads, "repeat": repeat, "steps": done.steps,
                  "epochs": config.epochs, "max_length": config.max_length, "finetune_wall_seconds": tune_wall,
                  "finetune_cpu_seconds": tune_cpu, "reembed_items_per_second": len(texts) / embed_wall}
        results.append(result)
        print(f"{args.train.parent.name}: {len(texts)} labels, {args.threads} threads: fine-tune {tune_wall:.0f} s "
              "wall "
              f"({tune_cpu:.0f} s CPU, {done.steps} steps, {config.epochs} epochs, {config.max_length} tokens); "
              f"re-embedding {len(texts) / embed_wall:.0f} items/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"results": results, "train": str(args.train)}, indent=1))


if __name__ == "__main__":
    main()
