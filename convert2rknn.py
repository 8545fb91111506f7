#!/usr/bin/env python
"""Build RKNN models (rknn-toolkit2) from the graphs convert2onnx.py exported; --verify checks them in the simulator.

    python convert2rknn.py --configs=configs/demo.de-en/convert_onnx/common.yml --onnx-name=NAME \
        [--enc | --dec] [--target-platform rk3588] [--precision fp16|int8] [--verify]
"""
from hat.cli import run
from hat.stages.convert2rknn import main

if __name__ == "__main__":
    run(main)
