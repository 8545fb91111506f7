#!/usr/bin/env python
"""Export a trained SubTransformer to static-shape ONNX: the encoder and ONE incremental decoder step.

    python convert2onnx.py --configs=configs/demo.de-en/subtransformer/demo_small.yml \
        --sub-configs=configs/demo.de-en/convert_onnx/common.yml \
        --model-path checkpoints/demo.de-en/subtransformer/demo_small/checkpoint_best.pt [--enc | --dec]

Writes <onnx-dir>/<name>_enc.onnx and <name>_dec.onnx, each with a JSON sidecar (see hat/export/__init__.py).
"""
from hat.cli import run
from hat.stages.convert2onnx import main

if __name__ == "__main__":
    run(main)
