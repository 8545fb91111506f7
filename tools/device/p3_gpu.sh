#!/bin/bash
# P3 of benchmarks/README.md on a machine with 2 GPUs (the H200 pair here), in two calls of <= 10 minutes:
#   bash tools/device/p3_gpu.sh 1 [DEADLINE_S]  SuperTransformer (tools/device/demo_super_gpu.sh) -> search under the
#                                               budget set by the baseline (hat.demo --until search), and the GPU
#                                               figure of benchmarks/search_throughput.py
#   bash tools/device/p3_gpu.sh 2               searched + baseline trained from scratch side by side, same recipe,
#                                               one GPU each -> BLEU on the test split (hat.demo --until bleu)
# then, on the CPU whose onnxruntime latency dataset the predictor learned (latency_dataset/demo.de-en_onnxruntime.csv):
#   python benchmarks/searched_vs_baseline.py   export, latency of both measured side by side, the table
# Everything goes under benchmarks/results/p3 (stage stamps let each phase pick up where the last one stopped).
set -uo pipefail
T0=$(date +%s)
PHASE=$1; DEADLINE=${2:-560}
OUT=${OUT:-/tmp/hat-out}; mkdir -p "$OUT"
RES=benchmarks/results/p3
if [ "$PHASE" = 1 ]; then
  S=$((DEADLINE - 200 - $(date +%s) + T0))
  echo "SuperTransformer training for $S s"
  SAVE=/tmp/demo_super bash tools/device/demo_super_gpu.sh "$S"
  cp "$OUT/space0.pt" pretrained/demo.de-en/space0.pt
  python3 benchmarks/searched_vs_baseline.py --until search 2>&1 | tee "$OUT/p3_search.log"
  python3 benchmarks/search_throughput.py --configs=configs/demo.de-en/supertransformer/space0.yml \
    --restore-file pretrained/demo.de-en/space0.pt --valid-cnt-max 10 --n 40 2>&1 | grep -v Warn | tail -3 \
    | tee "$OUT/search_throughput_gpu.txt"
else
  python3 benchmarks/searched_vs_baseline.py --until bleu 2>&1 | tee "$OUT/p3_train.log"
  for n in searched baseline; do  # the checkpoint each stage stamp names
    ck=$(python3 -c "import json; print(json.load(open('$RES/stages/train_$n.json'))['checkpoint'])")
    python3 -m hat.checkpoint strip "$ck" "$OUT/$n.pt" --fp16
  done
fi
tar czf "$OUT/p3_results.tgz" $RES
