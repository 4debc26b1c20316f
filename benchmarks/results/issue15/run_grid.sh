#!/bin/bash
# Issue 15 grid: one process per (set, N, repeat), all noise rates and kinds in each.
# Usage: [REPEATS="0 1 2"] benchmarks/results/issue15/run_grid.sh SET N [--ablations]   (from the repository root)
# A repeat's rows, flips and folds depend only on its number (and --seed), so repeats run apart add up.
set -euo pipefail
SET=$1; N=$2; shift 2
D=${LABELHUB_DATA_DIR:-../shared/data}/$SET
OUT=benchmarks/results/issue15
REPEATS=${REPEATS:-0 1 2}
LAST=$(echo $REPEATS | tr ' ' '\n' | sort -n | tail -1)
for R in $REPEATS; do
  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nohup .venv/bin/python -u benchmarks/mislabel_bench.py \
    --train "$D/train.csv" --test "$D/test.csv" --labels "$N" --noise 0.05 0.1 0.2 \
    --noise-kind uniform confusable --repeats $((LAST + 1)) --only-repeat $R "$@" \
    --out "$OUT/$SET-$N-r$R.json" > "$OUT/$SET-$N-r$R.log" 2>&1 &
done
