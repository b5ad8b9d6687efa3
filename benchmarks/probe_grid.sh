#!/usr/bin/env bash
# Every probe against ground truth, over the whole grid of the detection issue, in one command:
#
#     bash benchmarks/probe_grid.sh                     # SEEDS="0 1 2" LEAKS="0.05 0.1 0.3" PRESET=small ...
#
# GSM8K and MMLU (../shared/data), both leak recipes (pretrain, finetune), leak rates 5%, 10% and 30%, r in
# {1, 3, 6}, one replica per seed (another split of leaked / unseen items, other training batches): one
# `bench_lab.py` run per (benchmark, recipe, leak rate, seed), which trains the paired twins for each r and scores
# every probe (the reference-model probes with the lab's base model as the reference), the combination, and the
# set-level tests (Mann-Whitney and top-k) on both twins against a reference of REFERENCE items reserved with the
# experiment and kept from every corpus (`--reserve-reference`: exchangeable with the unseen items). Each
# run's report goes to runs/probe-grid/<benchmark>-<recipe>-l<rate>-s<seed>.md, its labs beside it and its
# stages, timed, to a .log; a finished run is skipped, and a run stopped halfway reuses the labs it finished
# (`--reuse`). At the end, `grid_summary.py`
# gathers the replicas of every cell into runs/probe-grid/summary.md.
#
# Cost: the `small` preset trains one lab in 10-25 minutes on 2 CPU cores (twins of the r = 1 cells take the
# longest), so the 36 runs of 3 labs each are about a day of CPU; on a GPU (DEVICE=cuda) a few minutes a lab.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET="${PRESET:-small}"
SEEDS="${SEEDS:-0 1 2}"
LEAKS="${LEAKS:-0.05 0.1 0.3}"
REPEATS="${REPEATS:-1,3,6}"
REFERENCE="${REFERENCE:-600}"
DEVICE="${DEVICE:-auto}"
OUT="${OUT:-runs/probe-grid}"
mkdir -p "$OUT"
for bench in gsm8k mmlu; do
  for recipe in pretrain finetune; do
    for leak in $LEAKS; do
      for seed in $SEEDS; do
        cell="$OUT/$bench-$recipe-l$leak-s$seed"
        [ -s "$cell.md" ] && continue
        python benchmarks/bench_lab.py --benchmarks "$bench" --recipe "$recipe" --leak-rate "$leak" --seed "$seed" \
          --preset "$PRESET" --repeats "$REPEATS" --reference "$REFERENCE" --device "$DEVICE" --reuse --base-reference --reserve-reference \
          --workdir "$cell" > "$cell.md.tmp" 2> "$cell.log"
        mv "$cell.md.tmp" "$cell.md"
        grep -E "combined set-level p" "$cell.md" || true
      done
    done
  done
done
# every cell, replicas gathered, one table per benchmark and recipe
python benchmarks/grid_summary.py "$OUT" > "$OUT/summary.md.tmp"
mv "$OUT/summary.md.tmp" "$OUT/summary.md"
