"""Export of trained SubTransformers to static-shape ONNX (encoder + one incremental decoder step) and RKNN.

    convert2onnx.py  -> hat.export.onnx   (graphs in hat.export.graphs, checks: op scan, onnx.checker, parity)
    convert2rknn.py  -> hat.export.rknn   (rknn-toolkit2 build, int8 calibration set, simulator check)
    hat.export.decode                      host side: source preparation, greedy/beam search over the exported
                                           graphs with onnxruntime (the model of the board runner)

Files (``<dir>`` is ``onnx-dir``, ``<name>`` the export name, ``<part>`` is ``enc`` or ``dec``)::

    <dir>/<name>_<part>.onnx                   the graph, static shapes
    <dir>/<name>_<part>.json                   sidecar: inputs/outputs (name, dtype, shape), shapes, SubConfig,
                                               special token ids, sha256 of the .onnx, export_id
    <rknn-dir>/<name>_<part>.<platform>.<precision>.rknn  (+ same name with .json)   convert2rknn.py

Every file is written with :func:`hat.io.atomic_output` (no partial file under a final name); one export writes all
its files under temporary names and moves them into place together at its end. Both sidecars carry the same
``export_id`` (a digest of the model's weights, SubConfig, shapes and token ids, :func:`hat.export.onnx.export_id`):
an encoder and a decoder that do not belong together (an export interrupted while it replaced an older one of the
same name) have different ids, and :func:`read_pair` refuses them. ``<name>`` is a plain file name (:func:`check_name`).
"""
from __future__ import annotations

import json
import os

from hat.errors import HatError

PARTS = ("enc", "dec")
SIDECAR_FORMAT = "hat-export/1"
# What the exported encoder / decoder-step graphs compute and how (ops, layouts): part of every latency protocol that
# times them (onnxruntime, the NPU), so numbers from other graphs are refused. Bump it with any change of
# hat/export/graphs.py that changes the graphs' nodes (tests/test_export.py pins the node counts per layer).
# 1: linear layers as MatMul (until 2026-11-29); 2: 1x1 Conv on NCHW activations, fused q/k/v, folded scales;
# 3: the decoder step's q/k/v and the cross k/v projections one Conv each, cache slot written by one add, 4-D lookups.
GRAPHS_VERSION = "3"


class ExportError(HatError):
    """Export failed for a reason the user can act on (shapes, ops, numerics, files)."""


class UnsupportedOpError(ExportError):
    """An op the NPU cannot run is in a graph."""


class ToolkitMissingError(ExportError):
    """rknn-toolkit2 (or onnxruntime) is not installed."""


def check_name(name: str, what: str = "export name") -> str:
    """``name`` as a plain file name inside onnx-dir (no directory part, not hidden), else one :class:`ExportError`."""
    bad = (not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name
           or (os.altsep and os.altsep in name) or "\0" in name or name != name.strip())
    if bad:
        raise ExportError(f"{what} {name!r} is not a plain file name (no '/', no leading '.' or spaces): the files "
                          f"are <onnx-dir>/<name>_enc.onnx and <name>_dec.onnx")
    return name


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
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"{path}: not a readable sidecar ({(str(e).splitlines() or [type(e).__name__])[0]}); "
                          f"run convert2onnx.py again") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ExportError(f"{path}: not a {SIDECAR_FORMAT} sidecar")
    return data


def read_pair(onnx_dir: str, name: str, parts=PARTS, check_sha: bool = True) -> dict:
    """part -> sidecar of ``parts`` of export ``name``, checked to belong together: every ``.onnx`` unchanged since its
    sidecar was written (sha256) and, when both parts are there, one ``export_id`` in both sidecars. The partner of a
    single part is checked when its sidecar exists. One :class:`ExportError` line otherwise."""
    from hat.io import sha256_file

    check_name(name)
    metas = {p: read_sidecar(onnx_dir, name, p) for p in parts}
    for p in PARTS:
        if p not in metas and os.path.isfile(sidecar_path(onnx_dir, name, p)):
            metas[p] = read_sidecar(onnx_dir, name, p)
    if check_sha:
        for p, meta in metas.items():
            path = onnx_path(onnx_dir, name, p)
            if not os.path.isfile(path):
                raise ExportError(f"ONNX graph not found: {path} (its sidecar is there; run convert2onnx.py again)")
            if sha256_file(path) != meta.get("sha256"):
                raise ExportError(f"{path} changed since convert2onnx.py wrote its sidecar (sha256 mismatch): "
                                  f"export again")
    if len(metas) == 2:
        ids = {p: metas[p].get("export_id") for p in PARTS}
        if not ids["enc"] or ids["enc"] != ids["dec"]:
            why = ("written before export ids" if not ids["enc"] or not ids["dec"]
                   else f"export ids {ids['enc'][:12]} vs {ids['dec'][:12]}")
            raise ExportError(f"{name}_enc and {name}_dec in {onnx_dir} are not from one export ({why}; an "
                              f"interrupted or partial re-export?): run convert2onnx.py --name {name} again for both "
                              f"graphs")
    return metas
