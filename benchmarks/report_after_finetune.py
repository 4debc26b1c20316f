"""Does the quality report tell the truth after a fine-tune? Its figures against the test split's.

    .venv/bin/python benchmarks/report_after_finetune.py --train TRAIN.csv --test TEST.csv \\
        --labels 1000 --repeats 2 --out result.json [--first-repeat 0] [--device cpu|cuda]

For each repeat: N labelled items drawn at random from the train split (seeded by the repeat),
the app's fine-tune split (`learning.finetune.heldout_split`, 20 % of each label held out), the
encoder fine-tuned on the rest with the app's recipe, the N items and the test split embedded with
the frozen and the fine-tuned encoder, and the app's model update on each. Then, against the test
split's macro-F1 and ECE under that calibration:

- frozen: the report as it always was (5-fold cross-validation on every label);
- fine-tuned, all labels: the same report on the fine-tuned vectors (what the app did before:
  the items the encoder was trained on sit on their labels, so the report flatters the model);
- fine-tuned, unseen only: the app's report now (`quality.evaluate(..., unseen=...)`), measured
  on the held-out items only, every fold still training on the others; its calibration is the
  one the model gets.

Writes ``{"results": [{"labels", "repeat", "frozen": {...}, "finetuned_all": {...},
"finetuned_unseen": {...}}]}`` where each side has ``report_macro_f1``, ``report_ece``,
``test_macro_f1``, ``test_ece`` and ``n_eval``, and prints the gaps (report minus test). Random
labels, not the default strategy's picks: the question is the report's protocol, and a replay
would need the whole pool embedded first. One BLAS/torch thread per process on CPU.
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

from learning import bayes, metrics, quality, simulation  # noqa: E402
from learning.encoder import default_model_path, get_encoder  # noqa: E402
from learning.finetune import FinetuneConfig, finetune, heldout_split  # noqa: E402

HELDOUT = 0.2  # the app's FINETUNE_HELDOUT default


def side(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *, n_classes: int, seed: int,
         unseen: np.ndarray | None = None) -> dict[str, Any]:
    """The app's model update and report on these vectors, and the calibrated model on the test split."""
    posterior: bayes.Posterior = simulation._update(X, y, n_classes=n_classes, multi_label=False, previous=None)
    report = quality.evaluate(X, y, n_classes=n_classes, label_names=[str(k) for k in range(n_classes)],
                              multi_label=False, seed=seed, posterior=posterior, unseen=unseen)
    posterior = quality.calibrate(posterior, X, y, seed=seed, report=report)
    proba = posterior.predict_proba(X_test)
    return {"report_macro_f1": report.macro_f1["value"], "report_ece": report.ece, "n_eval": report.n_eval,
            "test_macro_f1": metrics.macro_f1(y_test, proba.argmax(axis=1), n_classes),
            "test_ece": metrics.expected_calibration_error(proba, y_test),
            "temperature": posterior.temperature}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--labels", default="1000", help="comma-separated label counts")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--first-repeat", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    use_device(args.device)
    model_path = default_model_path()
    train_texts, y_all, test_texts, y_test, names = labelled_splits(args.train, args.test)
    n_classes = len(names)
    cache = embedding_cache()
    frozen = get_encoder(model_path, backend="torch", device=args.device)
    X_test_frozen = cache.encode(frozen, test_texts)
    results: list[dict[str, Any]] = []
    for n in sorted({int(v) for v in args.labels.split(",") if v.strip()}):
        for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
            rows = np.random.default_rng(repeat).choice(len(train_texts), size=min(n, len(train_texts)),
                                                        replace=False)
            texts, y = [train_texts[i] for i in rows], y_all[rows]
            train_rows, held_rows = heldout_split(y, n_classes, HELDOUT, seed=repeat)
            unseen = np.zeros(len(y), dtype=bool)
            unseen[held_rows] = True
            X_frozen = cache.encode(frozen, texts)
            config = FinetuneConfig.for_device(args.device, seed=repeat)
            with tempfile.TemporaryDirectory(prefix="labelhub-finetune-") as folder:
                started = time.process_time()
                finetune(model_path, [texts[i] for i in train_rows], y[train_rows], n_classes=n_classes,
                         out=folder, config=config)
                tuned = get_encoder(folder, backend="torch", device=args.device)
                X_tuned, X_test_tuned = tuned.encode(texts), tuned.encode(test_texts)
                cpu = time.process_time() - started
            result = {
                "labels": n, "repeat": repeat, "n_heldout": int(len(held_rows)), "cpu_seconds": cpu,
                "frozen": side(X_frozen, y, X_test_frozen, y_test, n_classes=n_classes, seed=repeat),
                "finetuned_all": side(X_tuned, y, X_test_tuned, y_test, n_classes=n_classes, seed=repeat),
                "finetuned_unseen": side(X_tuned, y, X_test_tuned, y_test, n_classes=n_classes, seed=repeat,
                                         unseen=unseen),
            }
            results.append(result)
            print_row(result)
            args.out.write_text(json.dumps({"results": results, "train": str(args.train), "test": str(args.test),
                                            "model": str(model_path)}, indent=1))


def print_row(result: dict[str, Any]) -> None:
    head = f"N={result['labels']} r={result['repeat']}"
    for key in ("frozen", "finetuned_all", "finetuned_unseen"):
        s = result[key]
        print(f"{head} {key:17s} report F1 {s['report_macro_f1']:.3f} (n={s['n_eval']}) test F1 "
              f"{s['test_macro_f1']:.3f} gap {s['report_macro_f1'] - s['test_macro_f1']:+.3f} | report ECE "
              f"{s['report_ece']:.3f} test ECE {s['test_ece']:.3f} (T={s['temperature']:.2f})", flush=True)


if __name__ == "__main__":
    main()
