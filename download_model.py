#!/usr/bin/env python
"""Download HAT's published models (as HAT's download_model.py), latency predictors, latency datasets and data.

    python download_model.py --model-name=HAT_wmt14ende_raspberrypi@3.5s_bleu@25.8 [--dest downloaded_models]
    python download_model.py --list [--kind predictor]
    python download_model.py --download-all

Registry: hat/model_registry.json (--registry FILE or $HAT_MODEL_REGISTRY for another). See hat/download.py.
"""
from hat.cli import run
from hat.stages.download_model import main

if __name__ == "__main__":
    run(main)
