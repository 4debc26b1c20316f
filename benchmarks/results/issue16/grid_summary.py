"""The issue-16 grid from `finetune_bench.py` result files: one row per (set, label count) over all repeats.

    .venv/bin/python benchmarks/results/issue16/grid_summary.py benchmarks/results/issue16/*_app_split_*.json

The set is read from each file's ``train`` path; a (set, labels, repeat) found in two files is counted once (the
file named later on the command line wins, so a re-run given last replaces an earlier one). Prints a Markdown
table: frozen and fine-tuned macro-F1 (means), the difference's mean with its range and a 95 % t-interval over
the repeats, the fine-tuned model's own 95 % bootstrap interval on the test split (mean of its ends), ECE both
sides, and the fine-tune's seconds per run (one thread; see the README for the load beside it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def main(paths: list[str]) -> None:
    runs: dict[tuple[str, int, int], dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        name = Path(data["train"]).parent.name
        for r in data["results"]:
            if r.get("finetune_heldout", 0) <= 0:
                continue  # the fifth session's --heldout 0 runs are another protocol
            runs[(name, int(r["labels"]), int(r["repeat"]))] = r
    print("| set | labels | repeats | frozen macro-F1 | fine-tuned | Δ mean (min to max) | Δ 95 % t-interval | "
          "fine-tuned bootstrap 95 % | frozen ECE | fine-tuned ECE | fine-tune s per run |")
    print("|---|---:|---:|---:|---:|---|---|---|---:|---:|---|")
    for name, n in sorted({(k[0], k[1]) for k in runs}):
        rows = [runs[k] for k in sorted(runs) if k[:2] == (name, n)]
        delta = 100 * np.array([r["finetuned_macro_f1"] - r["frozen_macro_f1"] for r in rows])
        if len(rows) > 1:
            half = stats.t.ppf(0.975, len(rows) - 1) * delta.std(ddof=1) / np.sqrt(len(rows))
            t_interval = f"{delta.mean() - half:+.1f} to {delta.mean() + half:+.1f}"
        else:
            t_interval = "–"
        low, high = np.mean([r["finetuned_macro_f1_interval"] for r in rows], axis=0)
        print(f"| {name} | {n:,} | {len(rows)} | {np.mean([r['frozen_macro_f1'] for r in rows]):.3f} | "
              f"{np.mean([r['finetuned_macro_f1'] for r in rows]):.3f} | {delta.mean():+.1f} "
              f"({delta.min():+.1f} to {delta.max():+.1f}) | {t_interval} | {low:.3f}–{high:.3f} | "
              f"{np.mean([r['frozen_ece'] for r in rows]):.3f} | {np.mean([r['finetuned_ece'] for r in rows]):.3f} | "
              f"{', '.join(str(round(r['finetune_seconds'])) for r in rows)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
