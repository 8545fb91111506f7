"""convert2onnx.py: export a trained SubTransformer to static-shape ONNX (the encoder and ONE incremental decoder step);
the graphs and their checks are :mod:`hat.export.onnx`."""
from __future__ import annotations

import sys
from typing import List, Optional

from hat.args import sub_config_from_args
from hat.export.args import add_export_args, export_parts, export_settings
from hat.config import parse_stage, stage_parser


def build_parser():
    p = stage_parser("Export a trained SubTransformer to static-shape ONNX (encoder + one decoder step).")
    p.add_argument("--configs", help="SubTransformer YAML (HAT *-subtransformer keys) or export YAML")
    p.add_argument("--sub-configs", help="export YAML (configs/<task>/convert_onnx/common.yml)")
    p.add_argument("--enc", action="store_true", help="export the encoder only")
    p.add_argument("--dec", action="store_true", help="export the decoder step only")
    add_export_args(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from hat.export import check_name
    from hat.export.onnx import check_opset, export_model, select_model, torch_threads

    argv = sys.argv[1:] if argv is None else argv
    args = parse_stage(build_parser(), argv, ("--configs", "--sub-configs"))
    source = args.configs or args.sub_configs or "command line"
    wanted = sub_config_from_args(args, source=source)
    if args.name is not None:
        check_name(args.name)
    check_opset(args.opset)  # before the checkpoint is loaded and anything traced
    with torch_threads(1):
        model, cfg = select_model(args.model_path, wanted, source)
        s = export_settings(args)
        name = args.name or f"sub-{cfg.key()}"
        print(f"| SubTransformer {cfg.key()} from {args.model_path}: batch {s.batch_size}, beam {s.beam}, "
              f"src-len {s.src_len}, tgt-len {s.tgt_len}, opset {s.opset}")
        export_model(model, args.onnx_dir, name, s, export_parts(args), checkpoint=args.model_path)
    return 0
