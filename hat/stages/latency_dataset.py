"""latency_dataset.py: sample SubTransformers from a space and measure each one itself on a backend.

    python latency_dataset.py --configs=configs/demo.de-en/latency_dataset/onnxruntime.yml [--lat-workers 2]

The YAML is HAT's latency_dataset layout (the space and model keys of the SuperTransformer plus ``lat-dataset-path``,
``lat-dataset-size``, ``latcpu``/``latgpu``, ``latiter``, ``latsilent``) with ``latency-backend`` choosing any
backend (cpu, gpu, onnxruntime, npu, npu-adb; HAT's ``--latcpu``/``--latgpu`` and the RK3588 fork's ``--latnpu``
choose cpu/gpu/npu, and one that names other hardware than ``latency-backend`` is an error) and the protocol keys
(``lat-estimator``, ``lat-pin``, ``lat-threads``, ...). Every row records the protocol it was measured with; rows
of another protocol are never appended to a file. ``npu`` times nothing here: it builds a bundle of RKNN models for
the board (hat/latency/board.py runs it there) and ``--collect RESULTS.jsonl`` merges the board's results into the
dataset; see :mod:`hat.latency.npu_bundle`. ``lat-block`` SubTransformers are measured together, their
``lat-passes`` passes interleaved (an interrupt loses at most the block in progress); ``lat-workers N`` measures N
blocks at a time, each process pinned to its own core (with ``lat-pin``). Runs without fairseq.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from hat.args import add_latency_args, backend_name, parse_args, stage_context
from dataclasses import replace

from hat.errors import ConfigError, HatError


def _memory_model(opt, protocol, backend: str):
    """Memory columns of a row from the memory model, at the backend's precision (fp16 on the NPU)."""
    from hat import memory

    return lambda cfg: memory.dataset_columns(cfg, opt, protocol, backend=backend)


# ---- parallel workers (lat-workers): one backend per process, each process on its own core ----------------------
_WORKER = {}


def _worker_init(cores, args, opt, protocol, name):
    import os

    core = cores.get()
    os.sched_setaffinity(0, {core})
    from hat.latency import backends

    _WORKER["backend"] = backends.make(name, args, opt, protocol, log=lambda *a, **k: None)


def _worker_measure(cfg_jsons):
    from hat.latency.protocol import measure_block
    from hat.space import SubConfig

    b = _WORKER["backend"]
    return measure_block(b, [SubConfig.from_json(c) for c in cfg_jsons], b.protocol)


def _blocks(todo, size: int):
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _measure_all(todo, args, opt, protocol, name, backend):
    """Yield (cfg, Measurement) for every config of ``todo``, ``lat-block`` configs at a time when the protocol
    takes its runs in several passes (interleaved, :func:`hat.latency.protocol.measure_block`), else one at a time
    (each row written as soon as it is measured): in this process, or in ``lat-workers`` processes (a block each)."""
    from hat.latency.protocol import measure_block

    n = int(args.lat_workers or 1)
    size = int(backend.protocol.block) if backend.protocol.passes > 1 else 1
    if not todo:  # a complete dataset: nothing to measure, no workers to start (or to find cores for)
        return
    if n <= 1:
        for block in _blocks(todo, size):
            yield from zip(block, measure_block(backend, block, backend.protocol))
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    cores = sorted(os.sched_getaffinity(0))
    if n > len(cores):
        raise ConfigError(f"lat-workers {n}: only {len(cores)} cores available to pin one worker each")
    if not backend.protocol.pin:
        raise ConfigError("lat-workers needs lat-pin: each worker measures pinned to its own core")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    for c in cores[-n:]:
        q.put(c)
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init,
                             initargs=(q, args, opt, protocol, name)) as ex:
        futures = {ex.submit(_worker_measure, [c.to_json() for c in block]): block for block in _blocks(todo, size)}
        for f in as_completed(futures):
            yield from zip(futures[f], f.result())


def main(argv: Optional[List[str]] = None) -> int:
    from tqdm import tqdm

    from hat.latency import backends, npu_bundle
    from hat.latency.dataset import DatasetWriter, sample_configs

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv, "Sample SubTransformers and measure each one itself (HAT's latency_dataset.py)",
                      hooks=(add_latency_args,))
    ctx = stage_context(args)
    space, opt = ctx.space, ctx.options
    protocol = replace(ctx.protocol, workers=max(1, int(args.lat_workers or 1)))
    memory_of = _memory_model(opt, protocol, "npu" if args.collect else backend_name(args))
    if args.collect:  # the board's results.jsonl (latency-backend npu) -> dataset rows, measured:board
        writer = DatasetWriter(args.lat_dataset_path)
        known = npu_bundle.known_configs(args.collect, args, space, args.lat_dataset_size, args.lat_seed)
        counts = npu_bundle.collect(args.collect, writer, known, protocol, memory_of)
        if not counts["added"] and not counts["already"]:
            raise HatError(f"--collect: no usable result line in {args.collect} ({counts['errors']} board errors, "
                           f"{counts['unknown']} unknown keys, {counts['bad']} unusable lines); nothing added to "
                           f"{args.lat_dataset_path}")
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
    proto = backend.protocol
    writer.check_protocol(proto)
    detail = f"; {backend.detail}" if getattr(backend, "detail", None) else ""
    print(f"| {len(writer.done)} rows already in {args.lat_dataset_path}; measuring {len(todo)} SubTransformers on "
          f"{backend.source} ({proto.describe()}{detail})", flush=True)
    bar = tqdm(total=len(todo), unit="config", file=sys.stderr, disable=not todo)
    try:  # an error or an interrupt is printed below the bar, not appended to it
        for cfg, m in _measure_all(todo, args, opt, protocol, name, backend):
            mem = memory_of(cfg)
            if "measured_memory_mb" in m.extra:
                from hat import memory

                mem.update(memory.measured_columns(m.extra["measured_memory_mb"], m.source))
            row = writer.add(cfg, m.row(), mem, backend.name, m.source, proto)
            if not args.latsilent:
                bar.write(f"{cfg.key()}: {m.summary()}")
            bar.update(1)
            bar.set_postfix(ms=f"{row['latency_mean_encoder'] + row['latency_mean_decoder']:.1f}")
    finally:
        bar.close()
    print(f"| {len(writer.done)} rows in {args.lat_dataset_path}")
    return 0
