#!/usr/bin/env python
"""P3: the searched SubTransformer vs the hand-sized baseline Transformer (configs/demo.de-en/subtransformer/
baseline.yml) - latency ratio at equal or better BLEU, both trained from scratch on a GPU with the same recipe, latency
of both measured side by side (interleaved rounds) on one CPU backend: onnxruntime on the CPU whose latency dataset the
predictor learned (latency_dataset/demo.de-en_onnxruntime.csv, committed).

    python benchmarks/searched_vs_baseline.py [more hat.demo flags]

It is `python -m hat.demo --device cuda` with the shipped demo SuperTransformer and that latency dataset, results in
benchmarks/results/p3. The stages that need a GPU (search, training, BLEU) run where one is; the rest (export,
latency, table) anywhere, so the GPU part can run on a GPU machine (tools/device/p3_gpu.sh) and the same command
finishes on the target CPU, skipping every stage whose stamp is already in benchmarks/results/p3/stages.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARGS = ["--device", "cuda", "--results", "benchmarks/results/p3", "--super", "pretrained/demo.de-en/space0.pt",
        "--latency-dataset", "latency_dataset/demo.de-en_onnxruntime.csv",
        "--stage-args", "latency=--lat-dataset-size=500",
        "--stage-args", "search=--evo-iter 8 --population-size 24 --parent-size 6 --mutation-size 10 "
                        "--crossover-size 8"]

if __name__ == "__main__":
    os.chdir(ROOT)
    from hat.cli import run
    from hat.stages.demo import main

    run(lambda: main(ARGS + sys.argv[1:]))
