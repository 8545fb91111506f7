#!/usr/bin/env python
"""Cost per SubTransformer of export (ONNX encoder + decoder step, with their checks) + RKNN build (fp16), before
and after the leaner graphs of issue 14, side by side; and the npu bundle built by one process vs a pool.

Samples SubTransformers of a search space, extracts each from a SuperTransformer with random weights (the cost does
not depend on the values), and per config, for each variant in turn (interleaved, so that both see the same load of
this shared machine):

* export: convert2onnx's work for both graphs (trace, op scan, onnx.checker, static shapes, onnxruntime parity);
* build:  convert2rknn's work for both graphs (rknn-toolkit2 load_onnx + build + export_rknn, fp16, no --verify).

Variants: ``after`` is the code as it is; ``before`` is the committed graphs of ``--before-rev`` (hat/export/graphs.py
read with ``git show``) without the export's tidy pass (Constant/Identity removal), i.e. what convert2onnx exported
at that revision. Printed per config: graph nodes (encoder, decoder) and CPU seconds (user + system of this process
AND its children, i.e. core-seconds) and wall seconds of export and build. The goal is <= 3 CPU-seconds per config
(export + build). One-time costs (imports, the toolkit's first build) are excluded by a warm-up config that is not
counted. torch runs single-threaded.

Then ``--bundle N`` configs go through latency_dataset.py's npu bundle (:func:`hat.latency.npu_bundle.make_bundle`)
with ``lat-workers`` 1 and ``--workers`` W (a pool of processes): wall and CPU seconds of each, and whether
the two manifests list the same SubTransformers in the same order with the same inputs/outputs.

    python benchmarks/export_build_time.py [--space configs/demo.de-en/supertransformer/space0.yml] [--configs 4]
        [--bundle 4 --workers 2] [--src-len 32] [--tgt-len 32] [--beam 4] [--target-platform rk3588] [--seed 1]
        [--before-rev a48455b] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hat.config import load_yaml  # noqa: E402
from hat.space import SearchSpace  # noqa: E402

BEFORE_REV = "a48455bb14c3b2fb8399a014a5b9e5868df64f32"  # the graphs before issue 14 (6.3-7.7 CPU-s per config)


def vocab_size(data_dir: str, default: int = 8000) -> int:
    path = os.path.join(data_dir, "dict.de.txt")
    if os.path.isfile(path):
        with open(path) as f:
            return sum(1 for _ in f) + 4  # fairseq adds <s> <pad> </s> <unk>
    return default


def cpu_seconds() -> float:
    """User + system seconds of this process and of its children that have ended (pool workers, toolkit helpers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def timed(fn):
    w, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - w, cpu_seconds() - c, out


def committed_graphs(rev: str) -> types.ModuleType:
    """hat/export/graphs.py as committed at ``rev``, as a module."""
    src = subprocess.run(["git", "show", f"{rev}:hat/export/graphs.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    mod = types.ModuleType("hat_export_graphs_before")
    mod.__file__ = f"{rev}:hat/export/graphs.py"
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


class Variants:
    """Switches hat.export between the current graphs (``after``) and the committed ones without tidy (``before``)."""

    NAMES = ("EncoderGraph", "DecoderStepGraph", "encoder_io", "decoder_io", "graph_meta", "sidecar_io_only")

    def __init__(self, rev: str):
        from hat.export import graphs, onnx as export_onnx

        self.graphs, self.onnx = graphs, export_onnx
        self.after = {n: getattr(graphs, n) for n in self.NAMES}
        self.after_tidy = export_onnx.tidy
        old = committed_graphs(rev)
        self.before = {n: getattr(old, n) for n in self.NAMES}

    def use(self, variant: str) -> None:
        for n, f in (self.before if variant == "before" else self.after).items():
            setattr(self.graphs, n, f)
        self.onnx.tidy = (lambda m: m) if variant == "before" else self.after_tidy


def nodes(path: str) -> int:
    import onnx

    return sum(Counter(n.op_type for n in onnx.load(path).graph.node).values())


def spread(xs):
    return f"{min(xs):.2f}-{max(xs):.2f}"


def bundle_run(workers: int, cfgs, opt, protocol, platform_name: str, work: str):
    from hat.latency import npu_bundle

    d = os.path.join(work, f"bundle_w{workers}")
    args = types.SimpleNamespace(lat_work_dir=d, lat_dataset_path=os.path.join(work, "lat.csv"),
                                 target_platform=platform_name, npu_core_mask="auto", lat_keep_models=False,
                                 lat_workers=workers, configs=None)
    wall, cpu, _ = timed(lambda: npu_bundle.make_bundle(args, opt, protocol, cfgs, log=lambda *a: None))
    with open(os.path.join(d, "manifest.json")) as f:
        manifest = json.load(f)
    return wall, cpu, manifest


def comparable(manifest: dict) -> list:
    """A manifest's entries without what differs from build to build (build time, .rknn checksum)."""
    out = []
    for m in manifest["models"]:
        m = json.loads(json.dumps(m))
        for part in ("encoder", "decoder"):
            m[part].pop("build_seconds", None)
            m[part].pop("sha256", None)
        out.append(m)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="configs/demo.de-en/supertransformer/space0.yml")
    ap.add_argument("--data", default="data-bin/demo.de-en", help="for the vocabulary size only")
    ap.add_argument("--configs", type=int, default=4, help="sampled SubTransformers (plus one warm-up)")
    ap.add_argument("--bundle", type=int, default=4, help="SubTransformers in the npu bundle comparison (0: skip)")
    ap.add_argument("--workers", type=int, default=2, help="build processes of the pooled bundle")
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--tgt-len", type=int, default=32)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--target-platform", default="rk3588")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--before-rev", default=BEFORE_REV, help="git revision whose graphs are 'before' ('' to skip)")
    ap.add_argument("--json", help="also write the raw per-config figures here")
    args = ap.parse_args()

    import torch

    from hat.export.onnx import ExportSettings, export_model, torch_threads
    from hat.export.rknn import build_part, require_rknn, toolkit_version
    from hat.latency.protocol import Protocol
    from hat.models import ModelOptions, SuperTransformer

    require_rknn()
    os.chdir(ROOT)
    torch.manual_seed(args.seed)
    space = SearchSpace.from_dict(load_yaml(args.space), source=args.space)
    v = vocab_size(args.data)
    opt = ModelOptions(v, v, share_all_embeddings=True)
    sup = SuperTransformer(space.super_config(), opt).eval()
    rng = random.Random(args.seed)
    cfgs = [space.sample(rng) for _ in range(args.configs + 1)]
    s = ExportSettings(batch_size=1, src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam)
    variants = ["before", "after"] if args.before_rev else ["after"]
    switch = Variants(args.before_rev) if args.before_rev else None
    quiet = lambda *a: None  # noqa: E731
    work = tempfile.mkdtemp(prefix="hat-export-bench-")
    rows = {name: [] for name in variants}
    load0 = os.getloadavg()[0]
    try:
        with torch_threads(1):
            for i, cfg in enumerate(cfgs):
                sub = sup.extract(cfg).eval()
                for variant in (variants if i % 2 else variants[::-1]):  # alternate which variant goes first
                    if switch:
                        switch.use(variant)
                    name = f"{variant}{i}"
                    e = timed(lambda: export_model(sub, work, name, s, log=quiet))
                    b = timed(lambda: [build_part(work, name, part, args.target_platform, "fp16", work, log=quiet)
                                       for part in ("enc", "dec")])
                    n = {p: nodes(os.path.join(work, f"{name}_{p}.onnx")) for p in ("enc", "dec")}
                    label = (f"{variant:6s} {cfg.key()}  enc {cfg.encoder_embed_dim}x{cfg.encoder_layer_num} dec "
                             f"{cfg.decoder_embed_dim}x{cfg.decoder_layer_num}: nodes enc {n['enc']} dec {n['dec']}; "
                             f"export {e[1]:.2f} cpu-s ({e[0]:.2f} s), rknn build {b[1]:.2f} cpu-s ({b[0]:.2f} s), "
                             f"total {e[1] + b[1]:.2f} cpu-s ({e[0] + b[0]:.2f} s) [measured]")
                    if i == 0:
                        print(f"| warm-up (not counted) {label}", flush=True)
                        continue
                    print(f"| {label}", flush=True)
                    rows[variant].append({"config": cfg.key(), "enc_layers": cfg.encoder_layer_num,
                                          "dec_layers": cfg.decoder_layer_num, "nodes_enc": n["enc"],
                                          "nodes_dec": n["dec"], "export_cpu_s": e[1], "export_wall_s": e[0],
                                          "build_cpu_s": b[1], "build_wall_s": b[0]})
        if switch:
            switch.use("after")
        bundle = None
        if args.bundle:
            bcfgs = [space.sample(rng) for _ in range(args.bundle)]
            protocol = Protocol(src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam)
            serial = bundle_run(1, bcfgs, opt, protocol, args.target_platform, work)
            pooled = bundle_run(args.workers, bcfgs, opt, protocol, args.target_platform, work)
            same = comparable(serial[2]) == comparable(pooled[2])
            order = [m["key"] for m in pooled[2]["models"]] == [c.key() for c in bcfgs]
            bundle = {"configs": args.bundle, "workers": args.workers, "serial_wall_s": serial[0],
                      "serial_cpu_s": serial[1], "pool_wall_s": pooled[0], "pool_cpu_s": pooled[1],
                      "same_manifest": same, "configs_order": order}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load1 = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load0:.1f} at start, {load1:.1f} at end; torch {torch.__version__} (1 thread), rknn-toolkit2 "
          f"{toolkit_version()}; batch 1, beam {args.beam}, src-len {args.src_len}, tgt-len {args.tgt_len}, "
          f"{args.target_platform} fp16; random weights, vocab {v}; 'before' = graphs of {args.before_rev[:12] or '-'}")
    summary = {}
    for variant in variants:
        r = rows[variant]
        if not r:
            continue
        mean = lambda k: statistics.mean(x[k] for x in r)  # noqa: E731
        total = [x["export_cpu_s"] + x["build_cpu_s"] for x in r]
        summary[variant] = {k: mean(k) for k in ("nodes_enc", "nodes_dec", "export_cpu_s", "export_wall_s",
                                                   "build_cpu_s", "build_wall_s")}
        summary[variant]["total_cpu_s"] = statistics.mean(total)
        summary[variant]["total_wall_s"] = mean("export_wall_s") + mean("build_wall_s")
        print(f"{variant:6s} mean per config over {len(r)}: nodes enc {mean('nodes_enc'):.0f} dec "
              f"{mean('nodes_dec'):.0f}; export {mean('export_cpu_s'):.2f} cpu-s ({mean('export_wall_s'):.2f} s) + "
              f"rknn build {mean('build_cpu_s'):.2f} cpu-s ({mean('build_wall_s'):.2f} s) = "
              f"{statistics.mean(total):.2f} cpu-s (per config {spread(total)}), "
              f"{summary[variant]['total_wall_s']:.2f} s wall [measured]")
    if "before" in rows and rows["before"]:
        b, a = rows["before"], rows["after"]
        ratios = [(x["export_cpu_s"] + x["build_cpu_s"]) / (y["export_cpu_s"] + y["build_cpu_s"]) for x, y in zip(b, a)]

        def per_layer(variant, part):
            return summary[variant][f"nodes_{part}"] / statistics.mean(x[f"{part}_layers"] for x in rows[variant])

        print(f"before/after cpu-s per config: {statistics.mean(ratios):.2f}x (per config {spread(ratios)}); nodes "
              f"per layer (enc, dec): before {per_layer('before', 'enc'):.1f}, {per_layer('before', 'dec'):.1f}; after "
              f"{per_layer('after', 'enc'):.1f}, {per_layer('after', 'dec'):.1f} (graph nodes / layers)")
    if "after" in summary:
        met = summary["after"]["total_cpu_s"] <= 3.0
        print(f"goal <= 3 cpu-s per config (export + build): {summary['after']['total_cpu_s']:.2f} -> "
              f"{'met' if met else 'NOT met'}")
    if bundle:
        print(f"npu bundle of {bundle['configs']} configs: 1 process {bundle['serial_wall_s']:.1f} s wall "
              f"({bundle['serial_cpu_s']:.1f} cpu-s), {bundle['workers']} processes {bundle['pool_wall_s']:.1f} s wall "
              f"({bundle['pool_cpu_s']:.1f} cpu-s, pool start included): "
              f"{bundle['serial_wall_s'] / bundle['pool_wall_s']:.2f}x faster; same manifest "
              f"{bundle['same_manifest']}, in config order {bundle['configs_order']} [measured]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "bundle": bundle, "load_average": [load0, load1],
                       "before_rev": args.before_rev}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
