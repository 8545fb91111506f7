"""The export keys: convert2onnx.py and convert2rknn.py read one ``configs/<task>/convert_onnx/common.yml``."""
from __future__ import annotations

from hat.args import add_sub_config_args
from hat.export.onnx import DEFAULT_OPSET, ExportSettings


def add_export_args(parser) -> None:
    """Keys shared by convert2onnx.py and convert2rknn.py (one convert_onnx/common.yml serves both), plus the
    SubTransformer keys so that an architecture YAML can be passed with --configs."""
    g = parser.add_argument_group("export (configs/<task>/convert_onnx/*.yml)")
    g.add_argument("--model-path", help="train.py checkpoint (SubTransformer's own, or a SuperTransformer's)")
    g.add_argument("--onnx-dir", default="onnx", help="where <name>_enc.onnx / <name>_dec.onnx (+ .json) go")
    g.add_argument("--name", help="export name (default: sub-<SubTransformer config key>)")
    g.add_argument("--batch-size", type=int, default=1, help="sentences per encoder call (static)")
    g.add_argument("--src-len", type=int, default=32, help="source tokens per sentence incl. EOS (static)")
    g.add_argument("--tgt-len", type=int, default=32,
                   help="decoder cache slots = most target tokens incl. EOS (static)")
    g.add_argument("--beam", type=int, default=4, help="hypotheses per sentence; decoder rows = batch-size * beam")
    g.add_argument("--lenpen", type=float, default=1.0, help="length penalty recorded for the decoding loop")
    g.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset (14 up to the highest torch's exporter knows)")
    g.add_argument("--simplify", default="auto", choices=["auto", "no"],
                   help="auto: run onnxslim/onnxsim if installed")
    r = parser.add_argument_group("RKNN (convert2rknn.py)")
    r.add_argument("--target-platform", default="rk3588", help="rk3588 (default), rk3576, rk3566, rk3568, rk3562")
    r.add_argument("--precision", default="fp16", choices=["fp16", "int8"], help="fp16 (default) or int8")
    r.add_argument("--rknn-dir", help="where .rknn files go (default: onnx-dir)")
    r.add_argument("--data", help="binarized data dir (int8 calibration and sample inputs from its valid split)")
    r.add_argument("--calib-split", default="valid", help="split the calibration set is drawn from")
    r.add_argument("--calib-size", type=int, default=16, help="calibration samples per graph (int8)")
    r.add_argument("--source-lang", help="default: inferred from the data dir's file names")
    r.add_argument("--target-lang", help="default: inferred from the data dir's file names")
    h = parser.add_argument_group("SubTransformer (HAT keys, usually from --configs=<arch>.yml)")
    add_sub_config_args(h)


def export_settings(args) -> ExportSettings:
    return ExportSettings(batch_size=args.batch_size, src_len=args.src_len, tgt_len=args.tgt_len, beam=args.beam,
                          opset=args.opset, simplify=args.simplify, lenpen=args.lenpen)


def export_parts(args) -> tuple:
    """``--enc`` / ``--dec`` (both or neither: the two graphs)."""
    if args.enc and not args.dec:
        return ("enc",)
    if args.dec and not args.enc:
        return ("dec",)
    return ("enc", "dec")
