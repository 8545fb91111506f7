"""train.py: SuperTransformer training (one SubTransformer sampled per update), or one SubTransformer; HAT's
``--latcpu/--latgpu/--latnpu`` measure instead of training.

``train.py --configs=A.yml [--sub-configs=B.yml] [--any-fairseq-flag value]``. As in HAT, a SubTransformer is
trained with ``--configs=<its *-subtransformer YAML> --sub-configs=<subtransformer/common.yml>``; giving
``--sub-configs`` turns on ``--train-subtransformer``.
"""
from __future__ import annotations

import sys
from typing import List, Optional

import logging

from hat.args import add_latency_args, protocol_of, stage_context
from hat.errors import ConfigError, HatError

LAT_FLAGS = ("--latcpu", "--latgpu", "--latnpu")

# fairseq's speech task logs "Please install tensorboardX" when fairseq is imported; distributed training workers are
# spawned processes that import this module (through train.py, their __main__) before fairseq: quiet there too
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)


def measure_latency(args) -> int:
    """HAT's ``train.py --latcpu/--latgpu``: measure the SubTransformer the configs describe (the largest of the space
    when none) with the latency protocol, instead of training."""
    from hat.latency.protocol import measure
    from hat.latency.torch_backend import TorchBackend

    ctx = stage_context(args)
    cfg = ctx.sub_config or ctx.space.largest()
    backend = TorchBackend(ctx.options, ctx.protocol, device="cuda" if args.latgpu else "cpu",
                           threads=args.lat_threads)
    m = measure(backend, cfg, ctx.protocol)
    print(f"| SubTransformer {cfg.key()}: {m.summary()}")
    return 0


def measure_rknn(args) -> int:
    """``train.py --latnpu --rknn-name NAME`` on the board: time a converted RKNN model (encoder + decoder step) on
    this board's NPU with the latency protocol."""
    import glob
    import json
    import os

    if not args.rknn_name:
        raise ConfigError("--latnpu needs --rknn-name NAME (the name given to convert2rknn.py)")
    try:
        import rknnlite.api  # noqa: F401  (present only on the board)
    except ImportError:
        raise HatError("no NPU board here: rknnlite (rknn-toolkit-lite2) is not installed; copy the .rknn files and "
                       "hat/latency/board.py to the board, or use latency-backend: npu-adb with a board on USB") from None
    from hat.latency.board import _rknnlite, core_mask_value, measure_model, trimmed

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
    RKNNLite = _rknnlite()
    enc, dec = measure_model(RKNNLite, "/", entry, proto.to_dict(), core_mask_value(RKNNLite, args.npu_core_mask))
    (em, es), (dm, ds) = trimmed(enc, proto.trim), trimmed(dec, proto.trim)
    print(f"| {args.rknn_name}: encoder {em:.3f} ± {es:.3f} ms, decoder ({proto.tgt_len} steps) {dm:.3f} ± {ds:.3f} ms "
          f"[measured:board]")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from hat.fairseq_plugin.args import build_args

    argv = sys.argv[1:] if argv is None else argv
    args = build_args(argv, extra_parser_hook=add_latency_args, data_optional=any(f in argv for f in LAT_FLAGS))
    if args.latnpu:
        return measure_rknn(args)
    if args.latcpu or args.latgpu:
        return measure_latency(args)
    from hat.fairseq_plugin.training import train

    train(args)
    return 0
