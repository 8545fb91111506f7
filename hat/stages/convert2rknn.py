"""convert2rknn.py: exported ONNX graphs -> RKNN models for the Rockchip NPU (rknn-toolkit2), checked in its simulator
with ``--verify``; the build is :mod:`hat.export.rknn`."""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from hat.export.args import add_export_args, export_parts
from hat.config import parse_stage, stage_parser
from hat.errors import ConfigError, HatError


def build_parser():
    p = stage_parser("Build RKNN models from the ONNX graphs convert2onnx.py wrote (rknn-toolkit2).")
    p.add_argument("--configs", help="export YAML (configs/<task>/convert_onnx/common.yml)")
    p.add_argument("--sub-configs", help="second YAML, read after --configs")
    p.add_argument("--onnx-name", help="export name NAME of <onnx-dir>/NAME_enc.onnx / NAME_dec.onnx (default: name)")
    p.add_argument("--enc", action="store_true", help="the encoder only")
    p.add_argument("--dec", action="store_true", help="the decoder step only")
    p.add_argument("--verify", action="store_true", help="compare the simulator with onnxruntime on sample inputs")
    p.add_argument("--verify-samples", type=int, default=4, help="graph calls compared by --verify")
    add_export_args(p)
    return p


def export_command(name: str) -> str:
    """The convert2onnx.py command whose export YAML names ``name`` (configs/<task>/convert_onnx/*.yml with
    ``name: NAME``, e.g. the paper tasks' super.yml), else the generic one."""
    import glob

    from hat.config import load_yaml

    for path in sorted(glob.glob(os.path.join("configs", "*", "convert_onnx", "*.yml"))):
        try:
            if load_yaml(path).get("name") == name:
                return f"python convert2onnx.py --configs={path}"
        except HatError:
            continue
    if name.startswith("sub-"):  # convert2onnx.py's default name: sub-<key> of an architecture file (+ common64's qkv)
        from hat.space import SubConfig

        for arch in sorted(glob.glob(os.path.join("configs", "*", "subtransformer", "*.yml"))):
            try:
                d = {k: v for k, v in load_yaml(arch).items() if k.endswith("-subtransformer")}
                for common, qkv in (("common64", 64), ("common", None)):
                    if d and SubConfig.from_hat_dict(dict(d, **({"qkv-dim-subtransformer": qkv} if qkv else {})),
                                                     source=arch).key() == name[4:]:
                        task = arch.split(os.sep)[1]
                        return (f"python convert2onnx.py --configs={arch} "
                                f"--sub-configs=configs/{task}/convert_onnx/{common}.yml")
            except HatError:
                continue
    return f"python convert2onnx.py --configs=<arch>.yml --sub-configs=<convert_onnx/common.yml> --name {name}"


def main(argv: Optional[List[str]] = None) -> int:
    from hat.export import check_name, sidecar_path
    from hat.export.rknn import PLATFORMS, build_part, require_rknn

    argv = sys.argv[1:] if argv is None else argv
    args = parse_stage(build_parser(), argv, ("--configs", "--sub-configs"))
    name = args.onnx_name or args.name
    if not name:
        raise ConfigError("--onnx-name NAME is required (the name convert2onnx.py exported under)")
    check_name(name)
    if args.target_platform not in PLATFORMS:
        raise ConfigError(f"target-platform {args.target_platform!r} is not one of {', '.join(PLATFORMS)}")
    for part in export_parts(args):  # the exported graphs first: what to run when they are not there
        if not os.path.isfile(sidecar_path(args.onnx_dir, name, part)):
            raise HatError(f"no exported {part} graph named {name!r} in {args.onnx_dir} "
                           f"({os.path.basename(sidecar_path(args.onnx_dir, name, part))} missing): "
                           f"{export_command(name)} exports it")
    require_rknn()
    for part in export_parts(args):
        build_part(args.onnx_dir, name, part, args.target_platform, args.precision, args.rknn_dir or args.onnx_dir,
                   data_dir=args.data, split=args.calib_split, calib_size=args.calib_size, verify=args.verify,
                   verify_samples=args.verify_samples, src_lang=args.source_lang, tgt_lang=args.target_lang)
    return 0
