#!/usr/bin/env python
"""Translate a split with beam search and print a detokenized sacrebleu score with its signature.

    python generate.py --configs=configs/demo.de-en/subtransformer/demo@small.yml \
                       --sub-configs=configs/demo.de-en/subtransformer/common.yml \
                       --path checkpoints/demo.de-en/subtransformer/demo@small/checkpoint_best.pt
"""
from hat.cli import run
from hat.stages.generate import main

if __name__ == "__main__":
    run(main)
