#!/bin/bash
# Issue 14 item 2, third try at HAT's premise: up to 4 demo SuperTransformer recipes trained side by side on one GPU
# for the same training time (one call of a machine that starts empty: no resume), then the inherited valid loss of
# all 22 premise SubTransformers (results/supernet_recipe/plan sub0-7 + results/supernet_premise/plan_m m0-13) and
# the largest's (sub7) test BLEU, with each recipe's weights (checkpoint_best.pt, as the earlier runs). The from-scratch
# side is not trained here: it is results/supernet_premise/logs/premise22_rows.json's standalone rows (merge locally).
#   bash tools/device/premise_run3.sh SECONDS NAME="train.py flags" [NAME="flags" ...]
# (the recipe keys of space0.yml are dropped: NAME="" is HAT's uniform sampling, the sandwich rule needs its flags)
# Run from the repository root after `source tools/device/setup_fairseq.sh`, with data-bin/demo.de-en present.
# Output in $OUT: run3_logs.tgz (train logs, rows_NAME*.json, eval logs, gpu.log) and space0_NAME.pt (stripped fp16).
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: premise_run3.sh SECONDS NAME=\"flags\" [...]" >&2; exit 2; }
SECS=$1; shift
OUT=${OUT:-/tmp/hat-out}; mkdir -p "$OUT"
W=${W:-/tmp/run3}; mkdir -p "$W/logs" "$W/plan22" "$W/plan_a" "$W/plan_b" "$W/plan_largest"
# space0.yml without its recipe keys (it ships the sandwich rule): every variant's recipe is in its own flags
SPACE=$W/space0_norecipe.yml
grep -v -e "^supernet-sampling:" -e "^sandwich-" -e "^inplace-distill:" configs/demo.de-en/supertransformer/space0.yml > "$SPACE"
R=benchmarks/results
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
filt() { grep --line-buffered -v -e "Warning" -e "^  " -e "deprecat" -e "^See https" -e "^DEBUG"; }
cp $R/supernet_recipe/plan/sub*.yml $R/supernet_premise/plan_m/m*.yml "$W/plan22/"
[ "$(ls "$W/plan22" | wc -l)" = 22 ] || { echo "expected 22 plan files" >&2; exit 2; }
i=0; for y in "$W"/plan22/*.yml; do if [ $((i % 2)) = 0 ]; then cp "$y" "$W/plan_a/"; else cp "$y" "$W/plan_b/"; fi; i=$((i+1)); done
cp "$W/plan22/sub7.yml" "$W/plan_largest/"
HOURS=$(python3 -c "print($SECS/3600)")
FLAGS=(--max-tokens 4096 --lr 0.002 --stop-time-hours "$HOURS" --save-interval-updates 250 --keep-interval-updates 1
       --validate-interval-updates 250 --log-interval 100 --no-epoch-checkpoints --warmup-updates 500 --max-update 100000)
names=(); pids=()
for spec in "$@"; do
  name=${spec%%=*}; flags=${spec#*=}
  names+=("$name")
  # shellcheck disable=SC2086  # flags are words
  timeout $((SECS + 90)) python3 train.py --configs=$SPACE --save-dir "$W/$name" "${FLAGS[@]}" $flags \
    > >(filt >> "$W/logs/super_$name.log") 2>&1 & pids+=($!)
done
( while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime; done ) \
  >> "$W/logs/gpu.log" & mon=$!
for p in "${pids[@]}"; do wait "$p"; done
kill $mon 2>/dev/null
for n in "${names[@]}"; do echo "== $n"; grep -E "valid on|done training" "$W/logs/super_$n.log" | tail -2; done
tar czf "$OUT/run3_logs.tgz" -C "$W" logs
pids=()
for n in "${names[@]}"; do
  ck="$W/$n/checkpoint_best.pt"
  [ -f "$ck" ] || { echo "no $ck" >&2; continue; }
  for part in a b; do
    timeout 110 python3 benchmarks/supernet_recipe.py eval --plan "$W/plan_$part" --standalone "$W/none" --no-bleu \
      --supernet "$n=$ck" --out "$W/logs/rows_${n}_$part.json" > "$W/logs/eval_${n}_$part.log" 2>&1 & pids+=($!)
  done
  timeout 110 python3 benchmarks/supernet_recipe.py eval --plan "$W/plan_largest" --standalone "$W/none" \
    --supernet "$n=$ck" --out "$W/logs/rows_${n}_bleu.json" > "$W/logs/eval_${n}_bleu.log" 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
grep -h "^| inherited" "$W"/logs/eval_*.log
for n in "${names[@]}"; do
  [ -f "$W/$n/checkpoint_best.pt" ] && python3 -m hat.checkpoint strip "$W/$n/checkpoint_best.pt" "$OUT/space0_$n.pt" --fp16
done
tar czf "$OUT/run3_logs.tgz" -C "$W" logs
ls -la "$OUT"
