"""convert2onnx.py: export a trained SubTransformer to static-shape ONNX (the encoder and ONE incremental decoder step);
the graphs and their checks are :mod:`hat.export.onnx`.

``--configs=<arch>.yml --sub-configs=configs/<task>/convert_onnx/common.yml``: the SubTransformer train.py trained
from that architecture file (``model-path`` defaults to HAT's save dir of it, ``checkpoints/<the --configs path below
configs/>/checkpoint_best.pt``). ``--configs=configs/<task>/convert_onnx/super.yml``: the downloaded SuperTransformer
(its largest SubTransformer, or the one ``--sub-configs``/flags describe), exported under the name the RK3588
fork's ``convert2rknn.py --onnx-name=<wmt14_en_de|...>`` reads.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from hat.args import hat_save_dir, sub_config_from_args
from hat.config import parse_stage, stage_parser
from hat.errors import CheckpointError
from hat.export.args import add_export_args, export_parts, export_settings

CONFIG_FLAGS = ("--configs", "--sub-configs")


def build_parser():
    p = stage_parser("Export a trained SubTransformer to static-shape ONNX (encoder + one decoder step).")
    p.add_argument("--configs", help="SubTransformer YAML (HAT *-subtransformer keys) or export YAML")
    p.add_argument("--sub-configs", help="export YAML (configs/<task>/convert_onnx/common.yml)")
    p.add_argument("--enc", action="store_true", help="export the encoder only")
    p.add_argument("--dec", action="store_true", help="export the decoder step only")
    add_export_args(p)
    return p


def fork_argv(argv: List[str]) -> List[str]:
    """The RK3588 fork's README writes ``--sub-configs==configs/...`` (a doubled '='): read as ``--sub-configs=``."""
    out = []
    for tok in argv:
        flag, eq, val = tok.partition("=")
        if eq and flag in CONFIG_FLAGS and val.startswith("=") and not os.path.exists(val):
            tok = f"{flag}={val[1:]}"
        out.append(tok)
    return out


def default_model_path(args) -> Optional[str]:
    """Where train.py saved the SubTransformer of ``--configs`` (HAT's save dir + checkpoint_best.pt), when
    ``--configs`` is an architecture file under configs/ and no model-path was given."""
    if args.model_path or not args.configs:
        return args.model_path
    from hat.config import load_yaml

    if not any(k.endswith("-subtransformer") for k in load_yaml(args.configs)):
        return None
    folder = hat_save_dir(args.configs)
    return os.path.join(folder, "checkpoint_best.pt") if folder else None


def missing_checkpoint(args) -> str:
    """One line: the checkpoint that is not here, and the command that makes or fetches it."""
    from hat.download import DownloadError, load_registry

    path = args.model_path
    try:
        entries = load_registry().values()
    except DownloadError:
        entries = ()
    for e in entries:
        if e.filename == os.path.basename(path):
            dest = os.path.dirname(path) or "."
            extra = "" if os.path.normpath(dest) == "downloaded_models" else f" --dest {dest}"
            return (f"checkpoint not found: {path}: python download_model.py --model-name={e.name}{extra} "
                    f"downloads it (HAT's {e.kind})")
    if args.configs and path == os.path.join(hat_save_dir(args.configs) or "", "checkpoint_best.pt"):
        task = os.path.normpath(args.configs).split(os.sep)[1]
        common = os.path.basename(args.sub_configs or "")  # convert_onnx/common64.yml -> subtransformer/common64.yml
        common = common if common.startswith("common") else "common.yml"
        return (f"checkpoint not found: {path}: train it with python train.py --configs={args.configs} "
                f"--sub-configs=configs/{task}/subtransformer/{common} (or give --model-path)")
    return f"checkpoint not found: {path}"


def main(argv: Optional[List[str]] = None) -> int:
    from hat.export import check_name
    from hat.export.onnx import check_opset, export_model, select_model, torch_threads

    argv = fork_argv(sys.argv[1:] if argv is None else list(argv))
    args = parse_stage(build_parser(), argv, CONFIG_FLAGS)
    source = args.configs or args.sub_configs or "command line"
    wanted = sub_config_from_args(args, source=source)
    if args.name is not None:
        check_name(args.name)
    check_opset(args.opset)  # before the checkpoint is loaded and anything traced
    args.model_path = default_model_path(args)
    if args.model_path and not os.path.exists(args.model_path):
        raise CheckpointError(missing_checkpoint(args))
    with torch_threads(1):
        model, cfg = select_model(args.model_path, wanted, source)
        s = export_settings(args)
        name = args.name or f"sub-{cfg.key()}"
        print(f"| SubTransformer {cfg.key()} from {args.model_path}: batch {s.batch_size}, beam {s.beam}, "
              f"src-len {s.src_len}, tgt-len {s.tgt_len}, opset {s.opset}")
        export_model(model, args.onnx_dir, name, s, export_parts(args), checkpoint=args.model_path)
    return 0
