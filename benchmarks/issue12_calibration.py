"""Calibration at the budget, variant by variant, on the labelled sets a replay actually chose.

Usage (from the repository root):
    .venv/bin/python benchmarks/issue12_calibration.py benchmarks/out/label_efficiency-<set>-<tag>.json [...]

For every strategy and repeat of a label_efficiency.py run (its traces say which pool rows were
labelled), the model at the budget is refitted at the prior precision the replay ended with
(same optimum as the replay's warm-started fit) and its 5-fold out-of-fold logits computed as
the quality report does. Then each calibration variant is fitted on those logits and the test
ECE (15 bins, top class) and test log loss of the full model under it are measured:

- ``report``: what the app does (``calibration.fit_calibration``: temperature T and variance
  scale c by held-out log loss)
- ``T only``: c fixed at 1 (the plain probit predictive), T fitted
- ``none``: T = 1, c = 1
- ``c only``: T = 1, c fitted
- ``10 folds``: T and c from 10-fold out-of-fold logits (fold models closer to the full one)

``floor`` is the ECE a perfectly calibrated model would show on this test split (labels drawn
from the model's own probabilities, mean of 20 draws): below it, a difference is noise.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import scipy.optimize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import label_efficiency as le  # noqa: E402

from learning import bayes, calibration, metrics  # noqa: E402


def _proba(mu: np.ndarray, var: np.ndarray, t: float, c: float) -> np.ndarray:
    return bayes.softmax(mu / np.sqrt(t * t + bayes.PI_OVER_8 * c * var))


def _fit_t(mu: np.ndarray, var: np.ndarray, y: np.ndarray, c: float) -> float:
    def loss(log_t: float) -> float:
        p = _proba(mu, var, math.exp(log_t), c)
        return -float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    return math.exp(scipy.optimize.minimize_scalar(loss, bounds=(math.log(0.25), math.log(10.0)),
                                                   method="bounded").x)


def _fit_c(mu: np.ndarray, var: np.ndarray, y: np.ndarray) -> float:
    def loss(log_c: float) -> float:
        p = _proba(mu, var, 1.0, math.exp(log_c))
        return -float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    return math.exp(scipy.optimize.minimize_scalar(loss, bounds=(math.log(1e-3), math.log(3.0)),
                                                   method="bounded").x)


def run(path: Path, budget: int | None = None) -> list[dict]:
    result = json.loads(path.read_text())
    name = result["config"]["dataset"]
    k = int(result["config"]["n_classes"])
    budget = budget or int(result["config"]["budget"])
    x_train, train_labels, x_test, test_labels = le.embed(name)
    classes = sorted(set(train_labels))
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([label in index for label in test_labels])
    y_train = np.array([index[c] for c in train_labels])
    y_test = np.array([index[c] for c, kk in zip(test_labels, keep, strict=True) if kk])
    x_test = x_test[keep]
    rows = []
    for key, steps in result["traces"].items():
        strategy, seed = key.split("/")
        if ONLY and strategy not in ONLY:
            continue
        order = np.array([i for s in steps for i in s["chosen"]][:budget], dtype=np.int64)
        lam = [s["prior_precision"] for s in steps if "prior_precision" in s][-1]
        X, y = x_train[order], y_train[order]
        post = bayes.fit(X, y, n_classes=k, prior_precision=lam)
        mu_t, var_t = post.logit_mean_var(x_test)
        out: dict = {"set": name, "strategy": strategy, "seed": int(seed), "lambda": lam}
        rng = np.random.default_rng(int(seed))
        for folds, label in ((5, "report"), (10, "10 folds")):
            oof = metrics.out_of_fold_logits(X, y, n_classes=k, folds=folds, rng=np.random.default_rng(int(seed)),
                                             prior_precision=lam, warm_start=post)
            assert oof is not None
            mu, var, yy = oof.mu[oof.fitted], oof.var[oof.fitted], y[oof.fitted]
            t, c = calibration.fit_calibration(mu, var, yy)
            variants = {label: (t, c)}
            if folds == 5:
                variants["T only"] = (_fit_t(mu, var, yy, 1.0), 1.0)
                variants["none"] = (1.0, 1.0)
                variants["c only"] = (1.0, _fit_c(mu, var, yy))
            for vname, (tt, cc) in variants.items():
                p = _proba(mu_t, var_t, tt, cc)
                out[vname] = {
                    "T": tt, "c": cc, "ece": metrics.expected_calibration_error(p, y_test),
                    "nll": -float(np.mean(np.log(np.clip(p[np.arange(len(y_test)), y_test], 1e-12, None)))),
                    "acc": metrics.accuracy(y_test, p.argmax(axis=1)),
                    # > 0: over-confident on the test split, < 0: under-confident.
                    "gap": float(p.max(axis=1).mean() - metrics.accuracy(y_test, p.argmax(axis=1))),
                }
        p = _proba(mu_t, var_t, *[out["report"][v] for v in ("T", "c")])
        draws = [metrics.expected_calibration_error(p, np.array([rng.choice(k, p=row) for row in p]))
                 for _ in range(20)]
        out["floor"] = float(np.mean(draws))
        print(json.dumps(out), flush=True)
        rows.append(out)
    return rows


ONLY: set[str] = set()


def main(paths: list[str]) -> None:
    # --only=a,b restricts the strategies (the refits cost minutes on many-label sets).
    for arg in [p for p in paths if p.startswith("--only=")]:
        ONLY.update(arg.split("=", 1)[1].split(","))
    rows = [r for p in paths if not p.startswith("--") for r in run(Path(p))]
    names = ["report", "T only", "none", "c only", "10 folds"]
    print("| set | strategy | " + " | ".join(f"ECE {n}" for n in names)
          + " | ECE floor | confidence − accuracy (report) | NLL report / T only |")
    print("|---|---|" + "---:|" * (len(names) + 3))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["strategy"]), []).append(r)
    for (name, strategy), rs in groups.items():
        cells = [f"{np.mean([r[n]['ece'] for r in rs]):.3f}" for n in names]
        print(f"| {name} | {strategy} | " + " | ".join(cells) + f" | {np.mean([r['floor'] for r in rs]):.3f} | "
              f"{np.mean([r['report']['gap'] for r in rs]):+.3f} | "
              f"{np.mean([r['report']['nll'] for r in rs]):.3f} / {np.mean([r['T only']['nll'] for r in rs]):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
