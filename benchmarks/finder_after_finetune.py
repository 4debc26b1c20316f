"""Does the mislabel finder still find the flips a fine-tuned encoder was trained on?

    .venv/bin/python benchmarks/finder_after_finetune.py --train TRAIN.csv --labels 1000 --noise 0.1 \\
        --repeats 1 --out result.json [--first-repeat 0] [--device cpu|cuda]

For each repeat: N items drawn at random from the train split, a ``--noise`` share of their labels
flipped uniformly to another class, the app's fine-tune split (`learning.finetune.heldout_split`,
20 % held out) and the encoder fine-tuned on the rest's noisy labels with the app's recipe. Then the
app's finder (`learning.mislabels.analyse_in`, from the app's model update on those vectors) on

- the frozen (configured) encoder's vectors: what the review uses once a fine-tuned encoder serves;
- the fine-tuned encoder's vectors: what it used before.

For each: precision@k over all items (k = number of flips), and the recall of the finder's flags
(what the review queue lists) among the flips the encoder was trained on and among the held-out
ones. Writes ``{"results": [{"labels", "repeat", "noise", "n_flips", "frozen": {...},
"finetuned": {...}}]}`` and prints them. One BLAS/torch thread per process on CPU.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from finetune_bench import embedding_cache, labelled_splits, use_device  # noqa: E402

from learning import mislabels, simulation  # noqa: E402
from learning.encoder import default_model_path, get_encoder  # noqa: E402
from learning.finetune import FinetuneConfig, finetune, heldout_split  # noqa: E402

HELDOUT = 0.2  # the app's FINETUNE_HELDOUT default


def judged(X: np.ndarray, y: np.ndarray, flipped: np.ndarray, trained: np.ndarray, *, n_classes: int,
           seed: int) -> dict[str, float]:
    posterior = simulation._update(X, y, n_classes=n_classes, multi_label=False, previous=None)
    analysis = mislabels.analyse_in(X, y, n_classes=n_classes, posterior=posterior, seed=seed)
    order = analysis.ranking()
    k = int(flipped.sum())
    out = {"precision_at_k": float(flipped[order[:k]].mean()), "n_flagged": int(analysis.flagged.sum())}
    for name, part in (("trained_on", trained), ("held_out", ~trained)):
        flips = flipped & part
        out[f"flag_recall_{name}"] = float((analysis.flagged & flips).sum() / flips.sum()) if flips.any() else None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--labels", default="1000")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--first-repeat", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    use_device(args.device)
    model_path = default_model_path()
    texts_all, y_all, _, _, names = labelled_splits(args.train, None)
    k_classes = len(names)
    cache = embedding_cache()
    frozen = get_encoder(model_path, backend="torch", device=args.device)
    results: list[dict[str, Any]] = []
    for n in sorted({int(v) for v in args.labels.split(",") if v.strip()}):
        for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
            rng = np.random.default_rng(repeat)
            rows = rng.choice(len(texts_all), size=min(n, len(texts_all)), replace=False)
            texts, truth = [texts_all[i] for i in rows], y_all[rows]
            flip = rng.choice(len(rows), size=int(round(args.noise * len(rows))), replace=False)
            y = truth.copy()
            y[flip] = (y[flip] + rng.integers(1, k_classes, len(flip))) % k_classes
            flipped = y != truth
            train_rows, _ = heldout_split(y, k_classes, HELDOUT, seed=repeat)
            trained = np.zeros(len(y), dtype=bool)
            trained[train_rows] = True
            X_frozen = cache.encode(frozen, texts)
            with tempfile.TemporaryDirectory(prefix="labelhub-finetune-") as folder:
                started = time.process_time()
                finetune(model_path, [texts[i] for i in train_rows], y[train_rows], n_classes=k_classes,
                         out=folder, config=FinetuneConfig.for_device(args.device, seed=repeat))
                X_tuned = get_encoder(folder, backend="torch", device=args.device).encode(texts)
                cpu = time.process_time() - started
            result = {"labels": n, "repeat": repeat, "noise": args.noise, "n_flips": int(flipped.sum()),
                      "n_flips_trained_on": int((flipped & trained).sum()), "cpu_seconds": cpu,
                      "frozen": judged(X_frozen, y, flipped, trained, n_classes=k_classes, seed=repeat),
                      "finetuned": judged(X_tuned, y, flipped, trained, n_classes=k_classes, seed=repeat)}
            results.append(result)
            for key in ("frozen", "finetuned"):
                r = result[key]
                print(f"N={n} r={repeat} noise {args.noise} {key:9s} P@k {r['precision_at_k']:.3f}, flags "
                      f"{r['n_flagged']}, recall of the flags: trained-on flips {r['flag_recall_trained_on']:.2f}, "
                      f"held-out flips {r['flag_recall_held_out']:.2f}", flush=True)
            args.out.write_text(json.dumps({"results": results, "train": str(args.train),
                                            "model": str(model_path)}, indent=1))


if __name__ == "__main__":
    main()
