#!/usr/bin/env python
"""Train a latency predictor on a latency dataset (ours or HAT's CSV) and save it with its normalisation.

    python latency_predictor.py --configs=configs/demo.de-en/latency_predictor/onnxruntime.yml

The keys and what is printed: hat/stages/latency_predictor.py.
"""
from hat.cli import run
from hat.stages.latency_predictor import main

if __name__ == "__main__":
    run(main)
