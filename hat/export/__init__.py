"""Export of trained SubTransformers to static-shape ONNX (encoder + one incremental decoder step) and RKNN.

    convert2onnx.py  -> hat.export.onnx   (graphs in hat.export.graphs, checks: op scan, onnx.checker, parity)
    convert2rknn.py  -> hat.export.rknn   (rknn-toolkit2 build, int8 calibration set, simulator check)
    hat.export.decode                      host side: source preparation, greedy/beam search over the exported
                                           graphs with onnxruntime (the model of the board runner)

Files (``<dir>`` is ``onnx-dir``, ``<name>`` the export name, ``<part>`` is ``enc`` or ``dec``)::

    <dir>/<name>_<part>.onnx                   the graph, static shapes
    <dir>/<name>_<part>.json                   sidecar: inputs/outputs (name, dtype, shape), shapes, SubConfig,
                                               special token ids, sha256 of the .onnx
    <rknn-dir>/<name>_<part>.<platform>.<precision>.rknn  (+ same name with .json)   convert2rknn.py

Every file is written with :func:`hat.io.atomic_output` (no partial file under a final name).
"""
from __future__ import annotations

import json
import os

from hat.errors import HatError

PARTS = ("enc", "dec")
SIDECAR_FORMAT = "hat-export/1"


class ExportError(HatError):
    """Export failed for a reason the user can act on (shapes, ops, numerics, files)."""


class UnsupportedOpError(ExportError):
    """An op the NPU cannot run is in a graph."""


class ToolkitMissingError(ExportError):
    """rknn-toolkit2 (or onnxruntime) is not installed."""


def onnx_path(onnx_dir: str, name: str, part: str) -> str:
    return os.path.join(onnx_dir, f"{name}_{part}.onnx")


def sidecar_path(onnx_dir: str, name: str, part: str) -> str:
    return os.path.join(onnx_dir, f"{name}_{part}.json")


def rknn_path(rknn_dir: str, name: str, part: str, platform: str, precision: str) -> str:
    return os.path.join(rknn_dir, f"{name}_{part}.{platform}.{precision}.rknn")


def read_sidecar(onnx_dir: str, name: str, part: str) -> dict:
    path = sidecar_path(onnx_dir, name, part)
    if not os.path.isfile(path):
        raise ExportError(f"no exported {part} graph named '{name}' in {onnx_dir} ({os.path.basename(path)} missing; "
                          f"run convert2onnx.py first)")
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != SIDECAR_FORMAT:
        raise ExportError(f"{path}: not a {SIDECAR_FORMAT} sidecar")
    return data
