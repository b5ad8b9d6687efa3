#!/usr/bin/env bash
# The real-data ground-truth table on one GPU, in one command:
#
#     bash benchmarks/gpu_inflation_table.sh            # PRESET=large ITEMS=2000 bash ... for the larger pair
#
# GSM8K and MMLU (../shared/data), both leak recipes (pretrain, finetune), r in {1, 3, 6}: one
# `bench_pipeline.py` cell per combination (paired lab twins on one cached base per benchmark, detection,
# rewriting of the flagged items / every item / every item again, both twins evaluated, the ground truth).
# Each cell's report goes to runs/gpu-table/<benchmark>-<recipe>-r<r>.md, its run directory beside it; a
# finished cell is skipped when the script runs again.
#
# Expected wall time (estimated from the CPU runs' token counts, not measured: no GPU was lent to the session
# that wrote this): `medium` (14M parameters, 1,000 items) about 10 minutes per cell on an H100-class GPU, the
# base trained once per benchmark, so about 2 hours for the 12 cells; `large` (98M parameters, 2,000 items)
# about 3x that.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET="${PRESET:-medium}"
ITEMS="${ITEMS:-1000}"
REFERENCE="${REFERENCE:-2000}"  # held-out items the probes are calibrated against (fewer where the test split
                                # has fewer left beside the experiment: GSM8K test has 1,319 items)
OUT="${OUT:-runs/gpu-table}"
mkdir -p "$OUT"
for bench in gsm8k mmlu; do
  for recipe in pretrain finetune; do
    for r in 1 3 6; do
      cell="$OUT/$bench-$recipe-r$r"
      [ -s "$cell.md" ] && continue
      # the fine-tuning leak trains the answer only (supervised fine-tuning's loss), which the answer_logp probe
      # sees and the whole-text probes do not
      extra=()
      [ "$recipe" = finetune ] && extra=(--loss-on answer --methods loss,zlib,mink,minkpp,answer_logp --decision answer_logp)
      python benchmarks/bench_pipeline.py --benchmark "$bench" --preset "$PRESET" --items "$ITEMS" \
        --reference "$REFERENCE" --recipe "$recipe" --repeats "$r" --device cuda "${extra[@]}" \
        --workdir "$cell" > "$cell.md.tmp" 2> "$cell.log"
      mv "$cell.md.tmp" "$cell.md"
      grep -A1 "RESULTS row" "$cell.md" | tail -1
    done
  done
done
