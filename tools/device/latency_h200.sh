#!/usr/bin/env bash
# Latency work on the H200 host's idle 16-core CPU (no GPU used; no fairseq needed): the estimator study, then the
# demo space's onnxruntime latency dataset (500 configs, seed 1) and a held-out set sampled with another seed (200
# configs, seed 2), 14 measuring processes each pinned to its own core. Results go to $OUT.
#   device run: bash tools/device/latency_h200.sh
set -euo pipefail
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
OUT=${OUT:-results/h200}
mkdir -p "$OUT"
python -c "import torch, onnx, onnxruntime, yaml, tqdm, numpy; print('torch', torch.__version__, 'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"
grep -m1 'model name' /proc/cpuinfo; nproc
Y=configs/demo.de-en/latency_dataset/onnxruntime.yml
P=(--lat-vocab-size 7904 --lat-threads 1 --lat-pin --lat-estimator "${EST:-call-min}" --latiter 30 --lat-warmup 5 --latsilent)
python benchmarks/latency_estimators.py --configs=$Y --n-configs 6 --rounds 8 --runs 30 --out "$OUT/est" 2>/dev/null
python latency_dataset.py --configs=$Y "${P[@]}" --lat-workers 14 --lat-dataset-size 500 --lat-seed 1 \
  --lat-dataset-path "$OUT/demo.de-en_onnxruntime_h200.csv"
python latency_dataset.py --configs=$Y "${P[@]}" --lat-workers 14 --lat-dataset-size 200 --lat-seed 2 \
  --lat-dataset-path "$OUT/demo.de-en_onnxruntime_h200_seed2.csv"
