"""The issue-15 table for benchmarks/README.md from the mislabel_bench.py result files.

Usage: .venv/bin/python benchmarks/results/issue15/table.py benchmarks/results/issue15/*.json
Means over repeats per set, N, noise kind and rate; "ours >= both" compares precision@k means.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

MAIN = ("labelhub", "cleanlab_same_probs", "cleanlab_default")
SETS = ("ag_news", "trec", "hwu64", "it_service_tickets", "sms_spam")


def main(paths: list[str]) -> None:
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["results"]]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["set"], r["n_labels"], r["kind"], r["noise"], r["method"])].append(r)

    def mean(key: tuple, field: str) -> float:
        return float(np.mean([g[field] for g in groups[key]])) if key in groups else float("nan")

    settings = sorted({k[:4] for k in groups}, key=lambda s: (SETS.index(s[0]) if s[0] in SETS else 99, *s[1:]))
    print("| set | N | noise | rate | reps | P@k ours | P@k cl same probs | P@k cl default | ours >= both "
          "| recall ours / cl / cl def | AUPRC ours / cl / cl def | F1 fix ours / cl def / random | F1 clean |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---|---|---|---:|")
    wins = total = 0
    for s in settings:
        p = [mean((*s, m), "precision_at_k") for m in MAIN]
        ok = p[0] >= p[1] - 1e-9 and p[0] >= p[2] - 1e-9
        wins += ok
        total += 1
        reps = len(groups[(*s, "labelhub")])
        print(f"| {s[0]} | {s[1]} | {s[2]} | {s[3]:.2f} | {reps} | {p[0]:.3f} | {p[1]:.3f} | {p[2]:.3f} | "
              f"{'yes' if ok else '**no**'} | "
              + " / ".join(f"{mean((*s, m), 'recall'):.2f}" for m in MAIN) + " | "
              + " / ".join(f"{mean((*s, m), 'auprc'):.2f}" for m in MAIN) + " | "
              + f"{mean((*s, 'labelhub'), 'macro_f1_after_fix'):.3f} / "
              f"{mean((*s, 'cleanlab_default'), 'macro_f1_after_fix'):.3f} / "
              f"{mean((*s, 'labelhub'), 'macro_f1_after_random_fix'):.3f} | "
              f"{mean((*s, 'labelhub'), 'macro_f1_clean'):.3f} |")
    print(f"\nours >= both cleanlab pipelines on precision@k: {wins} of {total} settings")
    variants = sorted({k[4] for k in groups} - set(MAIN))
    if variants:
        print("\nAblations (mean precision@k over the settings that ran them):\n")
        print("| variant | settings | P@k | P@k of the default (same settings) |")
        print("|---|---:|---:|---:|")
        for v in ["labelhub", *variants]:
            keys = [s for s in settings if (*s, variants[0]) in groups]
            vals = [mean((*s, v), "precision_at_k") for s in keys]
            base = [mean((*s, "labelhub"), "precision_at_k") for s in keys]
            print(f"| {v} | {len(keys)} | {np.mean(vals):.3f} | {np.mean(base):.3f} |")
    cpu = defaultdict(list)
    for r in rows:
        if r["method"] in MAIN:
            cpu[(r["set"], r["n_labels"], r["method"])].append(r["cpu_s"])
    print("\nCPU seconds per run (mean; ours and cl same probs include the shared out-of-fold fits):\n")
    for key in sorted(cpu):
        print(f"- {key[0]} N={key[1]} {key[2]}: {np.mean(cpu[key]):.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
