#!/bin/bash
# How the shipped demo SuperTransformer (pretrained/demo.de-en/space0.pt) was made: the project's own train.py on the
# embedded De-En corpus (data-bin/demo.de-en from `make data`), every visible GPU (fairseq distributed, NCCL), fp32,
# 4,096 tokens per GPU and update (fairseq is host-bound at this size: bigger batches gave fewer tokens/s), stopped
# by wall time. Run from the repository root on a machine with fairseq installed; writes to $OUT.
#   bash tools/device/demo_super_gpu.sh [SECONDS]
set -uo pipefail
SECS=${1:-300}
OUT=${OUT:-/tmp/hat-out}; mkdir -p "$OUT"
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
SAVE=${SAVE:-/tmp/demo_super}
python3 train.py --configs=configs/demo.de-en/supertransformer/space0.yml --save-dir $SAVE \
  --distributed-world-size "$NGPU" --ddp-backend legacy_ddp \
  --max-tokens 4096 --lr 0.002 --warmup-updates 500 --max-update 100000 \
  --stop-time-hours "$(python3 -c "print($SECS/3600)")" \
  --save-interval-updates 500 --keep-interval-updates 1 --validate-interval-updates 500 --log-interval 100 \
  2>&1 | grep -v -e "Warning" -e "^  " -e "deprecat" -e "^See https" -e "^DEBUG" | tee "$OUT/demo_super_train.log"
python3 -m hat.checkpoint strip $SAVE/checkpoint_best.pt "$OUT/space0.pt" --fp16
