#!/usr/bin/env python
"""Translate a split with beam search and print its BLEU as HAT computes it (SacreBLEU with its signature; on HAT's
Moses + BPE data also tokenized BLEU with compound splitting), or translate raw text (--input FILE|-).

    python generate.py --configs=configs/demo.de-en/subtransformer/demo_small.yml \
                       --sub-configs=configs/demo.de-en/subtransformer/common.yml \
                       --path checkpoints/demo.de-en/subtransformer/demo_small/checkpoint_best.pt
"""
from hat.cli import run
from hat.stages.generate import main

if __name__ == "__main__":
    run(main)
