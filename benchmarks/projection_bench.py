"""How far ahead the learning-curve projection (learning/feasibility.py) can be trusted.

Replays learning curves: at every point n of a curve (its "origin"), the projection is fitted on
the points up to n, exactly as the dashboard fits a project's model versions, and its value and
interval at 2n (and 5n) are compared with what the curve really showed there. Reports, per set,
how often the interval held the real value (coverage; nominal 80 %) and the mean absolute error,
beside the naive guess "no further gain" (the value at n).

Two sources of curves:

- the saved ones (default): the mean test macro-F1 curves of every strategy in
  benchmarks/results/label_efficiency-<set>.json (`label_efficiency.py`, 3 repeats each);
- `--simulate`: fresh single-run replays with `learning.simulation` on the shared sets (cached
  embeddings), recording for every model what the app's dashboard plots, the cross-validated
  macro-F1 of its quality report with its 95 % interval, beside its test macro-F1. The projection
  is fitted on the cross-validated curve and checked against the later cross-validated value
  (what the dashboard will show) and the later test value.

Usage (from the repository root, one BLAS thread):
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/projection_bench.py
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/projection_bench.py --simulate --datasets trec sms_spam \
        --seeds 0 1 --budget 800
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from learning import feasibility  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SAVED_SETS = ["ag_news", "trec", "sst2", "sst2_sentences", "sms_spam", "legal_overruling", "it_service_tickets",
              "cfpb_complaints"]


def value_at(n: np.ndarray, y: np.ndarray, target: float) -> float | None:
    """The curve's value at `target` labels (linear between its points), None beyond its end."""
    if target > n[-1] or target < n[0]:
        return None
    return float(np.interp(target, n, y))


def replay(n: np.ndarray, y: np.ndarray, *, multiples: tuple[float, ...], sigma: np.ndarray | None = None,
           truth: dict[str, np.ndarray] | None = None, n_bootstrap: int) -> list[dict[str, Any]]:
    """One projection per origin of the curve whose targets the curve reaches."""
    truth = truth or {"curve": y}
    rows = []
    for i in range(len(n)):
        targets = [m for m in multiples if n[i] * m <= n[-1]]
        if not targets:
            continue
        try:
            projection = feasibility.project(n[: i + 1], y[: i + 1], multiples=targets, n_bootstrap=n_bootstrap,
                                             sigma=None if sigma is None else sigma[: i + 1])
        except feasibility.NotEnoughCurve:
            continue
        for m in targets:
            estimate = projection.at[int(round(n[i] * m))]
            for name, real_curve in truth.items():
                real = value_at(n, real_curve, n[i] * m)
                if real is None:
                    continue
                rows.append({"multiple": m, "truth": name, "n": int(n[i]), "value": estimate.value,
                             "low": estimate.low, "high": estimate.high, "real": real,
                             "naive": float(real_curve[i]), "inside": estimate.low <= real <= estimate.high})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"origins": 0}
    inside = np.array([r["inside"] for r in rows])
    error = np.array([abs(r["value"] - r["real"]) for r in rows])
    naive = np.array([abs(r["naive"] - r["real"]) for r in rows])
    width = np.array([r["high"] - r["low"] for r in rows])
    above = np.array([r["real"] > r["high"] for r in rows])
    return {"origins": len(rows), "coverage": float(inside.mean()), "mae": float(error.mean()),
            "naive_mae": float(naive.mean()), "mean_width": float(width.mean()),
            "real_above_interval": float(above.mean())}


def saved_curves(sets: list[str]) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for name in sets:
        path = RESULTS / f"label_efficiency-{name}.json"
        if not path.exists():
            print(f"[{name}] no {path.relative_to(ROOT)}; skipped", flush=True)
            continue
        result = json.loads(path.read_text())
        curves[name] = [(strategy, np.array(entry["n_labels"], dtype=float), np.array(entry["macro_f1"]))
                        for strategy, entry in result["labelhub"].items()]
    return curves


def simulated_curves(name: str, *, seeds: list[int], strategy: str, budget: int) -> list[dict[str, Any]]:
    """Single-run replays recording each model's cross-validated macro-F1 (the dashboard's curve)."""
    import label_efficiency

    from learning import quality, simulation

    x_train, train_labels, x_test, test_labels = label_efficiency.embed(name)
    classes = sorted(set(train_labels))
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([label in index for label in test_labels])
    y_train = np.array([index[c] for c in train_labels])
    y_test = np.array([index[c] for c, k in zip(test_labels, keep, strict=True) if k])
    runs = []
    for seed in seeds:
        points = _replay_recording_reports(simulation, quality, strategy, seed=seed, budget=budget,
                                           X_train=x_train, y_train=y_train, X_test=x_test[keep], y_test=y_test,
                                           n_classes=len(classes))
        runs.append({"seed": seed, "points": points})
        print(f"[{name}] seed {seed}: {len(points)} models, CV macro-F1 {points[0]['value']:.3f} → "
              f"{points[-1]['value']:.3f}, test {points[0]['test']:.3f} → {points[-1]['test']:.3f}", flush=True)
    return runs


def _replay_recording_reports(simulation: Any, quality: Any, strategy: str, *, seed: int, budget: int,
                              **data: Any) -> list[dict[str, Any]]:
    """One `simulation.run_strategy` replay; each point gets its model's cross-validated macro-F1 (the
    report's {value, low, high}), caught on its way out of `quality.evaluate`, beside the test figure."""
    evaluate = quality.evaluate
    reports: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        report = evaluate(*args, **kwargs)
        reports.append(dict(report.macro_f1))
        return report

    def progress(strategy: str, seed: int, n_labels: int, point: dict[str, Any]) -> None:
        # Called once per model, after its report (none while fewer than two classes are labelled).
        points.append({"n_labels": n_labels, "test": point["macro_f1"], **(reports.pop() if reports else {})})

    quality.evaluate = recording
    try:
        simulation.run_strategy(strategy, seed_size=50, batch_size=20, budget=budget, seed=seed, progress=progress,
                                **data)
    finally:
        quality.evaluate = evaluate
    return [p for p in points if p.get("value") is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=SAVED_SETS)
    parser.add_argument("--simulate", action="store_true", help="fresh single-run replays instead of saved curves")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--strategy", default="bald_density_diversity")
    parser.add_argument("--budget", type=int, default=800)
    parser.add_argument("--n-bootstrap", type=int, default=feasibility.N_BOOTSTRAP)
    parser.add_argument("--out", type=Path, default=None, help="write every projection's row as JSON here")
    args = parser.parse_args(argv)
    started, cpu = time.perf_counter(), time.process_time()
    table: list[str] = []
    everything: dict[str, Any] = {}
    for name in args.datasets:
        rows: list[dict[str, Any]] = []
        if args.simulate:
            runs = simulated_curves(name, seeds=args.seeds, strategy=args.strategy, budget=args.budget)
            for run in runs:
                n = np.array([p["n_labels"] for p in run["points"]], dtype=float)
                cv = np.array([p["value"] for p in run["points"]])
                sigma = np.array([((p.get("high") or np.nan) - (p.get("low") or np.nan)) / 3.92 for p in run["points"]])
                rows += replay(n, cv, multiples=(2.0, 5.0), sigma=sigma, n_bootstrap=args.n_bootstrap,
                               truth={"cv": cv, "test": np.array([p["test"] for p in run["points"]])})
            everything[name] = {"runs": runs, "rows": rows}
        else:
            for strategy, n, y in saved_curves([name]).get(name, []):
                rows += [{**r, "strategy": strategy} for r in replay(n, y, multiples=(2.0, 5.0),
                                                                      n_bootstrap=args.n_bootstrap)]
            everything[name] = {"rows": rows}
        for multiple in (2.0, 5.0):
            for truth in sorted({r["truth"] for r in rows}):
                s = summarise([r for r in rows if r["multiple"] == multiple and r["truth"] == truth])
                if not s["origins"]:
                    continue
                line = (f"| {name} | {multiple:g}× | {truth} | {s['origins']} | {100 * s['coverage']:.0f} % | "
                        f"{s['mae']:.3f} | {s['naive_mae']:.3f} | {s['mean_width']:.3f} | "
                        f"{100 * s['real_above_interval']:.0f} % |")
                table.append(line)
                print(line, flush=True)
    all_rows = [r for entry in everything.values() for r in entry["rows"]]
    print("\n| set | at | real value | origins | coverage (nominal 80 %) | MAE | MAE of 'no gain' | "
          "interval width | real above interval |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(table))
    for multiple in (2.0, 5.0):
        for truth in sorted({r["truth"] for r in all_rows}):
            s = summarise([r for r in all_rows if r["multiple"] == multiple and r["truth"] == truth])
            if s["origins"]:
                print(f"| **all** | {multiple:g}× | {truth} | {s['origins']} | **{100 * s['coverage']:.0f} %** | "
                      f"{s['mae']:.3f} | {s['naive_mae']:.3f} | {s['mean_width']:.3f} | "
                      f"{100 * s['real_above_interval']:.0f} % |")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\n{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU, "
          f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB", flush=True)
    if args.out:
        args.out.write_text(json.dumps(everything))


if __name__ == "__main__":
    main()
