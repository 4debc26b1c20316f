"""Table of variants.py results: per setting, cleanlab's two pipelines and each variant's mean precision@k.

Usage (from the repository root):
    .venv/bin/python benchmarks/results/issue15/variants_15th/table.py benchmarks/results/issue15/variants_15th/*.json
A variant's mean is starred where it is below the better cleanlab pipeline's mean; "behind beyond 2 s.e." counts the
settings where its paired difference to the better pipeline (per repeat) is more than two standard errors below zero.
"""
import collections
import json
import sys

import numpy as np

VARIANTS = ["two", "one", "avgproba", "avgscore", "avgunion", "foldsx", "cell", "cellfirst", "cellunion", "cellrow"]
rows = [row for path in sys.argv[1:] for row in json.load(open(path))]
groups = collections.defaultdict(list)
for row in rows:
    groups[(row["set"], row["n"], row["kind"], row["rate"])].append(row)
level = collections.Counter()
behind = collections.Counter()
margins = collections.defaultdict(list)
print("| set | N | noise | rate | reps | cl same probs | cl default | " + " | ".join(VARIANTS) + " |")
print("|---|---:|---|---:|---:|---:|---:|" + "---:|" * len(VARIANTS))
for key in sorted(groups):
    group = groups[key]
    same = np.array([r["cleanlab_same_probs"] for r in group])
    default = np.array([r["cleanlab_default"] for r in group])
    better = same if same.mean() >= default.mean() else default
    cells = []
    for variant in VARIANTS:
        ours = np.array([r[variant] for r in group])
        ok = ours.mean() >= better.mean() - 1e-9
        diff = ours - better
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        level[variant] += ok
        behind[variant] += diff.mean() < -2 * se
        margins[variant].append(diff.mean())
        cells.append(f"{ours.mean():.3f}" + ("" if ok else "*"))
    head = f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:.2f} | {len(group)} | {same.mean():.3f} | {default.mean():.3f}"
    print(head + " | " + " | ".join(cells) + " |")
print()
print(f"{len(groups)} settings")
for variant in VARIANTS:
    print(f"- {variant}: at least level with both cleanlab pipelines in {level[variant]}, behind beyond 2 s.e. in "
          f"{behind[variant]}, mean margin to the better one {np.mean(margins[variant]):+.4f}")
