#!/usr/bin/env python
"""Train a SuperTransformer (one SubTransformer sampled per update) or, with --sub-configs, one SubTransformer.

    python train.py --configs=configs/demo.de-en/supertransformer/space0.yml
    python train.py --configs=configs/demo.de-en/subtransformer/demo@small.yml \
                    --sub-configs=configs/demo.de-en/subtransformer/common.yml
"""
from hat.cli import run
from hat.stages.train import main

if __name__ == "__main__":
    run(main)
