"""Train a latency predictor on a latency dataset (ours or HAT's CSV) and save it with its normalisation.

    python latency_predictor.py --configs=configs/wmt14.en-de/latency_predictor/cpu_raspberrypi.yml
    python latency_predictor.py --configs=configs/demo.de-en/latency_predictor/onnxruntime.yml

HAT's keys (``lat-dataset-path``, ``lat-dataset-size``, ``feature-norm``, ``lat-norm``, ``feature-dim``,
``hidden-dim``, ``hidden-layer-num``, ``ckpt-path``, ``train-steps``, ``bsz``, ``lr``) keep their meaning; the search
space comes from the same YAML (HAT's latency_dataset layout: super dims + ``*-choice`` keys) or from the YAML that
``space-configs`` names. Prints test-split metrics next to a scikit-learn baseline on the same split, writes the
checkpoint atomically and a predicted-vs-measured scatter PNG next to it. The model: :mod:`hat.predictor`.
"""
from hat.cli import run
from hat.stages.latency_predictor import main

if __name__ == "__main__":
    run(main)
