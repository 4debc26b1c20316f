"""Frozen encoder + Bayesian layer vs fine-tuned encoder + the same Bayesian layer.

    .venv/bin/python benchmarks/finetune_bench.py --train TRAIN.csv --test TEST.csv \\
        --labels 250,500,1000 --repeats 3 --device cpu --out result.json [--method classifier|setfit|both]

For each repeat the labelled items are those the app's default strategy picks in a replay
of the harness (`learning.simulation.run_strategy`, seed batch then batches of 50, on the
frozen embeddings), so each label count N is the first N items a project would have labelled.
At each N:

- frozen: the harness's own model at N labels (Bayesian last layer on frozen embeddings,
  calibrated by its quality report), scored on the test split;
- fine-tuned: as the app does it, `learning.finetune.finetune` on the N items less the share
  the app holds out (``--heldout``, 20 %, `learning.finetune.heldout_split`), then the N items and
  the test split re-embedded with the fine-tuned encoder and the same Bayesian update on all N,
  its report (and so its calibration) on the held-out items the encoder never saw, as the app's
  report of a fine-tuned encoder's model is. ``--heldout 0`` fine-tunes on all N (until the sixth
  session, the only way: its calibration then saw only items the encoder was trained on).

Writes ``{"results": [{"labels", "repeat", "method", "frozen_macro_f1", "finetuned_macro_f1",
"frozen_ece", "finetuned_ece", "finetune_seconds", ...}]}`` and prints a table with the
difference and its range over repeats. CSV files need ``text`` and ``label`` columns. Runs
on a clean checkout from the repo's own install: the encoder is the packaged default (or
LABELHUB_ENCODER_MODEL), loaded offline. One BLAS/torch thread per process on CPU.
"""
from __future__ import annotations

import argparse
import csv
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

from learning import metrics, simulation  # noqa: E402
from learning.encoder import EmbeddingCache, default_model_path, get_encoder  # noqa: E402
from learning.finetune import METHODS, FinetuneConfig, finetune, heldout_split  # noqa: E402

STRATEGY = "bald_density_diversity"
SEED_SIZE = 50
BATCH_SIZE = 50
MAX_TRAIN = 10_000
MAX_TEST = 2_000
# The app's LABELHUB_FINETUNE_HELDOUT default: the share of the labels a fine-tune holds out.
HELDOUT = 0.2


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise SystemExit(f"{path}: needs a header with 'text' and 'label' columns, found {reader.fieldnames}")
        rows = [(row["text"], row["label"]) for row in reader if row["text"] and row["label"]]
    if not rows:
        raise SystemExit(f"{path}: no rows with both a text and a label")
    return [t for t, _ in rows], [label for _, label in rows]


def capped(texts: list[str], labels: list[str], cap: int, seed: int) -> tuple[list[str], list[str]]:
    if len(texts) <= cap:
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=cap, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def use_device(device: str) -> None:
    """Refuse ``cuda`` without a visible GPU; on CPU, one torch and BLAS thread (this machine's rule)."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to torch")
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def labelled_splits(train: Path, test: Path | None, *, max_train: int = MAX_TRAIN, max_test: int = MAX_TEST
                    ) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    """(train texts, their class indices, test texts, theirs, class names): the capped splits every fine-tune
    benchmark reads; test rows of a class the train split lacks are dropped (no test split: empty)."""
    train_texts, train_names = capped(*read_csv(train), max_train, seed=0)
    names = sorted(set(train_names))
    index = {name: i for i, name in enumerate(names)}
    test_texts: list[str] = []
    y_test = np.empty(0, dtype=np.int64)
    if test is not None:
        texts, test_names = capped(*read_csv(test), max_test, seed=1)
        kept = [i for i, name in enumerate(test_names) if name in index]
        test_texts = [texts[i] for i in kept]
        y_test = np.array([index[test_names[i]] for i in kept])
    return train_texts, np.array([index[n] for n in train_names]), test_texts, y_test, names


def embedding_cache() -> EmbeddingCache:
    return EmbeddingCache(Path(os.environ.get("LABELHUB_CACHE_DIR", ROOT / "var" / "cache" / "embeddings")))


def picked_order(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *, n_classes: int,
                 budget: int, seed: int) -> tuple[list[int], dict[int, dict[str, float]]]:
    """The default strategy's picks in order, and the harness's frozen model figures per label count."""
    trace: list[dict[str, Any]] = []
    points = simulation.run_strategy(STRATEGY, X_train=X, y_train=y, X_test=X_test, y_test=y_test,
                                     n_classes=n_classes, seed_size=SEED_SIZE, batch_size=BATCH_SIZE,
                                     budget=budget, seed=seed, trace=trace)
    order = [i for step in trace for i in step["chosen"]]
    return order, {int(p["n_labels"]): p for p in points}


def bayes_on(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *, n_classes: int,
             seed: int, unseen: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """The app's model update + quality report on these features, scored on the test split (``unseen``: the
    items the encoder was not fine-tuned on, which the report measures and calibrates on, as the app's does)."""
    posterior = simulation._update(X, y, n_classes=n_classes, multi_label=False, previous=None)
    posterior = simulation._report(posterior, X, y, n_classes=n_classes, multi_label=False, seed=seed, unseen=unseen)
    proba = posterior.predict_proba(X_test)
    pred = proba.argmax(axis=1)
    return ({"macro_f1": metrics.macro_f1(y_test, pred, n_classes),
             "ece": metrics.expected_calibration_error(proba, y_test)}, pred)


def f1_interval(y_test: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float]:
    low, high = metrics.bootstrap_interval(y_test, pred, "macro_f1", n_classes=n_classes,
                                           rng=np.random.default_rng(0))
    return [float(low), float(high)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--labels", default="250,500,1000", help="comma-separated label counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-repeat", type=int, default=0,
                        help="number of the first repeat (its seed): split the repeats over processes or machines")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", default="classifier", choices=[*METHODS, "both"],
                        help="fine-tuning method (default: classifier, the one chosen by this benchmark)")
    parser.add_argument("--model", default=os.environ.get("LABELHUB_ENCODER_MODEL") or None,
                        help="encoder folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--max-train", type=int, default=MAX_TRAIN)
    parser.add_argument("--max-test", type=int, default=MAX_TEST)
    parser.add_argument("--epochs", type=int, default=None, help="override the device's default epochs")
    parser.add_argument("--heldout", type=float, default=HELDOUT,
                        help="share of the N labels held out of the fine-tune, as the app holds them out "
                             "(LABELHUB_FINETUNE_HELDOUT): the fine-tuned model is fitted on all N and its "
                             "calibration on these; 0 fine-tunes on all N (its calibration then sees only items "
                             "the encoder was trained on)")
    args = parser.parse_args(argv)
    sizes = sorted({int(v) for v in args.labels.split(",") if v.strip()})
    methods = list(METHODS) if args.method == "both" else [args.method]
    use_device(args.device)
    model_path = args.model or default_model_path()
    train_texts, y, test_texts, y_test, names = labelled_splits(args.train, args.test, max_train=args.max_train,
                                                                max_test=args.max_test)
    n_classes = len(names)
    budget = min(max(sizes), len(train_texts))

    cache = embedding_cache()
    frozen = get_encoder(model_path, backend="torch", device=args.device)
    started = time.perf_counter()
    X, X_test = cache.encode(frozen, train_texts), cache.encode(frozen, test_texts)
    print(f"frozen embeddings {X.shape} + {X_test.shape} in {time.perf_counter() - started:.1f}s; "
          f"{n_classes} classes; device {args.device}", flush=True)

    results: list[dict[str, Any]] = []
    for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
        order, frozen_points = picked_order(X, y, X_test, y_test, n_classes=n_classes, budget=budget, seed=repeat)
        for n in sizes:
            if n > len(order):
                print(f"skip {n} labels: the train split has {len(order)}", flush=True)
                continue
            rows = np.array(order[:n])
            point = frozen_points.get(n)
            if point is None:  # a size between two batches: fit the frozen model on exactly these rows
                point, _ = bayes_on(X[rows], y[rows], X_test, y_test, n_classes=n_classes, seed=repeat)
            for method in methods:
                config = FinetuneConfig.for_device(args.device, method=method, seed=repeat,
                                                   **({"epochs": args.epochs} if args.epochs else {}))
                if args.heldout > 0:
                    tuned_rows, held_rows = heldout_split(y[rows], n_classes, args.heldout, seed=repeat)
                    unseen: np.ndarray | None = np.isin(np.arange(n), held_rows)
                else:
                    tuned_rows, unseen = np.arange(n), None
                with tempfile.TemporaryDirectory(prefix="labelhub-finetune-") as folder:
                    cpu0 = time.process_time()
                    done = finetune(model_path, [train_texts[i] for i in rows[tuned_rows]], y[rows[tuned_rows]],
                                    n_classes=n_classes, out=folder, config=config)
                    tuned = get_encoder(folder, backend="torch", device=args.device)
                    Xt, Xt_test = tuned.encode([train_texts[i] for i in rows]), tuned.encode(test_texts)
                    figures, pred = bayes_on(Xt, y[rows], Xt_test, y_test, n_classes=n_classes, seed=repeat,
                                             unseen=unseen)
                    cpu = time.process_time() - cpu0
                result = {
                    "labels": n, "repeat": repeat, "method": method,
                    "frozen_macro_f1": float(point["macro_f1"]), "finetuned_macro_f1": figures["macro_f1"],
                    "frozen_ece": float(point["ece"]), "finetuned_ece": figures["ece"],
                    "finetune_seconds": done.seconds, "finetune_steps": done.steps,
                    "finetuned_macro_f1_interval": f1_interval(y_test, pred, n_classes),
                    "cpu_seconds_with_reembedding": cpu, "device": args.device, "finetune_config": done.config,
                    "finetune_heldout": args.heldout, "finetuned_on": int(len(tuned_rows)),
                }
                results.append(result)
                print(f"N={n} r={repeat} {method}: frozen {result['frozen_macro_f1']:.3f} → fine-tuned "
                      f"{result['finetuned_macro_f1']:.3f} (ECE {result['frozen_ece']:.3f} → "
                      f"{result['finetuned_ece']:.3f}) in {done.seconds:.0f}s, {done.steps} steps", flush=True)
                args.out.write_text(json.dumps({"results": results, "train": str(args.train),
                                                "test": str(args.test), "model": str(model_path)}, indent=1))
    print_table(results)


def print_table(results: list[dict[str, Any]]) -> None:
    print("\nlabels | method | frozen F1 | fine-tuned F1 | Δ F1 (min–max) | frozen ECE | fine-tuned ECE | seconds")
    keys = sorted({(r["labels"], r["method"]) for r in results})
    for n, method in keys:
        rows = [r for r in results if r["labels"] == n and r["method"] == method]
        delta = np.array([r["finetuned_macro_f1"] - r["frozen_macro_f1"] for r in rows])

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return float(np.mean([r[key] for r in rows]))

        print(f"{n} | {method} | {mean('frozen_macro_f1'):.3f} | {mean('finetuned_macro_f1'):.3f} | "
              f"{delta.mean():+.3f} ({delta.min():+.3f}–{delta.max():+.3f}) | {mean('frozen_ece'):.3f} | "
              f"{mean('finetuned_ece'):.3f} | {mean('finetune_seconds'):.0f}")


if __name__ == "__main__":
    main()
