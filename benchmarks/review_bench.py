"""What the review queue's candidates cost and whether the ambiguous ones are what they claim (issue 15).

Usage (from the repository root):
    DEBUG=1 .venv/bin/python benchmarks/review_bench.py --train ../shared/data/trec/train.csv --labels 1000 \
        --pool 2000 --noise 0.1 [--out result.json]

Per data set: N labelled items drawn from the train rows, a RATE share of them flipped to another class at
random; P other rows are the unlabelled pool; the remaining rows (at most 10,000 read, as mislabel_bench.py
and label_efficiency.py read them, so the embedding cache is shared) train a "many labels" reference model.
``learning.review_candidates.find_candidates`` then runs as the report job runs it (the model fitted on the
noisy N as a model update fits it). Printed and written:

- seconds of wall and CPU time for the whole computation (one BLAS thread), and the count of each kind;
- likely mislabels against the injected flips: precision, recall, precision@k (k = number of flips);
- the ambiguity claim: pool items chosen as ambiguous (high entropy, low BALD) against pool items with as
  high an entropy but BALD above the median ("needs labels"). For each group, accuracy of the N-label model
  and of the reference model trained on thousands more clean labels. If BALD separates the two kinds of
  uncertainty, more labels raise the "needs labels" group's accuracy more than the ambiguous group's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import django  # noqa: E402

django.setup()

from mislabel_bench import MAX_TRAIN, cache_embedder, capped, read_csv  # noqa: E402

from annotation.models import ReviewKind  # noqa: E402
from learning import acquisition, bayes, review_candidates  # noqa: E402


def run(train: Path, n_labels: int, n_pool: int, noise: float, seed: int) -> dict[str, object]:
    texts, labels = capped(*read_csv(train), MAX_TRAIN, seed=0)
    names = sorted(set(labels))
    y = np.array([names.index(label) for label in labels])
    X = cache_embedder()(texts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    lab, pool, rest = order[:n_labels], order[n_labels:n_labels + n_pool], order[n_labels + n_pool:]
    given = y[lab].copy()
    flipped = rng.choice(n_labels, int(round(noise * n_labels)), replace=False)
    for i in flipped:
        given[i] = rng.choice([k for k in range(len(names)) if k != y[lab][i]])
    posterior = bayes.fit(X[lab], given, n_classes=len(names))
    inputs = review_candidates.Inputs(
        label_keys=names, label_names=names, multi_label=False, ids=lab.astype(np.int64), X=X[lab], targets=given,
        posterior=posterior, pool_ids=pool.astype(np.int64), X_pool=X[pool], seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    found = review_candidates.find_candidates(inputs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    by_kind = {kind: [f for f in found if f.kind == kind] for kind in review_candidates.REVIEW_KINDS}
    flips = set(lab[flipped].tolist())
    flagged = [f.example_id for f in by_kind[ReviewKind.MISLABEL]]  # best first
    hits = len(set(flagged) & flips)
    k = len(flips)

    # The ambiguity claim, on the pool: the same quantile thresholds as the queue.
    scored = acquisition.score_pool(posterior, X[pool], strategy="bald", n_samples=review_candidates.BALD_SAMPLES,
                                    rng=np.random.default_rng(seed))
    entropy = acquisition.entropy(scored.proba.astype(np.float64))
    bald = scored.scores
    chosen = {f.example_id for f in by_kind[ReviewKind.AMBIGUOUS]}
    ambiguous = np.array([int(i) in chosen for i in pool])
    high_entropy = entropy >= np.quantile(entropy, review_candidates.AMBIGUOUS_ENTROPY_QUANTILE)
    needs_labels = high_entropy & (bald > np.quantile(bald, review_candidates.AMBIGUOUS_BALD_QUANTILE))
    reference = bayes.fit(X[rest], y[rest], n_classes=len(names))
    small_pred = scored.proba.argmax(axis=1)
    big_pred = reference.predict(X[pool])

    def acc(pred: np.ndarray, mask: np.ndarray) -> float | None:
        return float(np.mean(pred[mask] == y[pool][mask])) if mask.any() else None

    groups = {}
    everything = np.ones(len(pool), bool)
    for name, mask in (("ambiguous", ambiguous), ("needs_labels", needs_labels), ("all_pool", everything)):
        groups[name] = {"n": int(mask.sum()), "acc_n_labels": acc(small_pred, mask),
                        "acc_reference": acc(big_pred, mask)}
    return {
        "train": str(train), "labels": n_labels, "pool": n_pool, "reference_labels": int(len(rest)),
        "classes": len(names), "noise": noise, "seed": seed, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "counts": {str(kind): len(rows) for kind, rows in by_kind.items()},
        "mislabel_precision": hits / len(flagged) if flagged else None, "mislabel_recall": hits / k if k else None,
        "mislabel_precision_at_k": len(set(flagged[:k]) & flips) / k if k else None,
        "ambiguity": groups,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, nargs="+")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [run(path, args.labels, args.pool, args.noise, args.seed) for path in args.train]
    for r in results:
        amb, need = r["ambiguity"]["ambiguous"], r["ambiguity"]["needs_labels"]  # type: ignore[index]
        print(f"{Path(str(r['train'])).parent.name}: N={r['labels']} pool={r['pool']} K={r['classes']} "
              f"{r['wall_s']} s wall, {r['cpu_s']} s CPU; counts {r['counts']}")
        print(f"  mislabels: precision {r['mislabel_precision']:.2f} recall {r['mislabel_recall']:.2f} "
              f"p@k {r['mislabel_precision_at_k']:.2f}")
        for name, g in (("ambiguous", amb), ("needs labels", need)):
            if g["n"]:
                print(f"  {name}: {g['n']} pool items, accuracy {g['acc_n_labels']:.2f} with N labels -> "
                      f"{g['acc_reference']:.2f} with {r['reference_labels']} clean labels")
    if args.out:
        args.out.write_text(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    main()
