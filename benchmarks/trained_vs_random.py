#!/usr/bin/env python
"""Does a trained model decode as fast as the same SubTransformer with random weights (what latency datasets time)?

    python benchmarks/trained_vs_random.py [--onnx-dir benchmarks/results/demo_cpu/onnx] [--names searched baseline]
        [--configs configs/demo.de-en/latency_dataset/onnxruntime.yml] [--rounds 80] [--flush-denormals]

For each NAME the trained graphs ``<onnx-dir>/<NAME>_{enc,dec}.onnx`` (as ``make demo`` exported them) and the same
SubTransformer (from the sidecar) exported with random weights the way the latency dataset exports it
(:func:`hat.latency.onnxruntime.random_model`, at the trained graphs' shapes) are loaded in onnxruntime (CPU,
1 thread, this process pinned to its last core) and decoded in turn, ``--rounds`` rounds alternating which goes
first: one encoder call, then tgt-len decoder steps of beam-many rows feeding back the caches (the same source and
tokens for both). Printed: the sum over steps of each step's fastest time (the step-min idea) for trained and random,
and their ratio. ``--flush-denormals`` sets flush-to-zero / denormals-are-zero on the measuring thread (via torch)
to tell whether denormal arithmetic is the difference.
"""
import argparse
import json
from dataclasses import replace
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def decoder_state(onnx_dir, name):
    """Sessions and feeds of one exported pair: the encoder run once on a fixed random source."""
    meta = {p: json.load(open(os.path.join(onnx_dir, f"{name}_{p}.json"))) for p in ("enc", "dec")}
    enc = session(os.path.join(onnx_dir, f"{name}_enc.onnx"))
    dec = session(os.path.join(onnx_dir, f"{name}_dec.onnx"))
    sh = meta["dec"]["shapes"]
    src, tgt, rows = sh["src_len"], sh["tgt_len"], sh["rows"]
    tok = meta["dec"]["tokens"]
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, tok["src_vocab"], (1, src)).astype(np.int64)
    tokens[0, -1] = tok["eos"]
    offset = meta["dec"]["position_offset"]
    positions = (np.arange(src) + offset).reshape(1, src).astype(np.int64)
    mask = np.zeros((1, src), np.float32)
    outs = enc.run(None, {"src_tokens": tokens, "src_positions": positions, "src_mask": mask})
    cross = {o.name: np.repeat(v, rows, axis=0) for o, v in zip(enc.get_outputs(), outs)}
    zeros = {i["name"]: np.zeros(i["shape"], np.float32) for i in meta["dec"]["inputs"]
             if i["name"].startswith(("self_k_", "self_v_"))}
    prev = rng.integers(4, tok["tgt_vocab"], (rows, 1)).astype(np.int64)
    return {"dec": dec, "cross": cross, "zeros": zeros, "prev": prev, "tgt": tgt, "mask": mask, "offset": offset,
            "config": meta["dec"]["sub_config"]}


def decode(st):
    from hat.export.runtime import self_mask

    cache, times = dict(st["zeros"]), []
    names = [o.name for o in st["dec"].get_outputs()]
    for t in range(st["tgt"]):
        feeds = {"prev_token": st["prev"], "position": np.full((1, 1), st["offset"] + t, np.int64),
                 "self_mask": self_mask(st["tgt"], t), "src_mask": st["mask"]}
        feeds.update(st["cross"])
        feeds.update(cache)
        t0 = time.perf_counter()
        outs = st["dec"].run(None, feeds)
        times.append(time.perf_counter() - t0)
        for n, o in zip(names, outs):
            if n.startswith("new_"):
                cache[n[4:]] = o
    return np.array(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx-dir", default="benchmarks/results/demo_cpu/onnx")
    ap.add_argument("--names", nargs="+", default=["searched", "baseline"])
    ap.add_argument("--configs", default="configs/demo.de-en/latency_dataset/onnxruntime.yml")
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--flush-denormals", action="store_true")
    args = ap.parse_args()
    os.chdir(ROOT)
    for name in args.names:
        for p in ("enc", "dec"):
            path = os.path.join(args.onnx_dir, f"{name}_{p}.onnx")
            if not os.path.isfile(path):
                print(f"error: {path} not found (run make demo, or give --onnx-dir)", file=sys.stderr)
                return 2
    from hat.args import add_latency_args, parse_args, stage_context
    from hat.latency.onnxruntime import export_onnx, random_model
    from hat.space import SubConfig

    ctx = stage_context(parse_args([f"--configs={args.configs}"], "trained vs random", hooks=(add_latency_args,)))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    if args.flush_denormals:
        import torch

        torch.set_flush_denormal(True)
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, 1 thread, pinned; {args.rounds} rounds alternating; "
          f"flush denormals {'on' if args.flush_denormals else 'off'}")
    with tempfile.TemporaryDirectory(prefix="hat-tvr-") as tmp:
        for name in args.names:
            trained = decoder_state(args.onnx_dir, name)
            cfg = SubConfig.from_hat_dict(trained["config"])
            sh = json.load(open(os.path.join(args.onnx_dir, f"{name}_dec.json")))["shapes"]
            protocol = replace(ctx.protocol, src_len=sh["src_len"], tgt_len=sh["tgt_len"], beam=sh["beam"])
            exported = export_onnx(cfg, ctx.options, protocol, tmp, random_model(cfg, ctx.options))
            states = {"trained": trained, "random": decoder_state(tmp, exported)}
            if states["random"]["tgt"] != trained["tgt"] or states["random"]["cross"].keys() != trained["cross"].keys():
                print(f"error: {name}: the random export's shapes differ from the trained one's", file=sys.stderr)
                return 2
            best = {}
            for r in range(args.rounds):
                for kind in (("trained", "random") if r % 2 else ("random", "trained")):
                    t = decode(states[kind])
                    best[kind] = t if kind not in best else np.minimum(best[kind], t)
            tr, rd = 1000 * best["trained"].sum(), 1000 * best["random"].sum()
            print(f"| {name} {cfg.key()}: decoder ({trained['tgt']} steps) trained {tr:.3f} ms, random weights "
                  f"{rd:.3f} ms [measured:onnxruntime, sum of per-step minima]; trained / random {tr / rd:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
