"""latency_dataset.py: sample SubTransformers from a space and measure each one itself on a backend.

    python latency_dataset.py --configs=configs/demo.de-en/latency_dataset/onnxruntime.yml

The YAML is HAT's latency_dataset layout (the space and model keys of the SuperTransformer plus ``lat-dataset-path``,
``lat-dataset-size``, ``latcpu``/``latgpu``, ``latiter``, ``latsilent``) with ``latency-backend`` choosing any
backend (cpu, gpu, onnxruntime, npu, npu-adb). ``npu`` times nothing here: it builds a bundle of RKNN models for the
board (hat/latency/board.py runs it there) and ``--collect RESULTS.jsonl`` merges the board's results into the
dataset; see :mod:`hat.latency.backends`.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from hat.errors import ConfigError, HatError

BACKENDS = ("cpu", "gpu", "onnxruntime", "npu", "npu-adb")


def add_latency_args(parser):
    g = parser.add_argument_group("latency measurement (HAT's keys + ours)")
    names = {o for a in parser._actions for o in a.option_strings}
    add = lambda flag, **kw: g.add_argument(flag, **kw) if flag not in names else None
    add("--latcpu", action="store_true", help="measure on the CPU with torch (HAT)")
    add("--latgpu", action="store_true", help="measure on the GPU with torch (HAT)")
    add("--latnpu", action="store_true", help="measure a converted RKNN model on the board")
    add("--latiter", type=int, default=20, help="timed runs per SubTransformer (HAT)")
    add("--latsilent", action="store_true", help="no per-run printing (HAT)")
    add("--lat-warmup", type=int, default=5, help="untimed runs before timing")
    add("--lat-trim", type=float, default=0.1, help="share of fastest and of slowest runs dropped")
    add("--lat-src-len", type=int, default=30, help="source length of the dummy sentence (HAT: 30 WMT, 23 IWSLT)")
    add("--lat-tgt-len", type=int, default=30, help="decoder steps per run")
    add("--lat-threads", type=int, default=None, help="CPU threads for cpu/onnxruntime backends")
    add("--lat-vocab-size", type=int, default=None, help="vocabulary size when the data dir has no dictionary")
    add("--lat-dataset-path", default="latency_dataset/lat.csv", help="CSV to write (appended row by row)")
    add("--lat-dataset-size", type=int, default=200, help="number of sampled SubTransformers")
    add("--lat-seed", type=int, default=1, help="sampling seed")
    add("--latency-backend", choices=BACKENDS, default=None, help="backend (default: from latcpu/latgpu)")
    add("--lat-work-dir", default=None, help="where backends keep exported models (onnxruntime, npu)")
    add("--rknn-name", default=None, help="RKNN model to measure with --latnpu")
    add("--target-platform", default="rk3588", help="RKNN target platform (npu backends)")
    add("--npu-core-mask", default="auto", help="NPU core mask on the board (auto, 0, 1, 2, 0_1, 0_1_2)")
    add("--device-id", default=None, help="adb device id for the npu-adb backend")
    add("--lat-keep-models", action="store_true",
        help="keep the exported ONNX/RKNN files in lat-work-dir after measuring (onnxruntime, npu, npu-adb)")
    add("--collect", default=None, metavar="RESULTS.jsonl",
        help="merge the board runner's results (latency-backend npu) into lat-dataset-path instead of measuring")


def vocab_size(args) -> int:
    if args.lat_vocab_size:
        return int(args.lat_vocab_size)
    data = str(getattr(args, "data", "") or "").split(":")[0]
    src = getattr(args, "source_lang", None)
    cands = [os.path.join(data, f"dict.{src}.txt")] if src else []
    if os.path.isdir(data):
        cands += sorted(os.path.join(data, f) for f in os.listdir(data) if f.startswith("dict.") and f.endswith(".txt"))
    for path in cands:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return sum(1 for _ in f) + 4  # fairseq's bos, pad, eos, unk
    raise ConfigError(f"no dictionary in data dir {data!r}: give lat-vocab-size")


def backend_name(args) -> str:
    if args.latency_backend:
        return args.latency_backend
    if getattr(args, "latgpu", False):
        return "gpu"
    if getattr(args, "latcpu", False):
        return "cpu"
    raise ConfigError("choose a backend: latency-backend (cpu, gpu, onnxruntime, npu, npu-adb), latcpu or latgpu")


def protocol_of(args):
    from hat.latency.protocol import Protocol

    return Protocol(src_len=args.lat_src_len, tgt_len=args.lat_tgt_len, beam=int(getattr(args, "beam", 4) or 4),
                    warmup=args.lat_warmup, repeats=args.latiter, trim=args.lat_trim)


def make_backend(name: str, args, opt, protocol):
    if name in ("cpu", "gpu"):
        from hat.latency.torch_backend import TorchBackend

        return TorchBackend(opt, protocol, device="cuda" if name == "gpu" else "cpu", threads=args.lat_threads)
    try:
        from hat.latency import backends
    except ImportError:
        raise HatError(f"backend {name!r} is not available in this version") from None
    return backends.make(name, args, opt, protocol)


def main(argv: Optional[List[str]] = None) -> int:
    from tqdm import tqdm

    from hat.checkpoint import options_from_args, space_from_args
    from hat.fairseq_plugin.models import base_architecture
    from hat.latency.dataset import DatasetWriter, sample_configs
    from hat.latency.protocol import measure
    from hat.train import build_args

    argv = sys.argv[1:] if argv is None else argv
    args = build_args(argv, extra_parser_hook=add_latency_args, data_optional=True)
    base_architecture(args)
    space = space_from_args(args, source=args.configs or "command line")
    vocab = vocab_size(args)
    opt = options_from_args(args, vocab, vocab)
    protocol = protocol_of(args)
    memory_of = _memory_model(opt, protocol)
    if args.collect:  # the board's results.jsonl (latency-backend npu) -> dataset rows, measured:board
        from hat.latency import backends

        writer = DatasetWriter(args.lat_dataset_path)
        known = backends.known_configs(args.collect, args, space, args.lat_dataset_size, args.lat_seed)
        backends.collect(args.collect, writer, known, protocol, memory_of)
        print(f"| {len(writer.done)} rows in {args.lat_dataset_path}")
        return 0
    name = backend_name(args)
    if name == "npu":  # not timed here: a bundle of RKNN models for the board, and what to run there
        from hat.latency import backends

        writer = DatasetWriter(args.lat_dataset_path)
        todo = [c for c in sample_configs(space, args.lat_dataset_size, args.lat_seed) if c.key() not in writer.done]
        backends.make_bundle(args, opt, protocol, todo,
                             progress=lambda xs: tqdm(xs, unit="config", file=sys.stderr, disable=not xs), argv=argv)
        return 0
    backend = make_backend(name, args, opt, protocol)
    writer = DatasetWriter(args.lat_dataset_path)
    todo = [c for c in sample_configs(space, args.lat_dataset_size, args.lat_seed) if c.key() not in writer.done]
    detail = f"; {backend.detail}" if getattr(backend, "detail", None) else ""
    print(f"| {len(writer.done)} rows already in {args.lat_dataset_path}; measuring {len(todo)} SubTransformers on "
          f"{backend.source} (src {protocol.src_len}, tgt {protocol.tgt_len}, beam {protocol.beam}, "
          f"{protocol.warmup} warm-up + {protocol.repeats} timed runs, trim {protocol.trim:.0%}{detail})", flush=True)
    bar = tqdm(todo, unit="config", file=sys.stderr, disable=not todo)
    for cfg in bar:
        m = measure(backend, cfg, protocol)
        mem = memory_of(cfg)
        if "measured_memory_mb" in m.extra:
            mem["measured_memory_mb"] = m.extra["measured_memory_mb"]
        row = writer.add(cfg, m.row(), mem, backend.name, m.source)
        if not args.latsilent:
            bar.write(f"{cfg.key()}: {m.summary()}")
        bar.set_postfix(ms=f"{row['latency_mean_encoder'] + row['latency_mean_decoder']:.1f}")
    print(f"| {len(writer.done)} rows in {args.lat_dataset_path}")
    return 0


def _memory_model(opt, protocol):
    """Estimated memory columns from the memory model, where it is available."""
    try:
        from hat import memory
    except ImportError:
        return lambda cfg: {}
    columns = getattr(memory, "dataset_columns", None)
    return (lambda cfg: columns(cfg, opt, protocol)) if columns else (lambda cfg: {})


def measure_rknn(args) -> int:
    """Time a converted RKNN model (encoder + decoder step) on this board's NPU with the latency protocol."""
    import glob
    import json

    if not args.rknn_name:
        raise ConfigError("--latnpu needs --rknn-name NAME (the name given to convert2rknn.py)")
    try:
        import rknnlite.api  # noqa: F401  (present only on the board)
    except ImportError:
        raise HatError("no NPU board here: rknnlite (rknn-toolkit-lite2) is not installed; copy the .rknn files and "
                       "hat/latency/board.py to the board, or use latency-backend: npu-adb with a board on USB") from None
    from hat.latency import board

    files = {part: sorted(glob.glob(f"**/{args.rknn_name}*{part}*.rknn", recursive=True)) for part in ("enc", "dec")}
    if not files["enc"] or not files["dec"]:
        raise HatError(f"no RKNN encoder/decoder files named {args.rknn_name}*enc*/*dec*.rknn found")
    proto = protocol_of(args)
    entry = {"key": args.rknn_name}
    for part, key in (("enc", "encoder"), ("dec", "decoder")):
        meta = files[part][0][: -len(".rknn")] + ".json"
        inputs = json.load(open(meta)).get("inputs", []) if os.path.isfile(meta) else []
        inputs = [dict(i, layout="nchw") if len(i.get("shape", ())) == 4 else i for i in inputs]  # as exported
        entry[key] = {"file": os.path.abspath(files[part][0]), "inputs": inputs}
    bundle = {"protocol": proto.to_dict(), "models": [entry]}
    from hat.latency.board import _rknnlite, core_mask_value, measure_model, trimmed

    RKNNLite = _rknnlite()
    enc, dec = measure_model(RKNNLite, "/", entry, bundle["protocol"], core_mask_value(RKNNLite, args.npu_core_mask))
    (em, es), (dm, ds) = trimmed(enc, proto.trim), trimmed(dec, proto.trim)
    print(f"| {args.rknn_name}: encoder {em:.3f} ± {es:.3f} ms, decoder ({proto.tgt_len} steps) {dm:.3f} ± {ds:.3f} ms "
          f"[measured:board]")
    return 0
