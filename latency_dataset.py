#!/usr/bin/env python
"""Sample SubTransformers from a search space and measure each one itself on a backend (one CSV row each).

    python latency_dataset.py --configs=configs/demo.de-en/latency_dataset/cpu.yml
"""
from hat.cli import run
from hat.stages.latency_dataset import main

if __name__ == "__main__":
    run(main)
