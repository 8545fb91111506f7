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

Every file is written under a temporary name and moved into place once complete (no partial file under a final name).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager

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


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(final_path: str):
    """Yields a temporary path in the final directory; on success it is moved to ``final_path`` (os.replace), on any
    error it is removed, so ``final_path`` is either the old file, absent, or complete."""
    d = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(d, exist_ok=True)
    base = os.path.basename(final_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial", dir=d)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600; a finished file gets the usual mode
        os.replace(tmp, final_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")


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
