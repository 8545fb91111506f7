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
from dataclasses import replace
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class TimedRunner:
    """An exported pair in onnxruntime (:class:`hat.export.decode.OrtRunner`, 1 thread), its encoder run once on a
    fixed random source; :meth:`decode` times each decoder step's graph call."""

    def __init__(self, onnx_dir, name):
        from hat.export.decode import OrtRunner
        from hat.export.runtime import prepare_source

        self.runner = r = OrtRunner(onnx_dir, name)
        tok = r.dec_meta["tokens"]
        rng = np.random.default_rng(0)
        sents = [list(rng.integers(4, tok["src_vocab"], r.src_len - 1))] * r.batch_size
        self.state = r.start(*prepare_source(sents, r.src_len, r.pad, tok["eos"]), r.beam)
        self.tokens = rng.integers(4, tok["tgt_vocab"], (r.rows, r.tgt_len)).astype(np.int64)
        self.zeros = {spec["name"]: self.state[spec["name"]] for spec in r.self_specs}
        self.config = r.dec_meta["sub_config"]
        run = r.run_decoder
        self.times = []

        def timed(feeds):
            t0 = time.perf_counter()
            try:
                return run(feeds)
            finally:
                self.times.append(time.perf_counter() - t0)

        r.run_decoder = timed

    def decode(self):
        """tgt-len steps from zero caches, the returned caches fed back: each step's seconds."""
        self.state.update(self.zeros)
        self.times = []
        for t in range(self.runner.tgt_len):
            self.runner.step(self.state, self.tokens, t)
        return np.array(self.times)


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
            trained = TimedRunner(args.onnx_dir, name)
            cfg = SubConfig.from_hat_dict(trained.config)
            sh = trained.runner.dec_meta["shapes"]
            protocol = replace(ctx.protocol, src_len=sh["src_len"], tgt_len=sh["tgt_len"], beam=sh["beam"])
            exported = export_onnx(cfg, ctx.options, protocol, tmp, random_model(cfg, ctx.options))
            states = {"trained": trained, "random": TimedRunner(tmp, exported)}
            best = {}
            for r in range(args.rounds):
                for kind in (("trained", "random") if r % 2 else ("random", "trained")):
                    t = states[kind].decode()
                    best[kind] = t if kind not in best else np.minimum(best[kind], t)
            tr, rd = 1000 * best["trained"].sum(), 1000 * best["random"].sum()
            print(f"| {name} {cfg.key()}: decoder ({trained.runner.tgt_len} steps) trained {tr:.3f} ms, random weights "
                  f"{rd:.3f} ms [measured:onnxruntime, sum of per-step minima]; trained / random {tr / rd:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
