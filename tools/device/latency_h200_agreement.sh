#!/usr/bin/env bash
# Does the H200-host dataset agree with itself? The committed dataset's first configs measured again with the same
# protocol: once more with 14 pinned workers, and once serially (one process), for the agreement figures in
# benchmarks/README.md. Results go to $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
OUT=${OUT:-results/h200}
mkdir -p "$OUT"
Y=configs/demo.de-en/latency_dataset/onnxruntime.yml
P=(--lat-vocab-size 7904 --lat-threads 1 --lat-pin --lat-estimator call-min --latiter 30 --lat-warmup 5 --latsilent
   --lat-seed 1)
python latency_dataset.py --configs=$Y "${P[@]}" --lat-workers 14 --lat-dataset-size 500 \
  --lat-dataset-path "$OUT/again_workers14.csv"
python latency_dataset.py --configs=$Y "${P[@]}" --lat-workers 1 --lat-dataset-size 80 \
  --lat-dataset-path "$OUT/again_serial.csv"
