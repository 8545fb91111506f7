"""The latency backends by name (``latency-backend`` in latency_dataset.py), and :func:`make`, which builds one.

``cpu``, ``gpu``     torch eager on this machine (:mod:`hat.latency.torch_backend`); ``gpu`` synchronises CUDA before
                 each clock read. Sources ``measured:cpu`` / ``measured:gpu``.
``onnxruntime``  the exported graphs (static-shape encoder + ONE decoder step) in onnxruntime on this machine's CPU
                 (:mod:`hat.latency.onnxruntime`). Source ``measured:onnxruntime``.
``npu``          not a timing backend on this machine: a bundle of RKNN models for the board, run there by
                 ``hat/latency/board.py``, its ``results.jsonl`` merged back with ``--collect``
                 (:mod:`hat.latency.npu_bundle`). Source ``measured:board``.
``npu-adb``      a board on USB, driven from this machine through rknn-toolkit2's ``eval_perf`` / ``eval_memory``
                 (:mod:`hat.latency.adb`). Source ``extrapolated:board-adb`` (one measured decoder step x tgt-len).

Every exported model has random weights (seeded): latency does not depend on their values. Exported files go to
``lat-work-dir`` (a temporary directory by default), one subdirectory per SubTransformer key, are reused when already
there, and are removed after the SubTransformer is measured unless ``lat-keep-models`` is set.

The backend modules are imported only when their backend is made (torch, onnxruntime, rknn-toolkit2 are heavy or
optional).
"""
from __future__ import annotations

from dataclasses import replace

from hat.errors import ConfigError, HatError
from hat.latency.protocol import Backend, Protocol

NAMES = ("cpu", "gpu", "onnxruntime", "npu", "npu-adb")


def make(name: str, args, opt, protocol: Protocol, toolkit=None, log=print) -> Backend:
    """:func:`_build` the backend, then record on it the protocol as it applies it (``backend.protocol``: its name,
    version, this machine, and the threads it really uses)."""
    b = _build(name, args, opt, protocol, toolkit, log)
    threads = protocol.threads if protocol.threads is not None else getattr(b, "threads", None)
    b.protocol = replace(protocol, threads=threads).at(b.name, _version(b.name))
    return b


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    pkg = {"cpu": "torch", "gpu": "torch", "onnxruntime": "onnxruntime", "npu-adb": "rknn-toolkit2"}.get(name)
    try:
        return (version(pkg) if pkg == name else f"{pkg} {version(pkg)}") if pkg else ""
    except PackageNotFoundError:
        return f"{pkg} (version unknown)"


def _build(name: str, args, opt, protocol: Protocol, toolkit=None, log=print) -> Backend:
    """The timing backend ``name`` for latency_dataset.py / evo_search.py. ``args`` gives ``lat_threads``,
    ``lat_work_dir``, ``lat_keep_models``, ``target_platform``, ``device_id``, ``npu_core_mask`` (those a backend
    uses); ``toolkit``: rknn-toolkit2's RKNN class for npu-adb, injected by tests. ``npu`` times nothing here (see
    :mod:`hat.latency.npu_bundle`) and is refused with what to do instead."""
    keep = bool(getattr(args, "lat_keep_models", False))
    if name in ("cpu", "gpu"):
        from hat.latency.torch_backend import TorchBackend

        return TorchBackend(opt, protocol, device="cuda" if name == "gpu" else "cpu",
                            threads=protocol.threads)
    if name == "onnxruntime":
        from hat.latency.onnxruntime import OrtBackend

        return OrtBackend(opt, protocol, work_dir=args.lat_work_dir, threads=protocol.threads, keep=keep, log=log)
    if name == "npu-adb":
        from hat.latency.adb import AdbBackend

        return AdbBackend(opt, protocol, platform=args.target_platform, device_id=args.device_id,
                          core_mask=args.npu_core_mask, work_dir=args.lat_work_dir, keep=keep, toolkit=toolkit,
                          log=log)
    if name == "npu":
        raise HatError("latency-backend npu times nothing on this machine: latency_dataset.py builds a bundle for "
                       "the board with it (then board.py there, then --collect); for a board on USB use npu-adb")
    raise ConfigError(f"unknown latency backend {name!r}")
