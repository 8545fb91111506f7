#!/usr/bin/env python
"""Evolutionary search for the most accurate SubTransformer within a latency and a memory budget (HAT + memory).

    python evo_search.py --configs=configs/demo.de-en/supertransformer/space0.yml \
                         --evo-configs=configs/demo.de-en/evo_search/demo_onnxruntime.yml
"""
from hat.cli import run
from hat.stages.evo_search import main

if __name__ == "__main__":
    run(main)
