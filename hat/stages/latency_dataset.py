"""latency_dataset.py: sample SubTransformers from a space and measure each one itself on a backend.

    python latency_dataset.py --configs=configs/demo.de-en/latency_dataset/onnxruntime.yml

The YAML is HAT's latency_dataset layout (the space and model keys of the SuperTransformer plus ``lat-dataset-path``,
``lat-dataset-size``, ``latcpu``/``latgpu``, ``latiter``, ``latsilent``) with ``latency-backend`` choosing any
backend (cpu, gpu, onnxruntime, npu, npu-adb). ``npu`` times nothing here: it builds a bundle of RKNN models for the
board (hat/latency/board.py runs it there) and ``--collect RESULTS.jsonl`` merges the board's results into the
dataset; see :mod:`hat.latency.npu_bundle`. Runs without fairseq.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from hat.args import add_latency_args, backend_name, parse_args, stage_context


def _memory_model(opt, protocol):
    """Estimated memory columns from the memory model."""
    from hat import memory

    return lambda cfg: memory.dataset_columns(cfg, opt, protocol)


def main(argv: Optional[List[str]] = None) -> int:
    from tqdm import tqdm

    from hat.latency import backends, npu_bundle
    from hat.latency.dataset import DatasetWriter, sample_configs
    from hat.latency.protocol import measure

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv, "Sample SubTransformers and measure each one itself (HAT's latency_dataset.py)",
                      hooks=(add_latency_args,))
    ctx = stage_context(args)
    space, opt, protocol = ctx.space, ctx.options, ctx.protocol
    memory_of = _memory_model(opt, protocol)
    if args.collect:  # the board's results.jsonl (latency-backend npu) -> dataset rows, measured:board
        writer = DatasetWriter(args.lat_dataset_path)
        known = npu_bundle.known_configs(args.collect, args, space, args.lat_dataset_size, args.lat_seed)
        npu_bundle.collect(args.collect, writer, known, protocol, memory_of)
        print(f"| {len(writer.done)} rows in {args.lat_dataset_path}")
        return 0
    name = backend_name(args)
    writer = DatasetWriter(args.lat_dataset_path)
    todo = [c for c in sample_configs(space, args.lat_dataset_size, args.lat_seed) if c.key() not in writer.done]
    if name == "npu":  # not timed here: a bundle of RKNN models for the board, and what to run there
        npu_bundle.make_bundle(args, opt, protocol, todo,
                               progress=lambda xs: tqdm(xs, unit="config", file=sys.stderr, disable=not xs),
                               argv=argv)
        return 0
    backend = backends.make(name, args, opt, protocol)
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
