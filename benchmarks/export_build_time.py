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
at that revision; ``v2`` (with ``--graphs-rev``, e.g. d017231, the last commit of graphs v2) is the committed graphs
of that revision exported and built by the current code, so ``v2`` vs ``after`` is what the graphs' form alone
costs the toolkit; ``prev`` is the current graphs exported and built by hat/export/onnx.py and hat/export/rknn.py as
committed at ``--code-rev`` (read with ``git show``): the same graphs and .rknn models as ``after``, so ``prev`` vs
``after`` is what the export and build code's own work costs (issue 14 item 5: one write of each graph instead of
two, checks on the bytes in memory, the toolkit's repeat of onnx.checker skipped, its progress bars really off).
Printed per config: graph nodes (encoder, decoder) and CPU seconds (user + system of this process AND its children,
i.e. core-seconds) and wall seconds of export and build. The goal is <= 3 CPU-seconds per config (export + build).
One-time costs (imports, the toolkit's first build) are excluded by a warm-up config that is not counted. torch runs
single-threaded; the cores this process may run on are printed (``taskset -c 0`` leaves it one, the pooled bundle's
processes included).

Then ``--bundle N`` configs go through latency_dataset.py's npu bundle (:func:`hat.latency.npu_bundle.make_bundle`)
with ``lat-workers`` 1 and ``--workers`` W (a pool of processes): wall and CPU seconds of each, and whether
the two manifests list the same SubTransformers in the same order with the same inputs/outputs.

    python benchmarks/export_build_time.py [--space configs/demo.de-en/supertransformer/space0.yml] [--configs 4]
        [--bundle 4 --workers 2] [--src-len 32] [--tgt-len 32] [--beam 4] [--target-platform rk3588] [--seed 1]
        [--before-rev a48455b] [--graphs-rev d017231] [--code-rev 0ed3917] [--json PATH]

``--phases`` times where the build's CPU time goes instead, for ``--configs`` sampled SubTransformers (+ a warm-up
one) exported and built by the current code: rknn-toolkit2's top-level passes (wrapped, their code unchanged;
process CPU seconds, inclusive, during the builds only), with two parts of them: its per-output-channel value-range
loop (``sparse_weight._range_channel``, inside ``sparse_weight``) and the onnxruntime sessions it creates to
evaluate single nodes (inside ``fold_constant``).

``--equivalence N`` times nothing: it checks that the current export and build code writes the same graphs and the
same .rknn models as that of ``--code-rev`` for N sampled SubTransformers. Three fresh processes export and build
them into three folders, two with the ``--code-rev`` code (A, A2) and one with the current code (B), each with
glibc's ``MALLOC_PERTURB_`` set and address-space randomisation off (``setarch -R``): rknn-toolkit2 writes some
uninitialised memory and some of its own heap addresses into a .rknn, different on every build; with a constant
fill and fixed addresses two builds of the same graph are byte-identical or differ only in such addresses (where the
heap's layout differs: the old code's progress bars format timings, other code allocates differently before the
toolkit runs). Checked: every .onnx and its sidecar identical in A, A2 and B; every .rknn of A2 and B the size of
A's and equal to it but for 32-bit words that hold a heap address (or half of one) in both; the build summaries
equal but for build time and the .rknn's sha256; the toolkit's logs equal but for timestamps and progress bars.
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
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hat.config import load_yaml  # noqa: E402
from hat.space import SearchSpace  # noqa: E402

BEFORE_REV = "a48455bb14c3b2fb8399a014a5b9e5868df64f32"  # the graphs before issue 14 (6.3-7.7 CPU-s per config)
CODE_REV = "0ed39177c359a41751c80c981c3dcdd76a894f65"  # the export/build code before issue 14 item 5 (graphs v2)
GRAPHS_V2_REV = "d017231"  # the last commit of graphs v2 (hat.export.GRAPHS_VERSION "2")


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


def committed_module(rev: str, path: str) -> types.ModuleType:
    """``path`` (a module of this repository) as committed at ``rev``, as a module of its own (its imports of other
    hat modules get the current ones)."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    name = f"{path[:-3].replace('/', '_')}_at_{rev[:12]}"
    mod = types.ModuleType(name)
    mod.__file__ = f"{rev}:{path}"
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


class Variants:
    """Switches hat.export between the current graphs (``after``), the committed ones of ``before_rev`` without tidy
    (``before``) and those of ``graphs_rev`` with it (``v2``: what the current export code makes of them)."""

    NAMES = ("EncoderGraph", "DecoderStepGraph", "encoder_io", "decoder_io", "graph_meta", "sidecar_io_only")

    def __init__(self, before_rev: str, graphs_rev: str = ""):
        from hat.export import graphs, onnx as export_onnx

        self.graphs, self.onnx = graphs, export_onnx
        self.tidy = export_onnx.tidy
        self.sets = {"after": ({n: getattr(graphs, n) for n in self.NAMES}, True)}
        for variant, rev, tidy in (("before", before_rev, False), ("v2", graphs_rev, True)):
            if rev:
                old = committed_graphs(rev)
                self.sets[variant] = ({n: getattr(old, n) for n in self.NAMES}, tidy)

    def use(self, variant: str) -> None:
        functions, tidy = self.sets.get(variant, self.sets["after"])
        for n, f in functions.items():
            setattr(self.graphs, n, f)
        self.onnx.tidy = self.tidy if tidy else (lambda m: m)


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


def sample_configs(args, space):
    rng = random.Random(args.seed)
    return [space.sample(rng) for _ in range(args.configs + 1)]


def random_supernet(args):
    """(space, model options, SuperTransformer with random weights of seed ``args.seed``) for ``args.space``; the
    vocabulary size of ``args.data``, shared embeddings."""
    import torch

    from hat.models import ModelOptions, SuperTransformer

    torch.manual_seed(args.seed)
    space = SearchSpace.from_dict(load_yaml(args.space), source=args.space)
    v = vocab_size(args.data)
    opt = ModelOptions(v, v, share_all_embeddings=True)
    return space, opt, SuperTransformer(space.super_config(), opt).eval()


def build_worker(args) -> int:
    """``--worker prev|after --out DIR``: export + build the sampled SubTransformers (warm-up one included) into
    DIR with the code of ``--code-rev`` (prev) or the current code (after); for :func:`equivalence`."""
    os.chdir(ROOT)
    if args.worker == "prev":
        export_onnx = committed_module(args.code_rev, "hat/export/onnx.py")
        export_rknn = committed_module(args.code_rev, "hat/export/rknn.py")
    else:
        from hat.export import onnx as export_onnx, rknn as export_rknn
    space, _, sup = random_supernet(args)
    s = export_onnx.ExportSettings(batch_size=1, src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam)
    with export_onnx.torch_threads(1):
        for i, cfg in enumerate(sample_configs(args, space)):
            export_onnx.export_model(sup.extract(cfg).eval(), args.out, f"c{i}", s, log=lambda *a: None)
            for part in ("enc", "dec"):
                export_rknn.build_part(args.out, f"c{i}", part, args.target_platform, "fp16", args.out,
                                       log=lambda *a: None)
    return 0


def heap_word(w: int) -> bool:
    """A 32-bit word of a heap address with ASLR off (the heap then starts at 0x5555_5555_4000): its high half or
    its low half."""
    return w == 0x5555 or 0x50000000 <= w < 0x70000000


def same_log(a: str, b: str) -> bool:
    import re

    def lines(path):
        with open(path, errors="replace") as f:
            text = f.read()
        text = re.sub(r"\r?[^\n\r]*\d+%\|[^\n\r]*", "", text)  # tqdm bars (drawn by 'prev' only)
        text = re.sub(r"\d\d:\d\d:\d\d\.\d+", "T", text)
        return [ln for ln in text.splitlines() if ln.strip()]

    return lines(a) == lines(b)


PHASES = (  # (label, module of rknn.api, class or None, attribute)
    ("load_onnx", "rknn_base", "RKNNBase", "load_onnx"),
    ("base_optimize", "graph_optimizer", "GraphOptimizer", "base_optimize"),
    ("fold_constant", "graph_optimizer", "GraphOptimizer", "fold_constant"),
    ("correct_ops", "graph_optimizer", "GraphOptimizer", "correct_ops"),
    ("fuse_ops", "graph_optimizer", "GraphOptimizer", "fuse_ops"),
    ("sparse_weight", "graph_optimizer", "GraphOptimizer", "sparse_weight"),
    ("  of which the per-channel range loop", "sparse_weight", None, "_range_channel"),
    ("recover_const_share", "rknn_base", "RKNNBase", "_recover_const_share"),
    ("librknnc compile", "rknn_compiler", "RKNNCompiler", "build"),
    ("export_rknn", "rknn_base", "RKNNBase", "export_rknn"),
)


def phases(args) -> int:
    import functools
    import importlib
    from collections import defaultdict

    import onnxruntime

    from hat.export.onnx import ExportSettings, export_model, torch_threads
    from hat.export.rknn import build_part, require_rknn, toolkit_version

    require_rknn()
    os.chdir(ROOT)
    spent = defaultdict(float)
    calls = defaultdict(int)
    building = [False]  # the export's own onnxruntime session (parity) is not the build's

    def wrap(label, owner, attr):
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed_call(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                if building[0]:
                    spent[label] += time.process_time() - t
                    calls[label] += 1

        setattr(owner, attr, timed_call)

    for label, module, cls, attr in PHASES:
        mod = importlib.import_module(f"rknn.api.{module}")
        wrap(label, getattr(mod, cls) if cls else mod, attr)
    wrap("  of which onnxruntime sessions (create)", onnxruntime.InferenceSession, "__init__")
    wrap("  of which onnxruntime sessions (run)", onnxruntime.InferenceSession, "run")
    space, _, sup = random_supernet(args)
    s = ExportSettings(batch_size=1, src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam)
    work = tempfile.mkdtemp(prefix="hat-export-phases-")
    builds = {"enc": 0.0, "dec": 0.0}
    load0 = os.getloadavg()[0]
    try:
        with torch_threads(1):
            for i, cfg in enumerate(sample_configs(args, space)):
                export_model(sup.extract(cfg).eval(), work, f"c{i}", s, log=lambda *a: None)
                if i == 0:  # warm-up
                    for part in ("enc", "dec"):
                        build_part(work, "c0", part, args.target_platform, "fp16", work, log=lambda *a: None)
                    continue
                for part in ("enc", "dec"):
                    t = time.process_time()
                    building[0] = True
                    try:
                        build_part(work, f"c{i}", part, args.target_platform, "fp16", work, log=lambda *a: None)
                    finally:
                        building[0] = False
                    builds[part] += time.process_time() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n, total = args.configs, builds["enc"] + builds["dec"]
    print(f"rknn-toolkit2 {toolkit_version()}, {args.target_platform} fp16, {n} SubTransformers of {args.space} "
          f"(seed {args.seed}), the current export/build code; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"process CPU seconds (the toolkit runs in this process)")
    print(f"build per config (encoder + decoder, build_part): {total / n:.2f} cpu-s (encoder {builds['enc'] / n:.2f}, "
          f"decoder {builds['dec'] / n:.2f}) [measured]")
    labels = [p[0] for p in PHASES]
    labels[labels.index("fold_constant") + 1:labels.index("fold_constant") + 1] = [
        "  of which onnxruntime sessions (create)", "  of which onnxruntime sessions (run)"]
    for label in labels:
        print(f"| {label:42s} {spent[label] / n:6.3f} cpu-s per config ({100 * spent[label] / total:4.1f} % of the "
              f"build; {calls[label] / n:.0f} calls) [measured]")
    inside = sum(spent[p[0]] for p in PHASES if not p[0].startswith(" "))
    print(f"| {'rest (toolkit between its passes, our checks)':42s} {(total - inside) / n:6.3f} cpu-s per config "
          f"({100 * (total - inside) / total:4.1f} % of the build) [measured]")
    return 0


def fused(args) -> int:
    """The graphs rknn-toolkit2 compiles (its own graph after ``fuse_ops``, read from the optimizer it builds with;
    the toolkit's code unchanged) of the current graphs and of ``--graphs-rev``'s, for ``--configs`` sampled
    SubTransformers: their nodes by op type, i.e. the kernels the NPU runs per call."""
    import rknn.api.graph_optimizer as graph_optimizer

    from hat.export.onnx import ExportSettings, export_model, torch_threads
    from hat.export.rknn import build_part, require_rknn, toolkit_version

    if not args.graphs_rev:
        print("--fused compares with --graphs-rev: give one (e.g. --graphs-rev d017231)", file=sys.stderr)
        return 2
    require_rknn()
    os.chdir(ROOT)
    seen: List[Counter] = []
    fuse_ops = graph_optimizer.GraphOptimizer.fuse_ops

    def keep_fused(self, *a, **k):
        out = fuse_ops(self, *a, **k)
        seen.append(Counter(n.op_type for n in self.ir.model.graph.node))
        return out

    graph_optimizer.GraphOptimizer.fuse_ops = keep_fused
    space, _, sup = random_supernet(args)
    s = ExportSettings(batch_size=1, src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam)
    switch = Variants("", args.graphs_rev)
    totals = {variant: {"enc": Counter(), "dec": Counter()} for variant in ("v2", "after")}
    work = tempfile.mkdtemp(prefix="hat-export-fused-")
    try:
        with torch_threads(1):
            for i, cfg in enumerate(sample_configs(args, space)[1:]):  # the configs of the timed runs
                sub = sup.extract(cfg).eval()
                for variant in ("v2", "after"):
                    switch.use(variant)
                    export_model(sub, work, f"{variant}{i}", s, log=lambda *a: None)
                    for part in ("enc", "dec"):
                        build_part(work, f"{variant}{i}", part, args.target_platform, "fp16", work,
                                   log=lambda *a: None)
                        totals[variant][part] += seen.pop()
    finally:
        switch.use("after")
        shutil.rmtree(work, ignore_errors=True)
    n = args.configs
    print(f"rknn-toolkit2 {toolkit_version()}, {args.target_platform} fp16, {n} SubTransformers of {args.space} (seed "
          f"{args.seed}): nodes of the graph the toolkit compiles (after its fuse_ops), mean per config [measured]")
    for part in ("enc", "dec"):
        for variant, label in (("v2", f"graphs of {args.graphs_rev[:12]}"), ("after", "current graphs")):
            c = totals[variant][part]
            ops = ", ".join(f"{op} {c[op] / n:.1f}" for op in sorted(c, key=lambda o: (-c[o], o)))
            print(f"| {part} {label:24s} {sum(c.values()) / n:5.1f} nodes: {ops}")
    return 0


def equivalence(args) -> int:
    import numpy as np

    base = tempfile.mkdtemp(prefix="hat-export-equiv-")
    env = dict(os.environ, MALLOC_PERTURB_="165", PYTHONHASHSEED="0", PYTHONWARNINGS="ignore")
    setarch = shutil.which("setarch")
    if not setarch:
        print("setarch (util-linux) not found: ASLR cannot be turned off for the builds; nothing checked")
        return 2
    dirs = {}
    try:
        for tag, worker in (("A", "prev"), ("A2", "prev"), ("B", "after")):
            d = dirs[tag] = os.path.join(base, tag)
            cmd = [setarch, platform.machine(), "-R", sys.executable, os.path.abspath(__file__), "--worker", worker,
                   "--out", d, "--configs", str(args.equivalence), "--space", args.space, "--data", args.data,
                   "--src-len", str(args.src_len), "--tgt-len", str(args.tgt_len), "--beam", str(args.beam),
                   "--target-platform", args.target_platform, "--seed", str(args.seed), "--code-rev", args.code_rev]
            w = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"| {tag}: export + build of {args.equivalence + 1} SubTransformers with the "
                  f"{'code of ' + args.code_rev[:12] if worker == 'prev' else 'current code'} "
                  f"({time.perf_counter() - w:.0f} s)", flush=True)
        ok = True
        for f in sorted(os.listdir(dirs["A"])):
            paths = {t: os.path.join(d, f) for t, d in dirs.items()}
            if not os.path.isfile(paths["B"]):
                print(f"{f}: missing in B"); ok = False
                continue
            if f.endswith((".onnx", ".rknn")):
                data = {}
                for t, p in paths.items():
                    with open(p, "rb") as fh:
                        data[t] = fh.read()
            if f.endswith(".onnx"):
                good = data["A"] == data["B"] == data["A2"]
                print(f"{f:32s} graph identical (A, A2, B): {good}")
            elif f.endswith(".rknn"):
                a = data["A"]
                if len({len(x) for x in data.values()}) > 1:
                    print(f"{f:32s} size differs: {[len(x) for x in data.values()]} B")
                    ok = False
                    continue
                n = len(a) // 4 * 4
                wa = np.frombuffer(a[:n], "<u4")
                said, good = [], True
                for t in ("A2", "B"):
                    wt = np.frombuffer(data[t][:n], "<u4")
                    diff = np.nonzero(wa != wt)[0]
                    other = [i for i in diff if not (heap_word(int(wa[i])) and heap_word(int(wt[i])))]
                    good &= not other and a[n:] == data[t][n:]
                    what = ("identical" if not len(diff) else
                            f"{len(diff)} words differ (bytes {4 * diff[0]}-{4 * diff[-1] + 3}), " +
                            ("all heap addresses in both" if not other else "NOT only heap addresses"))
                    said.append(f"{t} vs A: {what}")
                print(f"{f:32s} {len(a):8d} B; {'; '.join(said)}")
            elif f.endswith(".json"):
                js = {}
                for t, p in paths.items():
                    with open(p) as fh:
                        js[t] = json.load(fh)
                summary = f.count(".") > 1  # NAME_part.platform.precision.json, not the sidecar NAME_part.json
                if summary:
                    for j in js.values():
                        j.pop("build_seconds", None)
                        j.pop("sha256", None)
                good = js["A"] == js["B"] == js["A2"]
                print(f"{f:32s} {'build summary (time, sha256 aside)' if summary else 'sidecar'} equal: {good}")
            elif f.endswith(".log"):
                good = same_log(paths["A"], paths["B"])
                print(f"{f:32s} toolkit log equal (timestamps, progress bars aside): {good}")
            else:
                continue
            ok &= good
        print(f"equivalence over {args.equivalence + 1} SubTransformers: "
              f"{'the same graphs and models' if ok else 'DIFFERENCES (see above)'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


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
    ap.add_argument("--graphs-rev", default="",
                    help="git revision whose graphs (exported and built by the current code) are 'v2', e.g. "
                         f"{GRAPHS_V2_REV[:7]}, the last commit of graphs v2 ('' to skip)")
    ap.add_argument("--code-rev", default=CODE_REV,
                    help="git revision whose hat/export/onnx.py and rknn.py export and build 'prev' ('' to skip)")
    ap.add_argument("--json", help="also write the raw per-config figures here")
    ap.add_argument("--equivalence", type=int, default=0, metavar="N",
                    help="time nothing: check that the current code writes the graphs and models of --code-rev's "
                         "for N sampled SubTransformers (+ the warm-up one)")
    ap.add_argument("--phases", action="store_true",
                    help="time nothing else: where the build's CPU time goes (rknn-toolkit2's passes) over --configs")
    ap.add_argument("--fused", action="store_true",
                    help="time nothing: the nodes of the graphs rknn-toolkit2 compiles, current vs --graphs-rev's")
    ap.add_argument("--worker", choices=("prev", "after"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return build_worker(args)
    if args.equivalence:
        return equivalence(args)
    if args.phases:
        return phases(args)
    if args.fused:
        return fused(args)

    import torch

    from hat.export.onnx import ExportSettings, export_model, torch_threads
    from hat.export.rknn import build_part, require_rknn, toolkit_version
    from hat.latency.protocol import Protocol

    require_rknn()
    os.chdir(ROOT)
    space, opt, sup = random_supernet(args)
    rng = random.Random(args.seed)
    cfgs = [space.sample(rng) for _ in range(args.configs + 1)]  # as sample_configs; rng goes on for the bundle
    s = ExportSettings(batch_size=1, src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam)
    variants = ((["before"] if args.before_rev else []) + (["v2"] if args.graphs_rev else [])
                + (["prev"] if args.code_rev else []) + ["after"])
    switch = Variants(args.before_rev, args.graphs_rev) if args.before_rev or args.graphs_rev else None
    # export_model / build_part per variant: 'prev' those committed at --code-rev, the others the current ones
    steps = {variant: (export_model, build_part) for variant in variants}
    if args.code_rev:
        old_onnx = committed_module(args.code_rev, "hat/export/onnx.py")
        old_rknn = committed_module(args.code_rev, "hat/export/rknn.py")
        steps["prev"] = (old_onnx.export_model, old_rknn.build_part)
    quiet = lambda *a: None  # noqa: E731
    work = tempfile.mkdtemp(prefix="hat-export-bench-")
    rows = {name: [] for name in variants}
    load0 = os.getloadavg()[0]
    try:
        with torch_threads(1):
            for i, cfg in enumerate(cfgs):
                sub = sup.extract(cfg).eval()
                for variant in (variants if i % 2 else variants[::-1]):  # alternate the order of the variants
                    if switch:
                        switch.use(variant)
                    export, build = steps[variant]
                    name = f"{variant}{i}"
                    e = timed(lambda: export(sub, work, name, s, log=quiet))
                    b = timed(lambda: [build(work, name, part, args.target_platform, "fp16", work, log=quiet)
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
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores ({usable} usable by this "
          f"process and its children), load average {load0:.1f} at start, {load1:.1f} at end; torch "
          f"{torch.__version__} (1 thread), rknn-toolkit2 {toolkit_version()}; batch 1, beam {args.beam}, src-len "
          f"{args.src_len}, tgt-len {args.tgt_len}, {args.target_platform} fp16; random weights, vocab "
          f"{opt.tgt_vocab}; 'before' = graphs of {args.before_rev[:12] or '-'}; 'v2' = graphs of "
          f"{args.graphs_rev[:12] or '-'}; 'prev' = export/build code of {args.code_rev[:12] or '-'}")
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
    def total(x):
        return x["export_cpu_s"] + x["build_cpu_s"]

    if "before" in rows and rows["before"]:
        b, a = rows["before"], rows["after"]
        ratios = [total(x) / total(y) for x, y in zip(b, a)]

        def per_layer(variant, part):
            return summary[variant][f"nodes_{part}"] / statistics.mean(x[f"{part}_layers"] for x in rows[variant])

        print(f"before/after cpu-s per config: {statistics.mean(ratios):.2f}x (per config {spread(ratios)}); nodes "
              f"per layer (enc, dec): before {per_layer('before', 'enc'):.1f}, {per_layer('before', 'dec'):.1f}; after "
              f"{per_layer('after', 'enc'):.1f}, {per_layer('after', 'dec'):.1f} (graph nodes / layers)")
    if "v2" in rows and rows["v2"]:
        d = [total(y) - total(x) for x, y in zip(rows["v2"], rows["after"])]
        db = [y["build_cpu_s"] - x["build_cpu_s"] for x, y in zip(rows["v2"], rows["after"])]
        lower = sum(x < 0 for x in d)
        print(f"after - v2 cpu-s per config (graphs of {args.graphs_rev[:12]} vs now, the same export/build code): "
              f"build {statistics.mean(db):+.3f} ({min(db):+.2f} to {max(db):+.2f}), total {statistics.mean(d):+.3f} "
              f"({min(d):+.2f} to {max(d):+.2f}; lower in {lower} of {len(d)}); "
              f"{100 * statistics.mean(d) / summary['v2']['total_cpu_s']:+.1f} %")
    if "prev" in rows and rows["prev"]:
        p, a = rows["prev"], rows["after"]
        d = [total(y) - total(x) for x, y in zip(p, a)]
        de = [y["export_cpu_s"] - x["export_cpu_s"] for x, y in zip(p, a)]
        db = [y["build_cpu_s"] - x["build_cpu_s"] for x, y in zip(p, a)]
        print(f"after - prev cpu-s per config (same graphs and models, export/build code of {args.code_rev[:12]} vs "
              f"now): export {statistics.mean(de):+.3f} (per config {min(de):+.2f} to {max(de):+.2f}), build "
              f"{statistics.mean(db):+.3f} ({min(db):+.2f} to {max(db):+.2f}), total {statistics.mean(d):+.3f} "
              f"({min(d):+.2f} to {max(d):+.2f}); {100 * statistics.mean(d) / summary['prev']['total_cpu_s']:+.1f} %")
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
                       "before_rev": args.before_rev, "graphs_rev": args.graphs_rev, "code_rev": args.code_rev,
                       "cores_usable": usable, "cores": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
