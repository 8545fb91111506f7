#!/usr/bin/env python
"""Seconds per SubTransformer for export (ONNX encoder + decoder step, with their checks) + RKNN build (fp16).

Samples SubTransformers of a search space, extracts each from a SuperTransformer (random weights unless
--model-path gives a trained SuperTransformer checkpoint: the timing does not depend on the values), and per config
measures, in this one process:

* export: convert2onnx's work for both graphs (trace, op scan, onnx.checker, static shapes, onnxruntime parity);
* build:  convert2rknn's work for both graphs (rknn-toolkit2 load_onnx + build + export_rknn, fp16, no --verify).

Wall seconds and CPU seconds (process time: all threads of the process, i.e. core-seconds) are printed per config;
the goal is <= 3 core-seconds per config. One-time costs (imports, the toolkit's first build) are excluded by a
warm-up config that is not counted. torch runs single-threaded.

    python benchmarks/export_build_time.py [--space configs/demo.de-en/supertransformer/space0.yml] [--configs 4]
        [--src-len 32] [--tgt-len 32] [--beam 4] [--target-platform rk3588] [--seed 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hat.config import load_yaml  # noqa: E402
from hat.space import SearchSpace  # noqa: E402


def vocab_size(data_dir: str, default: int = 8000) -> int:
    path = os.path.join(data_dir, "dict.de.txt")
    if os.path.isfile(path):
        with open(path) as f:
            return sum(1 for _ in f) + 4  # fairseq adds <s> <pad> </s> <unk>
    return default


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="configs/demo.de-en/supertransformer/space0.yml")
    ap.add_argument("--model-path", help="trained SuperTransformer checkpoint (default: random weights)")
    ap.add_argument("--data", default="data-bin/demo.de-en", help="for the vocabulary size only")
    ap.add_argument("--configs", type=int, default=4, help="sampled SubTransformers (plus one warm-up)")
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--tgt-len", type=int, default=32)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--target-platform", default="rk3588")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import torch

    from hat.export.onnx import ExportSettings, export_model, torch_threads
    from hat.export.rknn import build_part, require_rknn
    from hat.models import ModelOptions, SuperTransformer

    require_rknn()
    torch.manual_seed(args.seed)
    if args.model_path:
        from hat.checkpoint import load_model

        lm = load_model(args.model_path)
        sup, space = lm.model, lm.space
    else:
        space = SearchSpace.from_dict(load_yaml(args.space), source=args.space)
        v = vocab_size(args.data)
        sup = SuperTransformer(space.super_config(), ModelOptions(v, v, share_all_embeddings=True)).eval()
    rng = random.Random(args.seed)
    cfgs = [space.sample(rng) for _ in range(args.configs + 1)]
    s = ExportSettings(batch_size=1, src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam)
    quiet = lambda *a: None  # noqa: E731
    work = tempfile.mkdtemp(prefix="hat-export-bench-")
    rows = []
    try:
        with torch_threads(1):
            for i, cfg in enumerate(cfgs):
                sub = sup.extract(cfg).eval()
                name = f"c{i}"
                e = timed(lambda: export_model(sub, work, name, s, log=quiet))
                b = timed(lambda: [build_part(work, name, part, args.target_platform, "fp16", work, log=quiet)
                                   for part in ("enc", "dec")])
                if i == 0:
                    print(f"| warm-up config (not counted): export {e[0]:.2f} s, build {b[0]:.2f} s wall")
                    continue
                rows.append((cfg, e, b))
                print(f"| {cfg.key()}  enc {cfg.encoder_embed_dim}x{cfg.encoder_layer_num}  dec "
                      f"{cfg.decoder_embed_dim}x{cfg.decoder_layer_num}  qkv {cfg.qkv_dim}:  export {e[0]:.2f} s "
                      f"({e[1]:.2f} cpu-s), rknn build {b[0]:.2f} s ({b[1]:.2f} cpu-s), total {e[0] + b[0]:.2f} s "
                      f"({e[1] + b[1]:.2f} cpu-s) [measured]")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(rows)
    mean = lambda k, j: sum(r[k][j] for r in rows) / n  # noqa: E731
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}; "
          f"torch {torch.__version__} (1 thread); batch 1, beam {args.beam}, src-len {args.src_len}, "
          f"tgt-len {args.tgt_len}, {args.target_platform} fp16; {'trained' if args.model_path else 'random'} weights")
    print(f"mean per config over {n}: export {mean(1, 0):.2f} s ({mean(1, 1):.2f} cpu-s) + rknn build "
          f"{mean(2, 0):.2f} s ({mean(2, 1):.2f} cpu-s) = {mean(1, 0) + mean(2, 0):.2f} s wall, "
          f"{mean(1, 1) + mean(2, 1):.2f} cpu-s [measured] (goal <= 3 cpu-s per config)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
