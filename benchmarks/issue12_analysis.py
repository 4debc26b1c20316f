"""Issue 12's figures from label_efficiency.py's full output (benchmarks/out/*.json with traces).

Usage (from the repository root):
    .venv/bin/python benchmarks/issue12_analysis.py benchmarks/out/label_efficiency-hwu64-s1.json [...]

Per set and strategy, over the repeats: labels to reach random's mean macro-F1 at the budget
(mean curve, and each repeat's own curve against the same target: the interval), final
macro-F1 and ECE (mean and min-max), accuracy at 5 and 10 labels per class (the last point at
or below K x 5 and K x 10), classes seen after the seed and at 100 / 200 / 500 labels, how
evenly the picks spread over the classes (the largest class's share of the first 500 labels,
and the number of classes with fewer than 5 of them), the share of picks after the seed
from the pool's least typical tenth (information density), and the prior precision the
evidence search chose at 100 / 500 / 1,000 labels. Prints markdown tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import label_efficiency as le  # noqa: E402

from learning import acquisition  # noqa: E402


def _reach(n_labels: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    hits = np.flatnonzero(curve >= target - 1e-12)
    return int(n_labels[hits[0]]) if hits.size else None


def _fmt(values: list[int | None]) -> str:
    shown = ["–" if v is None else str(v) for v in values]
    return "/".join(shown)


def _at(points: list[dict], n: int, key: str) -> float:
    below = [p for p in points if p["n_labels"] <= n]
    return float(below[-1][key]) if below else float("nan")


def analyse(path: Path) -> list[dict]:
    result = json.loads(path.read_text())
    config = result["config"]
    name = config["dataset"]
    k = int(config["n_classes"])
    y = np.array(result["y_train"])
    density = None
    strategies = result["strategies"]
    target = strategies.get("random", {}).get("summary", {}).get("target_macro_f1")
    rows = []
    for strategy, entry in strategies.items():
        runs = entry["runs"]
        n_labels = np.array([p["n_labels"] for p in runs[0]["points"]])
        curves = np.array([[p["macro_f1"] for p in run["points"]] for run in runs])
        per_seed = [_reach(n_labels, c, target) if target is not None else None for c in curves]
        finals = curves[:, -1]
        eces = np.array([run["points"][-1]["ece"] for run in runs])
        row = {
            "set": name, "K": k, "strategy": strategy, "repeats": len(runs),
            "reach": entry["summary"]["labels_to_reach_random_final"], "reach_per_seed": per_seed,
            "ratio": entry["summary"]["ratio_to_random"],
            "final": float(finals.mean()), "final_lo": float(finals.min()), "final_hi": float(finals.max()),
            "ece": float(eces.mean()), "ece_lo": float(eces.min()), "ece_hi": float(eces.max()),
            "acc5": [_at(run["points"], 5 * k, "accuracy") for run in runs],
            "acc10": [_at(run["points"], 10 * k, "accuracy") for run in runs],
            "f1_5": [_at(run["points"], 5 * k, "macro_f1") for run in runs],
            "f1_10": [_at(run["points"], 10 * k, "macro_f1") for run in runs],
        }
        traces = result.get("traces", {})
        seen: dict[int, list[int]] = {}
        top_share, thin, outlier, lam = [], [], [], {}
        for run in runs:
            steps = traces.get(f"{strategy}/{run['seed']}")
            if not steps:
                continue
            order = [i for step in steps for i in step["chosen"]]
            labels = y[np.array(order, dtype=np.int64)]
            for n in (len(steps[0]["chosen"]), 100, 200, 500):
                seen.setdefault(n, []).append(len(np.unique(labels[:n])))
            first = np.bincount(labels[:500], minlength=k)
            top_share.append(first.max() / max(first.sum(), 1))
            thin.append(int(np.sum(first < 5)))
            if density is None:
                density = acquisition.information_density(le.embed(name)[0], rng=np.random.default_rng(0))
            low = density <= np.quantile(density, 0.1)
            after = np.array(order[len(steps[0]["chosen"]):], dtype=np.int64)
            if after.size:
                outlier.append(float(low[after[: 500]].mean()))
            for n in (100, 500, 1000):
                fitted = [s for s in steps if "prior_precision" in s and s["n_labels"] <= n]
                if fitted:
                    lam.setdefault(n, []).append(fitted[-1]["prior_precision"])
        row.update(seen={n: float(np.mean(v)) for n, v in seen.items()},
                   top_share=float(np.mean(top_share)) if top_share else None,
                   thin=float(np.mean(thin)) if thin else None,
                   outlier=float(np.mean(outlier)) if outlier else None,
                   lam={n: float(np.median(v)) for n, v in lam.items()})
        rows.append(row)
    for strategy, entry in result.get("smalltext", {}).get("strategies", {}).items():
        runs = entry["runs"]
        n_labels = np.array([p["n_labels"] for p in runs[0]["points"]])
        curves = np.array([[p["macro_f1"] for p in run["points"]] for run in runs])
        eces = np.array([run["points"][-1]["ece"] for run in runs])
        reach = entry["summary"]["labels_to_reach_reference"]
        rows.append({
            "set": name, "K": k, "strategy": f"small-text {strategy}", "repeats": len(runs), "reach": reach,
            "reach_per_seed": [_reach(n_labels, c, target) if target is not None else None for c in curves],
            "ratio": reach / config["budget"] if reach else None,
            "final": float(curves[:, -1].mean()), "final_lo": float(curves[:, -1].min()),
            "final_hi": float(curves[:, -1].max()), "ece": float(eces.mean()), "ece_lo": float(eces.min()),
            "ece_hi": float(eces.max()), "seen": {}, "top_share": None, "thin": None, "outlier": None, "lam": {},
            "acc5": [_at(run["points"], 5 * k, "accuracy") for run in runs],
            "acc10": [_at(run["points"], 10 * k, "accuracy") for run in runs],
            "f1_5": [_at(run["points"], 5 * k, "macro_f1") for run in runs],
            "f1_10": [_at(run["points"], 10 * k, "macro_f1") for run in runs],
        })
    return rows


def main(paths: list[str]) -> None:
    rows = [row for p in paths for row in analyse(Path(p))]
    print("| set | K | strategy | labels to reach random@budget (ratio) | per repeat | macro-F1 @ budget (min–max) "
          "| ECE @ budget (min–max) |")
    print("|---|---:|---|---|---|---|---|")
    for r in rows:
        ratio = f" ({r['ratio']:.2f})" if r["ratio"] is not None else ""
        print(f"| {r['set']} | {r['K']} | {r['strategy']} | {r['reach'] if r['reach'] else 'not reached'}{ratio} "
              f"| {_fmt(r['reach_per_seed'])} | {r['final']:.3f} ({r['final_lo']:.3f}–{r['final_hi']:.3f}) "
              f"| {r['ece']:.3f} ({r['ece_lo']:.3f}–{r['ece_hi']:.3f}) |")
    print()
    print("| set | strategy | classes seen: seed / 100 / 200 / 500 | top class share of first 500 "
          "| classes < 5 of first 500 | least-typical-tenth share of picks | λ at 100 / 500 / 1000 |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        if not r["seen"]:
            continue
        seen = " / ".join(f"{v:.1f}" for v in r["seen"].values())
        lam = " / ".join(f"{v:.0f}" for v in r["lam"].values())
        print(f"| {r['set']} | {r['strategy']} | {seen} | {r['top_share'] or 0:.2f} | {r['thin'] or 0:.1f} "
              f"| {r['outlier'] or 0:.2f} | {lam} |")
    print()
    print("| set | strategy | accuracy at 5 / class (per repeat) | at 10 / class | macro-F1 at 5 / 10 per class |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['strategy']} | {np.mean(r['acc5']):.3f} ({', '.join(f'{v:.3f}' for v in r['acc5'])}) "
              f"| {np.mean(r['acc10']):.3f} ({', '.join(f'{v:.3f}' for v in r['acc10'])}) "
              f"| {np.mean(r['f1_5']):.3f} / {np.mean(r['f1_10']):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
