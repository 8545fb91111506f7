"""Peak memory of the exported graphs in onnxruntime, measured for one SubTransformer in a fresh process.

    python -m hat.latency.memory_probe --onnx-dir DIR --name NAME --baseline IDENTITY.onnx   (the worker)

:func:`measure_memory` exports ``cfg`` (random weights, as the onnxruntime latency backend does:
:func:`hat.latency.onnxruntime.export_onnx`) in the calling process, then starts ``sys.executable -m
hat.latency.memory_probe`` on the two graphs and reads one JSON line back. The worker imports numpy and onnxruntime
only (no torch: nothing of the exporting process is counted) and does, in order:

1. **baseline**: an onnxruntime session on a one-node Identity graph, with the deployment's options, run once (the
   onnxruntime environment, its allocators and the Python binding are then in place); glibc's free heap given back
   (``malloc_trim(0)``); ``/proc/self/status`` read; the peak (``VmHWM``) reset to the current RSS
   (``echo 5 > /proc/self/clear_refs``).
2. **load**: both graphs in InferenceSessions; the peak so far is the *load peak* (``load_peak_mb``, untrimmed);
   then ``malloc_trim(0)`` and the peak is reset again. Creating a session parses the .onnx protobuf and copies its
   initializers out; glibc keeps most of the freed protobuf's pages (its mmap threshold grows with large frees), 20
   to 30 % of the figure on the demo space. That memory is not the model's, any process can give it back, so the
   probe does (a deployment that wants the same figure calls ``malloc_trim(0)`` after loading, or sets
   ``MALLOC_MMAP_THRESHOLD_``); the untrimmed figures are reported beside it.
3. **run**: :data:`RUNS` decodes of the latency protocol, as the onnxruntime latency backend runs them
   (:class:`hat.latency.onnxruntime.OrtBackend`): one encoder call, its ``cross_k_i``/``cross_v_i`` repeated to the
   ``beam`` hypotheses on the host, self-attention caches starting at zeros, then ``tgt_len`` decoder-step calls
   each fed the caches the previous step returned. The first run lets onnxruntime plan its memory pattern; the
   peak over all runs is the *run peak*. State is dropped between runs (a deployment decodes one sentence after
   another).

Measured figure (``measured_mb``, source ``measured:onnxruntime``): ``run peak RSS - baseline RSS - growth of
file-backed RSS``, in MiB. ``VmHWM`` counts file-backed pages too (the code of the kernels a graph touches the first
time it runs); their growth (``RssFile`` at the end minus at the baseline, never given back) is taken out, so what
is left is the process's anonymous memory the model needs while it decodes: the weights as onnxruntime holds them
(initializers and pre-packed GEMM weights, one copy per graph), its arena (the memory-pattern block of each graph's
intermediates, the graph outputs: logits and the new caches), the host's numpy buffers (the caches fed in, the
encoder's keys/values repeated per hypothesis; freed buffers whose pages the allocator keeps) and the sessions' own
structures (graph, kernels, execution frames). The memory model (:func:`hat.memory.exported_memory_report`)
predicts this figure.

Deployment settings (recorded in every result, :data:`DEPLOYMENT`): CPU execution provider, 1 intra-op and 1
inter-op thread (per-thread scratch does not depend on the machine's core count), ``enable_cpu_mem_arena`` on and
``enable_mem_pattern`` on (onnxruntime's defaults, what :func:`hat.export.runtime.ort_session` and so the latency
backend and ``decode.py`` use), graph optimisation level ``ORT_ENABLE_ALL`` (the default), pre-packing on (the
default). Linux only (``/proc``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

from hat.errors import HatError

SOURCE = "measured:onnxruntime"
RUNS = 3
DEPLOYMENT = {"provider": "CPUExecutionProvider", "intra_op_threads": 1, "inter_op_threads": 1,
              "enable_cpu_mem_arena": True, "enable_mem_pattern": True, "graph_optimization_level": "ORT_ENABLE_ALL",
              "prepacking": True}
MB = float(2**20)
BASELINE_NAME = "memory-probe-identity.onnx"


class ProbeError(HatError):
    """The memory probe could not measure (no /proc, the worker failed)."""


@dataclass
class ProbeResult:
    """One measurement; every figure in MiB, from the worker's baseline."""

    measured_mb: float  # run peak, anonymous memory: the figure the memory model predicts
    load_peak_mb: float  # peak while the two sessions were created
    loaded_untrimmed_mb: float  # after the sessions were created, before malloc_trim
    loaded_mb: float  # after the sessions were created and malloc_trim, before running
    end_mb: float  # after the runs (state dropped)
    file_growth_mb: float  # file-backed RSS growth taken out
    baseline_rss_mb: float
    runs: int
    shapes: Dict[str, int]
    settings: Dict[str, object]
    onnxruntime: str
    malloc_trim: bool = True
    source: str = SOURCE
    raw_kb: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    def columns(self) -> Dict[str, object]:
        """The measured-memory columns of a latency dataset row (``measured_memory_mb``, ``measured_memory_source``)."""
        return {"measured_memory_mb": round(self.measured_mb, 6), "measured_memory_source": self.source}


# ---- worker (numpy + onnxruntime only) -------------------------------------------------------------------------------
def read_status() -> Dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` of this process in kB."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(rest.split()[0])
    except OSError as e:
        raise ProbeError(f"memory probe: cannot read /proc/self/status ({e.strerror}); Linux is needed") from None
    if len(out) != 4:
        raise ProbeError("memory probe: /proc/self/status lacks VmRSS/VmHWM/RssAnon/RssFile; Linux >= 4.5 is needed")
    return out


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise ProbeError(f"memory probe: cannot reset the peak RSS via /proc/self/clear_refs ({e.strerror})") from None


def trim_heap() -> bool:
    """glibc's ``malloc_trim(0)``: give the heap's free pages back to the system (False where there is no glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


def session_options(ort, settings: Optional[Dict[str, object]] = None):
    """onnxruntime SessionOptions of ``settings`` (:data:`DEPLOYMENT` by default)."""
    st = dict(DEPLOYMENT, **(settings or {}))
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(st["intra_op_threads"])
    so.inter_op_num_threads = int(st["inter_op_threads"])
    so.enable_cpu_mem_arena = bool(st["enable_cpu_mem_arena"])
    so.enable_mem_pattern = bool(st["enable_mem_pattern"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, str(st["graph_optimization_level"]))
    if not st["prepacking"]:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.log_severity_level = 3
    return so


def _decode_once(enc, dec, enc_feeds, static, beam, tgt_len, offset, self_specs, np, self_mask):
    """One decode as :class:`hat.latency.onnxruntime.OrtBackend` runs it; returns nothing (state is dropped)."""
    enc_out = [o.name for o in enc.get_outputs()]
    dec_out = [o.name for o in dec.get_outputs()]
    outs = enc.run(enc_out, enc_feeds)
    cross = {n: np.repeat(o, beam, axis=0) for n, o in zip(enc_out, outs)}
    del outs
    cache = {s["name"]: np.zeros(s["shape"], np.float32) for s in self_specs}
    for step in range(tgt_len):
        feeds = {"position": np.full((1, 1), offset + step, np.int64), "self_mask": self_mask(tgt_len, step)}
        feeds.update(static)
        feeds.update(cross)
        feeds.update(cache)
        outs = dec.run(dec_out, feeds)
        for n, o in zip(dec_out, outs):
            if n.startswith("new_"):
                cache[n[4:]] = o
        del feeds, outs


def worker(onnx_dir: str, name: str, baseline: str, runs: int = RUNS,
           settings: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    import gc

    import numpy as np
    import onnxruntime as ort

    from hat.export import onnx_path, read_sidecar
    from hat.export.runtime import prepare_source, self_mask

    metas = {p: read_sidecar(onnx_dir, name, p) for p in ("enc", "dec")}
    sh = metas["dec"]["shapes"]
    batch, beam, src_len, tgt_len = sh["batch_size"], sh["beam"], sh["src_len"], sh["tgt_len"]
    tok = metas["dec"]["tokens"]
    rng = np.random.default_rng(0)
    sents = [list(rng.integers(4, tok["src_vocab"], max(1, src_len - 3))) for _ in range(batch)]
    tokens, positions, mask = prepare_source(sents, src_len, tok["pad"], tok["eos"])
    enc_feeds = {"src_tokens": tokens, "src_positions": positions, "src_mask": mask}
    static = {"prev_token": rng.integers(4, tok["tgt_vocab"], (batch * beam, 1)).astype(np.int64), "src_mask": mask}
    self_specs = [i for i in metas["dec"]["inputs"] if i["name"].startswith(("self_k_", "self_v_"))]

    # 1. baseline: the runtime in place, an empty session
    settings = dict(DEPLOYMENT, **(settings or {}))
    so = session_options(ort, settings)
    ident = ort.InferenceSession(baseline, so, providers=[DEPLOYMENT["provider"]])
    ident.run(None, {ident.get_inputs()[0].name: np.zeros((1,), np.float32)})
    gc.collect()
    trimmed = trim_heap()
    base = read_status()
    reset_peak()
    # 2. load
    enc = ort.InferenceSession(onnx_path(onnx_dir, name, "enc"), so, providers=[DEPLOYMENT["provider"]])
    dec = ort.InferenceSession(onnx_path(onnx_dir, name, "dec"), so, providers=[DEPLOYMENT["provider"]])
    gc.collect()
    untrimmed = read_status()
    trim_heap()
    loaded = read_status()
    reset_peak()
    # 3. run
    for _ in range(max(1, int(runs))):
        _decode_once(enc, dec, enc_feeds, static, beam, tgt_len, metas["dec"]["position_offset"], self_specs, np,
                     self_mask)
        gc.collect()
    end = read_status()
    return {"baseline": base, "untrimmed": untrimmed, "loaded": loaded, "end": end, "runs": max(1, int(runs)),
            "malloc_trim": trimmed, "settings": settings,
            "shapes": {"batch": batch, "beam": beam, "src_len": src_len, "tgt_len": tgt_len},
            "onnxruntime": ort.__version__}


def result_of(raw: Dict[str, object]) -> ProbeResult:
    """The worker's raw kB figures -> MiB from the baseline, file-backed growth taken out."""
    base, untrimmed, loaded, end = raw["baseline"], raw["untrimmed"], raw["loaded"], raw["end"]
    file_load = max(0, loaded["RssFile"] - base["RssFile"])
    file_end = max(0, end["RssFile"] - base["RssFile"])
    kb = 1024.0 / MB
    return ProbeResult(
        measured_mb=(end["VmHWM"] - base["VmRSS"] - file_end) * kb,
        load_peak_mb=(untrimmed["VmHWM"] - base["VmRSS"] - file_load) * kb,
        loaded_untrimmed_mb=(untrimmed["VmRSS"] - base["VmRSS"] - file_load) * kb,
        loaded_mb=(loaded["VmRSS"] - base["VmRSS"] - file_load) * kb,
        end_mb=(end["VmRSS"] - base["VmRSS"] - file_end) * kb,
        file_growth_mb=file_end * kb,
        baseline_rss_mb=base["VmRSS"] * kb,
        runs=int(raw["runs"]),
        shapes=dict(raw["shapes"]),
        settings=dict(raw.get("settings") or DEPLOYMENT),
        onnxruntime=str(raw["onnxruntime"]),
        malloc_trim=bool(raw.get("malloc_trim")),
        raw_kb={k: dict(raw[k]) for k in ("baseline", "untrimmed", "loaded", "end")},
    )


# ---- the calling side ------------------------------------------------------------------------------------------------
def write_baseline_graph(directory: str) -> str:
    """A one-node Identity graph (float[1] -> float[1]) for the worker's baseline session; reused when present."""
    path = os.path.join(directory, BASELINE_NAME)
    if os.path.isfile(path):
        return path
    import onnx
    from onnx import TensorProto, helper

    from hat.io import atomic_output

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(directory, exist_ok=True)
    with atomic_output(path) as tmp:
        onnx.save(model, tmp)
    return path


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure_exported(onnx_dir: str, name: str, runs: int = RUNS, timeout: float = 600.0,
                     settings: Optional[Dict[str, object]] = None) -> ProbeResult:
    """Measure graphs already exported to ``onnx_dir`` (``<name>_enc.onnx``, ``<name>_dec.onnx`` and their
    sidecars) in a fresh ``sys.executable`` process."""
    baseline = write_baseline_graph(onnx_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                             if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "hat.latency.memory_probe", "--onnx-dir", onnx_dir, "--name", name,
           "--baseline", baseline, "--runs", str(runs), "--settings", json.dumps(settings or {})]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"memory probe: worker for {name} ran past {timeout:.0f} s") from None
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        why = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        raise ProbeError(f"memory probe: worker for {name} failed: {why}")
    return result_of(json.loads(lines[-1]))


def measure_memory(cfg, opt, protocol, work_dir: str, runs: int = RUNS, timeout: float = 600.0,
                   settings: Optional[Dict[str, object]] = None) -> ProbeResult:
    """Export ``cfg`` with random weights at the protocol's shapes into ``work_dir/<key>`` (reused when already
    there) and measure its graphs in a fresh process (see the module doc for what the figure contains)."""
    from hat.latency.onnxruntime import export_onnx

    d = os.path.join(work_dir, cfg.key())
    os.makedirs(d, exist_ok=True)
    name = export_onnx(cfg, opt, protocol, d)
    return measure_exported(d, name, runs, timeout, settings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="memory probe worker: peak RSS of exported graphs in onnxruntime")
    p.add_argument("--onnx-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--baseline", required=True, help="a one-node graph for the baseline session")
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("--settings", default="{}", help="JSON: keys of DEPLOYMENT to override")
    a = p.parse_args(argv)
    try:
        settings = json.loads(a.settings)
        unknown = sorted(set(settings) - set(DEPLOYMENT))
        if unknown:
            raise ProbeError(f"memory probe: unknown setting(s) {', '.join(unknown)}")
        raw = worker(a.onnx_dir, a.name, a.baseline, a.runs, settings)
    except HatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(raw), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
