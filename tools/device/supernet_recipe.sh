#!/bin/bash
# Issue 14 on one GPU machine: the demo SuperTransformer trained with HAT's uniform sampling and with the sandwich
# rule + in-place distillation, side by side for the same wall time on one GPU, next to 8 SubTransformers (spread over
# the space, benchmarks/supernet_recipe.py plan) trained from scratch with one recipe (common.yml, 3,000 updates at
# most, the same wall-time cap); then inherited-vs-trained valid loss and BLEU (benchmarks/supernet_recipe.py eval).
# Resumable across calls of a warm machine (fairseq's cumulative training time; checkpoints in $W):
#   bash tools/device/supernet_recipe.sh train SECONDS_TOTAL   # trains until every run has SECONDS_TOTAL of training
#   bash tools/device/supernet_recipe.sh eval                  # valid loss + BLEU, report, stripped checkpoints to $OUT
# Run from the repository root after `source tools/device/setup_fairseq.sh`, with data-bin/demo.de-en carried.
set -uo pipefail
MODE=${1:?train SECONDS | eval}
OUT=${OUT:-/tmp/hat-out}; mkdir -p "$OUT"
W=${W:-checkpoints/recipe}; mkdir -p "$W/logs"
PLAN=$W/plan
SPACE=configs/demo.de-en/supertransformer/space0.yml
COMMON=configs/demo.de-en/subtransformer/common.yml
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
filt() { grep --line-buffered -v -e "Warning" -e "^  " -e "deprecat" -e "^See https" -e "^DEBUG"; }

if [ "$MODE" = train ]; then
  SECS=${2:?seconds}
  HOURS=$(python3 -c "print($SECS/3600)")
  [ -d "$PLAN" ] || python3 benchmarks/supernet_recipe.py plan --out "$PLAN"
  COMMONFLAGS=(--max-tokens 4096 --lr 0.002 --stop-time-hours "$HOURS" --save-interval-updates 250
               --keep-interval-updates 1 --validate-interval-updates 250 --log-interval 100 --no-epoch-checkpoints)
  pids=()
  python3 train.py --configs=$SPACE --save-dir "$W/super_uniform" "${COMMONFLAGS[@]}" --warmup-updates 500 \
    --max-update 100000 > >(filt >> "$W/logs/super_uniform.log") 2>&1 & pids+=($!)
  python3 train.py --configs=$SPACE --save-dir "$W/super_sandwich" "${COMMONFLAGS[@]}" --warmup-updates 500 \
    --max-update 100000 --supernet-sampling sandwich --sandwich-random-configs 2 --inplace-distill 0.5 \
    > >(filt >> "$W/logs/super_sandwich.log") 2>&1 & pids+=($!)
  for y in "$PLAN"/sub*.yml; do
    n=$(basename "$y" .yml)
    python3 train.py --configs="$y" --sub-configs=$COMMON --save-dir "$W/$n" "${COMMONFLAGS[@]}" \
      --warmup-updates 400 --max-update 3000 > >(filt >> "$W/logs/$n.log") 2>&1 & pids+=($!)
  done
  ( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime; done ) \
    >> "$W/logs/gpu.log" & mon=$!
  for p in "${pids[@]}"; do wait "$p"; done
  kill $mon 2>/dev/null
  for f in "$W"/logs/*.log; do echo "== $f"; grep -E "valid on|done training|num_updates" "$f" | tail -2; done
  tar czf "$OUT/recipe_logs.tgz" "$W/logs" "$PLAN"
elif [ "$MODE" = eval ]; then
  python3 benchmarks/supernet_recipe.py eval --plan "$PLAN" --standalone "$W" \
    --supernet uniform="$W/super_uniform/checkpoint_best.pt" --supernet sandwich="$W/super_sandwich/checkpoint_best.pt" \
    --out "$W/logs/premise_rows.json" 2>&1 | filt | tee "$W/logs/eval.log"
  python3 benchmarks/supernet_recipe.py report --results "$W/logs/premise_rows.json" --out "$W/logs" \
    --logs "$W"/logs/super_*.log "$W"/logs/sub*.log 2>&1 | filt
  for r in uniform sandwich; do
    python3 -m hat.checkpoint strip "$W/super_$r/checkpoint_best.pt" "$OUT/space0_$r.pt" --fp16
  done
  tar czf "$OUT/recipe_logs.tgz" "$W/logs" "$PLAN"
fi
