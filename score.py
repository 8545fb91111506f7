#!/usr/bin/env python
"""BLEU of a hypothesis file against references, as HAT's score.py:

    python score.py --sys HYP --ref REF [--sacrebleu] [--sentence-bleu] [--order N] [--ignore-case]
"""
from hat.cli import run
from hat.stages.score import main

if __name__ == "__main__":
    run(main)
