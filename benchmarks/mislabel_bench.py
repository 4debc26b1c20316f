"""Mislabel finder against cleanlab on injected label noise (issue 15).

Usage (from the repository root):
    .venv/bin/python benchmarks/mislabel_bench.py --train TRAIN.csv --test TEST.csv --labels N \
        --noise RATE --noise-kind uniform|confusable --repeats R --out result.json

``--noise`` and ``--noise-kind`` also take several values (one process then reuses the
embeddings and each repeat's sample for every setting). CSVs have a header with ``text`` and
``label`` columns, as every benchmark here reads them (../shared/data/*/train.csv). Embeddings
come from the EmbeddingCache (var/cache/embeddings, or LABELHUB_CACHE_DIR), so only the first
run on a file encodes it; the train file is capped at 10,000 random rows and the test file at
2,000 (the same rows label_efficiency.py uses, so the two share the cache).

Protocol, per repeat: N items are drawn from the train rows and a RATE share of them get a
wrong label: ``uniform`` (another class at random) or ``confusable`` (the class the model, fitted
on the clean N, confuses most with the true one: the largest mean predicted probability on the
test items of that class). Then, on the noisy labels:

- ``labelhub``: the app's code path. ``bayes.fit`` as a model update does, the out-of-fold
  probabilities as the quality report computes them (``mislabels.out_of_fold_proba``), then
  ``mislabels.analyse_in`` (the finder, its second pass included).
- ``cleanlab_same_probs``: ``cleanlab.filter.find_label_issues`` on those same probabilities.
- ``cleanlab_default``: cleanlab's recommended pipeline: out-of-fold ``predict_proba`` of a
  scikit-learn ``LogisticRegression`` (5 stratified folds, ``cross_val_predict``) on the same
  embeddings, then ``find_label_issues``.

Each method's ranking puts its flagged items first (in its own order: ours by score, cleanlab's
by ``return_indices_ranked_by="self_confidence"``), then the others by the same score
(cleanlab's ``get_label_quality_scores``). With k = the number of flipped items:
precision@k = share of flips among the first k; recall = share of the flips the method flagged;
AUPRC = average precision of the whole ranking; macro_f1_after_fix = test macro-F1 of our model
refitted after the first k items got their true label back, against k random items
(macro_f1_after_random_fix, the same k items for every method). Writes ``{"results": [...]}``
with one row per method, noise, kind and repeat, and prints the means.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning import bayes, metrics, mislabels  # noqa: E402

MAX_TRAIN = 10_000
MAX_TEST = 2_000
METHODS = ("labelhub", "cleanlab_same_probs", "cleanlab_default")
KINDS = ("uniform", "confusable")
# ``--ablations``: our finder's variants, as extra methods "labelhub:<score>:<passes>[:prior x<scale>]".
ABLATIONS = [("self_confidence", False, 1.0), ("margin", True, 1.0), ("self_confidence", True, 4.0)]

Embedder = Callable[[list[str]], np.ndarray]


class BenchError(SystemExit):
    """Bad input: exits with the message (status 2), nothing written."""

    def __init__(self, message: str) -> None:
        super().__init__(f"mislabel_bench: {message}")


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    """(texts, labels) of a CSV with ``text`` and ``label`` columns (header names case-insensitive)."""
    csv.field_size_limit(sys.maxsize)
    if not path.is_file():
        raise BenchError(f"{path}: no such file")
    texts: list[str] = []
    labels: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "text" not in fields or "label" not in fields:
            raise BenchError(f"{path}: needs a header with 'text' and 'label' columns, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            text, label = row[fields["text"]], row[fields["label"]]
            if text is None or label is None or not label.strip():
                raise BenchError(f"{path}, row {line}: missing text or label")
            texts.append(text)
            labels.append(label.strip())
    if not texts:
        raise BenchError(f"{path}: no rows")
    return texts, labels


def capped(texts: list[str], labels: list[str], cap: int, seed: int) -> tuple[list[str], list[str]]:
    """At most ``cap`` random rows (sorted), as label_efficiency.py draws them (shared cache)."""
    if len(texts) <= cap:
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=cap, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def cache_embedder() -> Embedder:
    from learning.encoder import EmbeddingCache, get_encoder

    cache = EmbeddingCache(os.environ.get("LABELHUB_CACHE_DIR", ROOT / "var" / "cache" / "embeddings"))
    encoder = get_encoder(backend=os.environ.get("LABELHUB_BENCH_ENCODER_BACKEND", "torch"), threads=1)
    return lambda texts: cache.encode(encoder, texts)


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def confusable_targets(posterior: bayes.Posterior, x_test: np.ndarray, y_test: np.ndarray,
                       x_train: np.ndarray, y_train: np.ndarray, n_classes: int) -> np.ndarray:
    """For each class, the other class the clean model gives most probability on its test items
    (on its training items where the test split has none)."""
    soft = np.zeros((n_classes, n_classes))
    for x, y in ((x_test, y_test), (x_train, y_train)):
        proba = posterior.predict_proba(x)
        for cls in range(n_classes):
            rows = y == cls
            if rows.any() and not soft[cls].any():
                soft[cls] = proba[rows].mean(axis=0)
    np.fill_diagonal(soft, -1.0)
    return soft.argmax(axis=1)


def inject(y: np.ndarray, rate: float, kind: str, n_classes: int, targets: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, flipped mask): round(rate * N) items get a wrong label."""
    n = len(y)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, size=int(round(rate * n)), replace=False)] = True
    noisy = y.copy()
    rows = np.flatnonzero(flipped)
    if kind == "uniform":
        noisy[rows] = (y[rows] + rng.integers(1, n_classes, size=len(rows))) % n_classes
    else:
        noisy[rows] = targets[y[rows]]
    return noisy, flipped


def cleanlab_ranking(noisy: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranking of every item, flagged mask) from cleanlab's defaults."""
    from cleanlab.filter import find_label_issues  # type: ignore[import-untyped]
    from cleanlab.rank import get_label_quality_scores  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # n_jobs=1: the same result without a multiprocessing pool, whose fork deadlocks in a process that has
        # run torch (the test suite) and would break the one-thread-per-benchmark rule anyway.
        issues = np.asarray(find_label_issues(noisy, proba, return_indices_ranked_by="self_confidence", n_jobs=1),
                            dtype=int)
        quality = get_label_quality_scores(noisy, proba, method="self_confidence")
    flagged = np.zeros(len(noisy), dtype=bool)
    flagged[issues] = True
    rest = np.flatnonzero(~flagged)
    return np.concatenate([issues, rest[np.argsort(quality[rest], kind="stable")]]), flagged


def cleanlab_default_proba(x: np.ndarray, noisy: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of scikit-learn's LogisticRegression, 5 stratified folds."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.model_selection import StratifiedKFold, cross_val_predict  # type: ignore[import-untyped]

    counts = np.bincount(noisy, minlength=n_classes)
    folds = int(max(2, min(5, counts[counts > 0].min())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = cross_val_predict(LogisticRegression(max_iter=1000), x, noisy, method="predict_proba",
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=seed % 2**31))
    if proba.shape[1] != n_classes:  # a class no noisy label carries: its column is zero
        full = np.zeros((len(noisy), n_classes))
        full[:, np.unique(noisy)] = proba
        proba = full
    return np.asarray(proba)


def score_ranking(ranking: np.ndarray, flagged: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score  # type: ignore[import-untyped]

    k = int(flipped.sum())
    rank_score = np.empty(len(ranking))
    rank_score[ranking] = np.arange(len(ranking), 0, -1)
    return {
        "precision_at_k": float(flipped[ranking[:k]].mean()) if k else float("nan"),
        "recall": float((flagged & flipped).sum() / k) if k else float("nan"),
        "auprc": float(average_precision_score(flipped, rank_score)) if k else float("nan"),
        "n_flagged": int(flagged.sum()),
    }


def fixed_f1(x: np.ndarray, noisy: np.ndarray, truth: np.ndarray, rows: np.ndarray, posterior: bayes.Posterior,
             x_test: np.ndarray, y_test: np.ndarray, n_classes: int) -> float:
    """Test macro-F1 of our model refitted after ``rows`` got their true labels back."""
    corrected = noisy.copy()
    corrected[rows] = truth[rows]
    model = bayes.fit(x, corrected, n_classes=n_classes, warm_start=posterior)
    return metrics.macro_f1(y_test, model.predict(x_test), n_classes)


def run(*, train: Path, test: Path, n_labels: int, rates: Sequence[float], kinds: Sequence[str], repeats: int,
        seed: int = 0, embed: Embedder | None = None, name: str | None = None, ablations: bool = False,
        only_repeat: int | None = None, log: Callable[[str], None] = print,
        on_setting: Callable[[list[dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    for rate in rates:
        if not 0.0 < rate < 1.0:
            raise BenchError(f"--noise must lie strictly between 0 and 1, got {rate}")
    for kind in kinds:
        if kind not in KINDS:
            raise BenchError(f"--noise-kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if n_labels < 20:
        raise BenchError(f"--labels must be at least 20, got {n_labels}")
    if repeats < 1:
        raise BenchError(f"--repeats must be at least 1, got {repeats}")
    if only_repeat is not None and not 0 <= only_repeat < repeats:
        raise BenchError(f"--only-repeat must lie in [0, {repeats}), got {only_repeat}")
    name = name or train.parent.name or train.stem
    train_texts, train_labels = capped(*read_csv(train), MAX_TRAIN, seed=0)
    test_texts, test_labels = capped(*read_csv(test), MAX_TEST, seed=1)
    embed = embed or cache_embedder()
    if n_labels > len(train_texts):
        log(f"[{name}] --labels {n_labels} > {len(train_texts)} train rows: using all of them")
        n_labels = len(train_texts)
    pool_labels = np.array(train_labels)
    todo = list(range(repeats)) if only_repeat is None else [only_repeat]
    samples = {r: np.sort(np.random.default_rng(_seed(seed, r, "sample")).choice(
        len(train_texts), size=n_labels, replace=False)) for r in todo}
    # Only the sampled rows are encoded: a 1,000-label run on a 10,000-row pool need not pay for the rest.
    needed = np.unique(np.concatenate(list(samples.values())))
    started = time.perf_counter()
    x_needed = np.asarray(embed([train_texts[i] for i in needed]), dtype=np.float32)
    x_pool = np.zeros((len(train_texts), x_needed.shape[1]), dtype=np.float32)
    x_pool[needed] = x_needed
    x_test_all = np.asarray(embed(test_texts), dtype=np.float32)
    log(f"[{name}] embeddings {x_needed.shape} + {x_test_all.shape} in {time.perf_counter() - started:.1f}s")
    rows: list[dict[str, Any]] = []
    for repeat in todo:
        sample = samples[repeat]
        classes = sorted(set(pool_labels[sample].tolist()))
        if len(classes) < 2:
            raise BenchError(f"{train}: the {n_labels} sampled rows hold a single class; use more --labels")
        index = {c: i for i, c in enumerate(classes)}
        k = len(classes)
        x = x_pool[sample]
        truth = np.array([index[c] for c in pool_labels[sample]])
        keep_test = np.array([label in index for label in test_labels])
        x_test = x_test_all[keep_test]
        y_test = np.array([index[label] for label in np.array(test_labels)[keep_test]])
        if not len(y_test):
            raise BenchError(f"{test}: no row has a label the train sample has")
        clean = bayes.fit(x, truth, n_classes=k)
        f1_clean = metrics.macro_f1(y_test, clean.predict(x_test), k)
        targets = confusable_targets(clean, x_test, y_test, x, truth, k)
        for kind in kinds:
            for rate in rates:
                rng = np.random.default_rng(_seed(seed, repeat, kind, rate))
                noisy, flipped = inject(truth, rate, kind, k, targets, rng)
                n_flipped = int(flipped.sum())
                oof_seed = _seed(seed, repeat, kind, rate, "folds")
                cpu = time.process_time()
                # The app's code path: the model update's fit, then the quality report's folds.
                posterior = bayes.fit(x, noisy, n_classes=k)
                proba = mislabels.out_of_fold_proba(x, noisy, n_classes=k, posterior=posterior, seed=oof_seed)
                assert proba is not None
                oof_cpu = time.process_time() - cpu
                cpu = time.process_time()
                analysis = mislabels.analyse_in(x, noisy, n_classes=k, posterior=posterior, proba=proba,
                                                seed=oof_seed)
                ours_cpu = oof_cpu + time.process_time() - cpu
                rankings: dict[str, tuple[np.ndarray, np.ndarray, float]] = {
                    "labelhub": (analysis.ranking(), analysis.flagged, ours_cpu)}
                cpu = time.process_time()
                rankings["cleanlab_same_probs"] = (*cleanlab_ranking(noisy, proba),
                                                   oof_cpu + time.process_time() - cpu)
                if ablations:
                    for score, second, scale in ABLATIONS:
                        variant = mislabels.analyse_in(x, noisy, n_classes=k, posterior=posterior, proba=proba,
                                                       seed=oof_seed, score=score, second_pass=second,
                                                       prior_scale=scale)
                        suffix = "" if scale == 1.0 else f":prior x{scale:g}"
                        rankings[f"labelhub:{score}:{'two' if second else 'one'}_pass{suffix}"] = (
                            variant.ranking(), variant.flagged, float("nan"))
                cpu = time.process_time()
                default_proba = cleanlab_default_proba(x, noisy, k, oof_seed)
                rankings["cleanlab_default"] = (*cleanlab_ranking(noisy, default_proba), time.process_time() - cpu)
                noisy_f1 = metrics.macro_f1(y_test, posterior.predict(x_test), k)
                random_rows = np.random.default_rng(_seed(seed, repeat, kind, rate, "random")).choice(
                    n_labels, size=n_flipped, replace=False)
                random_f1 = fixed_f1(x, noisy, truth, random_rows, posterior, x_test, y_test, k)
                for method, (ranking, flagged, method_cpu) in rankings.items():
                    rows.append({
                        "method": method, "noise": rate, "kind": kind, "repeat": repeat,
                        **score_ranking(ranking, flagged, flipped),
                        "macro_f1_after_fix": fixed_f1(x, noisy, truth, ranking[:n_flipped], posterior, x_test,
                                                       y_test, k),
                        "macro_f1_after_random_fix": random_f1,
                        "macro_f1_noisy": noisy_f1, "macro_f1_clean": f1_clean,
                        "set": name, "n_labels": n_labels, "n_classes": k, "k": n_flipped,
                        "cpu_s": round(method_cpu, 2),
                    })
                if on_setting is not None:
                    on_setting(rows)
                last = rows[-len(rankings):]
                log(f"[{name}] N={n_labels} {kind} {rate:.2f} repeat {repeat}: "
                    + ", ".join(f"{r['method']} p@k {r['precision_at_k']:.3f}" for r in last))
    return {"set": name, "train": str(train), "test": str(test), "n_labels": n_labels, "repeats": repeats,
            "seed": seed, "results": rows}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over repeats per (set, N, kind, noise, method)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row.get("set", ""), row.get("n_labels", 0), row["kind"], row["noise"], row["method"])
        groups.setdefault(key, []).append(row)
    fields = ("precision_at_k", "recall", "auprc", "macro_f1_after_fix", "macro_f1_after_random_fix", "cpu_s")
    return [
        {"set": key[0], "n_labels": key[1], "kind": key[2], "noise": key[3], "method": key[4],
         "repeats": len(group), **{f: float(np.mean([g[f] for g in group])) for f in fields}}
        for key, group in groups.items()
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| set | N | kind | noise | method | P@k | recall | AUPRC | F1 fixed | F1 random fix | CPU s |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for s in summarise(rows):
        lines.append(f"| {s['set']} | {s['n_labels']} | {s['kind']} | {s['noise']:.2f} | {s['method']} | "
                     f"{s['precision_at_k']:.3f} | {s['recall']:.3f} | {s['auprc']:.3f} | "
                     f"{s['macro_f1_after_fix']:.3f} | {s['macro_f1_after_random_fix']:.3f} | {s['cpu_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, embed: Embedder | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="CSV with text,label columns")
    parser.add_argument("--test", type=Path, required=True, help="CSV with text,label columns")
    parser.add_argument("--labels", type=int, required=True, help="labelled items drawn from the train split")
    parser.add_argument("--noise", type=float, nargs="+", required=True, help="share of the labels flipped")
    parser.add_argument("--noise-kind", nargs="+", default=["uniform"], help="uniform and/or confusable")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="set name in the table (default: the train file's folder)")
    parser.add_argument("--ablations", action="store_true", help="also rank with our finder's variants")
    parser.add_argument("--only-repeat", type=int,
                        help="run only this repeat (same rows as in the full run): repeats in parallel processes")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    def save(rows: list[dict[str, Any]], **extra: Any) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": rows, **extra}, indent=1, allow_nan=True) + "\n")

    with threadpool_limits(1):
        started, cpu = time.perf_counter(), time.process_time()
        result = run(train=args.train, test=args.test, n_labels=args.labels, rates=args.noise,
                     kinds=args.noise_kind, repeats=args.repeats, seed=args.seed, embed=embed, name=args.name,
                     ablations=args.ablations, only_repeat=args.only_repeat,
                     log=lambda line: print(line, flush=True),
                     on_setting=lambda rows: save(rows, partial=True))
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["cpu_s"] = round(time.process_time() - cpu, 1)
    save(result["results"], **{key: value for key, value in result.items() if key != "results"})
    print(table(result["results"]))
    print(f"wall {result['wall_s']}s, CPU {result['cpu_s']}s -> {args.out}")
    return result


if __name__ == "__main__":
    main()
