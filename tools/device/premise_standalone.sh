#!/bin/bash
# Issue 14 item 2, more points for HAT's premise: the SubTransformers of one or more plans
# (benchmarks/supernet_recipe.py plan) trained from scratch with the premise's one recipe -- common.yml, 3,000 updates,
# the flags of tools/device/supernet_recipe.sh -- all side by side on one GPU, each with the seed given for its plan;
# then each one's whole-valid-split loss (benchmarks/supernet_recipe.py eval --no-bleu; no SuperTransformer here, the
# inherited side is evaluated from the shipped checkpoints wherever they are).
#   bash tools/device/premise_standalone.sh SEED:PLAN_DIR [SEED:PLAN_DIR ...]
# Run from the repository root after `source tools/device/setup_fairseq.sh`, with data-bin/demo.de-en present.
# Output: $OUT/premise_standalone.tgz (logs + rows_s<SEED>_<plan>.json per plan).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: premise_standalone.sh SEED:PLAN_DIR [...]" >&2; exit 2; }
OUT=${OUT:-/tmp/hat-out}; mkdir -p "$OUT"
W=${W:-checkpoints/premise}; mkdir -p "$W/logs"
COMMON=configs/demo.de-en/subtransformer/common.yml
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
filt() { grep --line-buffered -v -e "Warning" -e "^  " -e "deprecat" -e "^See https" -e "^DEBUG"; }
FLAGS=(--max-tokens 4096 --lr 0.002 --save-interval-updates 250 --keep-interval-updates 1
       --validate-interval-updates 250 --log-interval 100 --no-epoch-checkpoints --warmup-updates 400 --max-update "${MAX_UPDATE:-3000}")
pids=()
for spec in "$@"; do
  seed=${spec%%:*}; plan=${spec#*:}
  [ -d "$plan" ] || { echo "no plan directory $plan" >&2; exit 2; }
  for y in "$plan"/*.yml; do
    n=$(basename "$y" .yml)
    python3 train.py --configs="$y" --sub-configs=$COMMON --save-dir "$W/s$seed/$n" --seed "$seed" "${FLAGS[@]}" \
      > >(filt >> "$W/logs/s${seed}_$n.log") 2>&1 & pids+=($!)
  done
done
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime; done ) \
  >> "$W/logs/gpu.log" & mon=$!
for p in "${pids[@]}"; do wait "$p"; done
kill $mon 2>/dev/null
for spec in "$@"; do
  seed=${spec%%:*}; plan=${spec#*:}
  python3 benchmarks/supernet_recipe.py eval --plan "$plan" --standalone "$W/s$seed" --no-bleu \
    --out "$W/logs/rows_s${seed}_$(basename "$plan").json" 2>&1 | filt | tee -a "$W/logs/eval.log"
done
for f in "$W"/logs/s*.log; do echo "== $f"; grep -E "valid on|done training" "$f" | tail -1; done
tar czf "$OUT/premise_standalone.tgz" "$W/logs"
