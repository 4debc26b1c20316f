"""The issue-15 table for benchmarks/README.md from the mislabel_bench.py result files.

Usage: .venv/bin/python benchmarks/results/issue15/table.py benchmarks/results/issue15/*.json
Means over repeats per set, N, noise kind and rate; "ours >= both" compares precision@k means.
A run that was stopped before it wrote its JSON (runs started before the benchmark saved after
every setting) still left one line per finished setting in its .log, with each method's
precision@k: those settings are read from the log, with only that figure ("–" for the others).
"""
from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

MAIN = ("labelhub", "cleanlab_same_probs", "cleanlab_default")
SETS = ("ag_news", "trec", "hwu64", "it_service_tickets", "sms_spam")


LINE = re.compile(r"^\[(?P<set>[^\]]+)\] N=(?P<n>\d+) (?P<kind>\w+) (?P<rate>[\d.]+) repeat (?P<rep>\d+): "
                  r"(?P<rest>.*)$")


def from_log(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if not match:
            continue
        for part in match["rest"].split(", "):
            method, _, value = part.rpartition(" p@k ")
            rows.append({"set": match["set"], "n_labels": int(match["n"]), "kind": match["kind"],
                         "noise": float(match["rate"]), "repeat": int(match["rep"]), "method": method,
                         "precision_at_k": float(value), **{f: math.nan for f in FIELDS}})
    return rows


FIELDS = ("recall", "auprc", "macro_f1_after_fix", "macro_f1_after_random_fix", "macro_f1_clean", "cpu_s")


def main(paths: list[str]) -> None:
    rows = []
    for name in paths:
        path = Path(name)
        if path.suffix == ".json":
            rows += json.loads(path.read_text())["results"]
        elif not path.with_suffix(".json").exists():
            rows += from_log(path)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["set"], r["n_labels"], r["kind"], r["noise"], r["method"])].append(r)

    def mean(key: tuple, field: str) -> float:
        return float(np.mean([g[field] for g in groups[key]])) if key in groups else float("nan")

    def fmt(value: float, digits: int = 3) -> str:
        return "–" if math.isnan(value) else f"{value:.{digits}f}"

    settings = sorted({k[:4] for k in groups}, key=lambda s: (SETS.index(s[0]) if s[0] in SETS else 99, *s[1:]))

    def paired(s: tuple) -> tuple[float, float]:
        """(mean, standard error) over the shared repeats of ours minus a cleanlab pipeline's precision@k, for the
        pipeline whose mean difference is the smaller (the one ours is closest to beating, or furthest behind)."""
        per_repeat = {m: {g["repeat"]: g["precision_at_k"] for g in groups.get((*s, m), [])} for m in MAIN}
        best: tuple[float, float] | None = None
        for other in MAIN[1:]:
            shared = sorted(set(per_repeat["labelhub"]) & set(per_repeat[other]))
            d = np.array([per_repeat["labelhub"][r] - per_repeat[other][r] for r in shared])
            if not len(d):
                continue
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
            if best is None or d.mean() < best[0]:
                best = (float(d.mean()), se)
        return best or (float("nan"), float("nan"))

    print("| set | N | noise | rate | reps | P@k ours | P@k cl same probs | P@k cl default | ours >= both "
          "| ours − closer cleanlab (paired, ± s.e.) "
          "| recall ours / cl / cl def | AUPRC ours / cl / cl def | F1 fix ours / cl def / random | F1 clean |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|---|---:|")
    wins = total = behind = 0
    for s in settings:
        p = [mean((*s, m), "precision_at_k") for m in MAIN]
        ok = p[0] >= p[1] - 1e-9 and p[0] >= p[2] - 1e-9
        wins += ok
        total += 1
        diff, se = paired(s)
        # Behind beyond noise: the paired difference more than two standard errors below zero.
        beyond = not ok and not math.isnan(se) and diff < -2 * se
        behind += beyond
        reps = len(groups[(*s, "labelhub")])
        print(f"| {s[0]} | {s[1]} | {s[2]} | {s[3]:.2f} | {reps} | {p[0]:.3f} | {p[1]:.3f} | {p[2]:.3f} | "
              f"{'yes' if ok else ('**no**' if beyond else 'no, within noise')} | {diff:+.3f} ± {se:.3f} | "
              + " / ".join(fmt(mean((*s, m), "recall"), 2) for m in MAIN) + " | "
              + " / ".join(fmt(mean((*s, m), "auprc"), 2) for m in MAIN) + " | "
              + " / ".join(fmt(mean((*s, m), "macro_f1_after_fix")) for m in ("labelhub", "cleanlab_default"))
              + f" / {fmt(mean((*s, 'labelhub'), 'macro_f1_after_random_fix'))} | "
              f"{fmt(mean((*s, 'labelhub'), 'macro_f1_clean'))} |")
    print(f"\nours >= both cleanlab pipelines on precision@k: {wins} of {total} settings; "
          f"behind beyond two standard errors: {behind}")
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
        if r["method"] in MAIN and not math.isnan(r["cpu_s"]):
            cpu[(r["set"], r["n_labels"], r["method"])].append(r["cpu_s"])
    print("\nCPU seconds per run (mean; ours and cl same probs include the shared out-of-fold fits):\n")
    for key in sorted(cpu):
        print(f"- {key[0]} N={key[1]} {key[2]}: {np.mean(cpu[key]):.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
