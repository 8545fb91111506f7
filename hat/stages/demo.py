"""The main job on the embedded demo task, end to end (make demo).

    python -m hat.demo [--device cpu|cuda] [--retrain-super] [--retrain] [--speedup 1.5]

data -> SuperTransformer -> latency dataset (onnxruntime on this machine's CPU, the stand-in hardware) -> latency
predictor -> evolutionary search under a latency AND a memory constraint -> train the searched SubTransformer and a
hand-sized baseline Transformer the same way -> export (ONNX, RKNN fp16 + simulator check) -> measure both on the
backend -> BLEU on the test split -> one table (every figure with its source) and plots under results/<task>/.

The budget of the search is set from the baseline: latency <= predicted baseline latency / ``--speedup``, memory <=
the baseline's (memory model, fp16), so the question the table answers is: how much faster than a hand-sized
Transformer of the same memory does the search get, and at what BLEU?

``--device cpu`` (default; about 20 minutes on 2 cores) starts from the demo SuperTransformer shipped in
``pretrained/`` (trained by this project's train.py on one H200 with the sandwich rule, command and log beside it; ``--retrain-super`` trains
it here instead) and fine-tunes both SubTransformers from its inherited weights for the same few updates.
``--device cuda`` is the full-size demo: the SuperTransformer and both SubTransformers are trained from scratch,
fp16, with a larger latency dataset and search.

Every stage runs the same top-level script a user would run, leaves a stamp under ``results/<task>/stages``, and is
skipped on a rerun; interrupted training resumes from fairseq's checkpoint_last.pt, the latency dataset and the
search resume from their own files.

The recipe is :mod:`hat.pipeline.recipe`, the stage runner :mod:`hat.pipeline.runner`, the table and plots
:mod:`hat.pipeline.report`; this module only parses the command line.
"""
from __future__ import annotations

from typing import List, Optional

from hat.config import stage_parser
from hat.pipeline.recipe import PROFILES, DemoRecipe


def main(argv: Optional[List[str]] = None) -> int:
    ap = stage_parser(__doc__.splitlines()[0], prog="python -m hat.demo")
    ap.add_argument("--task-dir", default="configs/demo.de-en", help="configs/<task> laid out as HAT's")
    ap.add_argument("--space", default="space0", help="supertransformer/<space>.yml")
    ap.add_argument("--baseline", default="baseline", help="subtransformer/<baseline>.yml: the hand-sized model")
    ap.add_argument("--device", choices=sorted(PROFILES), default="cpu",
                    help="cpu: ~20 min on 2 cores from the shipped SuperTransformer; cuda: the full-size demo")
    ap.add_argument("--speedup", type=float, default=1.5, help="latency budget = baseline's predicted / speedup")
    ap.add_argument("--measure-rounds", type=int, default=7, help="interleaved latency rounds of the final models")
    ap.add_argument("--results", default=None, help="results directory (default results/<task>)")
    ap.add_argument("--checkpoints", default=None,
                    help="where trained models go (default checkpoints/<task>/demo-<device>)")
    ap.add_argument("--retrain", action="store_true",
                    help="run every stage's script again even where its stamp says done (each still resumes its own "
                         "files: training from checkpoint_last.pt, the latency dataset from its CSV; remove those "
                         "to start a stage from scratch)")
    ap.add_argument("--retrain-super", action="store_true", help="train the SuperTransformer instead of the shipped")
    ap.add_argument("--super", default=None, help="use this SuperTransformer checkpoint (no training)")
    ap.add_argument("--latency-dataset", default=None,
                    help="latency CSV to use/complete (default: results/<task>/latency_dataset.csv, measured here)")
    ap.add_argument("--until", choices=["search", "train", "bleu"], default=None,
                    help="stop after this stage (e.g. train on a GPU machine, measure latency on the target)")
    ap.add_argument("--stage-args", action="append", metavar="STAGE=FLAGS",
                    help="more flags for a stage's script, after the profile's (later flags win): latency, search, "
                         "sub (both SubTransformers) or super; e.g. --stage-args 'search=--evo-iter 10'")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--verbose", action="store_true", help="show fairseq's full log")
    args = ap.parse_args(argv)
    return DemoRecipe(args).run()
