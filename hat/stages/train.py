"""train.py: SuperTransformer training (one SubTransformer sampled per update), or one SubTransformer; HAT's
``--latcpu/--latgpu/--latnpu`` measure instead of training.

``train.py --configs=A.yml [--sub-configs=B.yml] [--any-fairseq-flag value]``. As in HAT, a SubTransformer is
trained with ``--configs=<its *-subtransformer YAML> --sub-configs=<subtransformer/common.yml>``; giving
``--sub-configs`` turns on ``--train-subtransformer``. As in HAT, the checkpoints go to
``checkpoints/<the --configs path below configs/, without .yml>`` unless ``save-dir`` is given (e.g.
``checkpoints/wmt14.en-de/subtransformer/wmt14ende_npu@200ms``; convert2onnx.py looks there by default).
``-a=ARCH`` is fairseq's ``--arch`` (``train.py --rknn-name=NAME --latnpu -a=ARCH``, the RK3588 fork's command).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

from hat.args import add_latency_args, hat_save_dir, protocol_of, stage_context
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


RKNN_DIRS = (".", "onnx")  # where --rknn-name NAME is looked for (convert2rknn.py writes to onnx/ by default)


def find_rknn(rknn_name: str, platform: str) -> dict:
    """part -> the .rknn file convert2rknn.py built as ``NAME`` for ``platform`` (``<dir>/NAME_<part>.<platform>.
    <precision>.rknn``): in the directory ``rknn_name`` names (``onnx/NAME``), else in ``.``, ``onnx/`` and
    ``onnx/*/``. One :class:`HatError` line when there is none, or more than one build to choose from."""
    import glob

    folder, name = os.path.split(rknn_name)
    dirs = [folder] if folder else list(RKNN_DIRS) + sorted(glob.glob(os.path.join("onnx", "*", "")))
    files = {}
    for part in ("enc", "dec"):
        hits = sorted({os.path.normpath(f) for d in dirs
                       for f in glob.glob(os.path.join(glob.escape(d), f"{glob.escape(name)}_{part}.*.rknn"))
                       if os.path.basename(f).split(".")[1:2] == [platform]})
        if not hits:
            raise HatError(f"no RKNN {part} model named {name} for {platform} in {', '.join(d or '.' for d in dirs)}: "
                           f"build it with python convert2rknn.py --onnx-name={name} (after convert2onnx.py exported "
                           f"it), or give --rknn-name DIR/{name}")
        if len(hits) > 1:
            raise HatError(f"several RKNN {part} models named {name}: {', '.join(hits)}; give --rknn-name DIR/{name} "
                           f"and keep one build (precision) per directory")
        files[part] = hits[0]
    if os.path.dirname(files["enc"]) != os.path.dirname(files["dec"]):
        raise HatError(f"the encoder and decoder of {name} are in different directories ({files['enc']}, "
                       f"{files['dec']}): give --rknn-name DIR/{name}")
    return files


def rknn_entry(name: str, files: dict) -> dict:
    """The board runner's model entry (hat.latency.board.measure_model) for two converted graphs, as the npu bundle
    writes it (:func:`hat.latency.npu_bundle.model_entry`: inputs, outputs and the decode loop's shapes and token ids
    from convert2onnx.py's sidecars beside the .rknn files), with HAT's dummy source sentence (token 7, src-len - 1
    tokens + EOS, as HAT's latency_dataset.py)."""
    from hat.export import read_sidecar
    from hat.latency.npu_bundle import model_entry

    folder = os.path.dirname(files["enc"])
    for part in ("enc", "dec"):
        if not os.path.isfile(os.path.join(folder, f"{name}_{part}.json")):
            raise HatError(f"{os.path.join(folder, f'{name}_{part}.json')} (convert2onnx.py's sidecar: shapes, token "
                           f"ids) is not beside {files[part]}: copy it with the .rknn files")
    src_tokens = [7] * (int(read_sidecar(folder, name, "enc")["shapes"]["src_len"]) - 1)
    return model_entry(None, folder, name, {p: os.path.abspath(f) for p, f in files.items()}, src_tokens)


def measure_rknn(args) -> int:
    """``train.py --rknn-name NAME --latnpu -a ARCH`` on the board (the RK3588 fork's Testing command): time the RKNN
    model convert2rknn.py built as NAME (encoder + the decoder loop, tgt-len steps) on this board's NPU with the
    latency protocol; the shapes are the graphs' own (static). ``-a`` names the model family, as for fairseq: it must
    be a registered arch and is printed with the result."""
    from dataclasses import replace

    from hat.args import ARCHS
    from hat.latency.protocol import Measurement

    if not args.rknn_name:
        raise ConfigError("--latnpu needs --rknn-name NAME (the name given to convert2rknn.py)")
    if args.arch not in ARCHS:
        raise ConfigError(f"-a {args.arch}: not one of this project's architectures ({', '.join(sorted(ARCHS))})")
    files = find_rknn(args.rknn_name, args.target_platform)
    name = os.path.basename(args.rknn_name)
    entry = rknn_entry(name, files)
    d = entry["decode"]
    proto = protocol_of(args)
    graph = {"src_len": int(d["src_len"]), "tgt_len": int(d["tgt_len"]), "beam": int(d["beam"]),
             "batch": int(d["batch_size"])}
    flags = {"src_len": "lat-src-len", "tgt_len": "lat-tgt-len", "beam": "beam"}
    given = set(getattr(args, "given_keys", ()) or ())
    clash = [k for k, flag in flags.items() if flag.replace("-", "_") in given and getattr(proto, k) != graph[k]]
    if clash:
        raise ConfigError(f"{name} was exported with static shapes " + ", ".join(
            f"{flags[k]} {graph[k]}" for k in clash) + "; drop " + ", ".join(
            f"{flags[k]} {getattr(proto, k)}" for k in clash) + " (the graphs' shapes are measured)")
    try:
        import rknnlite.api  # noqa: F401  (present only on the board)
    except ImportError:
        raise HatError(f"no NPU board here: rknnlite (rknn-toolkit-lite2) is not installed; run this command on the "
                       f"RK3588 board with {os.path.dirname(files['enc']) or '.'}/{name}_* copied there, or use "
                       f"latency-backend: npu-adb with a board on USB") from None
    from hat.latency.board import _rknnlite, core_mask_value, measure_model

    RKNNLite = _rknnlite()
    proto = replace(proto, **graph).at("npu", "rknn-toolkit-lite2", machine=f"{args.target_platform.upper()} board")
    rec = measure_model(RKNNLite, "/", entry, proto.to_dict(), core_mask_value(RKNNLite, args.npu_core_mask))
    m = Measurement(rec["encoder_ms"], rec["decoder_ms"], proto, "measured:board", step_ms=rec["decoder_step_ms"])
    print(f"| {name} ({args.arch}): {m.summary()}")
    return 0


def _fairseq_argv(argv: List[str]) -> List[str]:
    """``-a=ARCH`` (the RK3588 fork's spelling) as ``--arch=ARCH``, so that the arch it names is the one used."""
    return ["--arch=" + tok[3:] if tok.startswith("-a=") else tok for tok in argv]


def _check_data(args) -> None:
    """A task's data dir that is not here: one line naming the command that fetches it (the paper tasks' data is
    HAT's preprocessed download, ``configs/<task>/get_preprocessed.sh``)."""
    from hat.args import data_source_hint

    data = str(args.data).split(":")[0]
    if os.path.isdir(data):
        return
    hint = data_source_hint(data)
    if hint:
        raise HatError(f"data directory {data} not found: {hint} downloads it (HAT's preprocessed data; "
                       f"--data DIR to use another copy)")


def _fp16_without_gpu(args) -> None:
    """The paper tasks' YAMLs train in fp16 (HAT's, for GPUs); fairseq's fp16 optimizer stops with a traceback on a
    machine without CUDA. There, train in fp32 and say so (a flag cannot unset a YAML's ``fp16: True``)."""
    import torch

    if torch.cuda.is_available():
        return
    for key in ("fp16", "memory_efficient_fp16"):
        if getattr(args, key, False):
            setattr(args, key, False)
            print(f"| {key.replace('_', '-')}: True, but this machine has no CUDA GPU: training in fp32 on the CPU",
                  file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    from hat.fairseq_plugin.args import build_args

    argv = _fairseq_argv(sys.argv[1:] if argv is None else list(argv))
    args = build_args(argv, extra_parser_hook=add_latency_args, data_optional=any(f in argv for f in LAT_FLAGS))
    if args.latnpu:
        return measure_rknn(args)
    if args.latcpu or args.latgpu:
        return measure_latency(args)
    from hat.fairseq_plugin.training import train

    _check_data(args)
    _fp16_without_gpu(args)
    if "save_dir" not in set(getattr(args, "given_keys", ()) or ()) and hat_save_dir(args.configs):
        args.save_dir = hat_save_dir(args.configs)
    train(args)
    return 0
