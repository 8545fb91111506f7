"""``latency-backend npu-adb``: a board on USB, driven from this machine through rknn-toolkit2.

``init_runtime(target=...)`` over adb: ``eval_perf()`` gives the board's own time of one encoder call and of one
decoder step, and ``eval_memory()`` the model's memory on the board (:func:`perf_total_us` and
:func:`memory_total_bytes` read them from what the toolkit returns or prints). Source ``measured:board-adb``.

Every model has random weights (seeded), exported with :func:`hat.latency.onnxruntime.export_onnx` and built with
:func:`hat.latency.npu_bundle.build_rknn` into ``lat-work-dir`` (:class:`hat.latency.onnxruntime.WorkDir`).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from typing import Dict, Optional

from hat.errors import ConfigError, HatError
from hat.latency import npu_bundle
from hat.latency.onnxruntime import WorkDir, export_onnx
from hat.latency.protocol import Backend, Protocol
from hat.space import SubConfig

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PERF_RE = re.compile(r"Total\s+(?:Operator\s+Elapsed\s+(?:Per\s+Frame\s+)?)?Time\s*\(us\)\s*:\s*([0-9]+(?:\.[0-9]+)?)",
                      re.I)
_MEM_RE = re.compile(r"Total\s+Memory\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*(GiB|MiB|KiB|B)\b", re.I)
_UNITS = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _number(v) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _flatten(d, prefix=""):
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, name + ".")
        else:
            yield name, v


def perf_total_us(result) -> Optional[float]:
    """Total time of one inference (µs) from what ``RKNN.eval_perf`` returned or printed: its text
    (``Total Time(us): N`` with perf_debug off, ``Total Operator Elapsed Per Frame Time(us): N`` with it on) or a
    dict holding such text or a total-time number (µs, as every RKNN perf figure; ms if the key says so). None when
    no such figure is there."""
    if result is None:
        return None
    if isinstance(result, bytes):
        result = result.decode(errors="replace")
    if isinstance(result, str):
        m = _PERF_RE.search(_ANSI.sub("", result))
        return float(m.group(1)) if m else None
    if isinstance(result, dict):
        items = list(_flatten(result))
        for _, v in items:
            if isinstance(v, str) and perf_total_us(v) is not None:
                return perf_total_us(v)
        for k, v in items:
            kl = k.lower()
            if "total" in kl and "time" in kl and _number(v) is not None:
                return _number(v) * (1000.0 if kl.endswith(("_ms", "(ms)")) else 1.0)
    return None


def memory_total_bytes(result) -> Optional[float]:
    """Total memory (bytes) of a model on the board from what ``RKNN.eval_memory`` returned or printed."""
    if result is None:
        return None
    if isinstance(result, dict):
        for key in ("total_memory", "total_model_allocation"):
            v = result.get(key)
            if isinstance(v, dict):
                v = v.get("maximum_allocation")
            if _number(v) is not None:
                return _number(v)
        return None
    if isinstance(result, str):
        m = _MEM_RE.search(_ANSI.sub("", result))
        return float(m.group(1)) * _UNITS[m.group(2).lower()] if m else None
    return None


def _log_reason(log_path: str, since: int, step: str) -> str:
    """The toolkit's own reason for a failed ``step`` from its log (what it printed after byte ``since``)."""
    try:
        with open(log_path, errors="replace") as f:
            f.seek(since)
            lines = [_ANSI.sub("", ln).strip() for ln in f]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    for ln in lines:
        body = ln[2:] if ln.startswith("E ") else None
        if body and body.startswith(step + ":") and "Traceback" not in body and "WARN" not in body:
            return body[len(step) + 1:].strip()
    for ln in lines:
        if ln.startswith("adb:") or "no devices" in ln:
            return ln
    return ""


class AdbBackend(Backend):
    """A board on USB (adb), driven through rknn-toolkit2.

    :meth:`load` exports both graphs, builds them (fp16, ``target-platform``) and opens one runtime per graph on the
    board (``init_runtime(target=platform, device_id=..., perf_debug=False, eval_mem=False, core_mask=...)``). Each
    timed run asks the board: ``encoder`` adds one encoder ``eval_perf()`` total, and the decoder's time is ONE
    decoder-step ``eval_perf()`` total × ``tgt_len`` steps (the step graph has a fixed-size cache, so every step
    costs the same). The protocol's clock is the sum of these board figures, nothing measured on this machine.
    ``eval_perf`` is called with the toolkit's default ``fix_freq=True`` (CPU/NPU/DDR frequencies fixed).

    :meth:`memory` opens a second runtime per graph with ``eval_mem=True`` (the toolkit warns that memory
    evaluation affects performance, so it is kept out of the timed runtime) and reports
    ``measured_memory_mb`` = encoder + decoder totals of ``eval_memory()`` in MiB (both are loaded while decoding).

    ``toolkit`` is rknn-toolkit2's ``RKNN`` class (injected by tests; a board-free fake must say so in its name).
    """

    name = "npu-adb"
    source = "measured:board-adb"

    def __init__(self, opt, protocol: Protocol, platform: str = "rk3588", device_id: Optional[str] = None,
                 core_mask: str = "auto", work_dir: Optional[str] = None, keep: bool = False, toolkit=None, log=print):
        from hat.export.rknn import PLATFORMS
        from hat.latency import board

        if platform not in PLATFORMS:
            raise ConfigError(f"target-platform {platform!r} is not one of {', '.join(PLATFORMS)}")
        if core_mask not in board.CORE_MASKS:
            raise ConfigError(f"npu-core-mask must be one of {', '.join(board.CORE_MASKS)}, got {core_mask!r}")
        self.opt, self.protocol, self.platform, self.device_id = opt, protocol, platform, device_id
        self.RKNN = toolkit if toolkit is not None else npu_bundle.require_toolkit()
        self.core_mask = board.core_mask_value(self.RKNN, core_mask)
        self.work = WorkDir(work_dir, keep, "hat-lat-adb-", log)
        self.log = log
        self._now = 0.0
        where = f"device {device_id}" if device_id else "the one adb device"
        self.detail = (f"{platform} over adb ({where}), core mask {core_mask}, fp16; times are the board's eval_perf "
                       f"totals; decoder = one step's eval_perf total x {protocol.tgt_len} steps")

    def timer(self):
        return lambda: self._now

    # -- runtimes ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _quiet(self, h):
        """Everything the toolkit prints goes to the log: native output (file descriptors 1 and 2) and Python's
        sys.stdout / sys.stderr, whatever they are at the time (a test runner replaces them)."""
        from hat.export.rknn import quiet

        with quiet(h["log"]), open(h["log"], "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield

    def _size(self, h) -> int:
        try:
            return os.path.getsize(h["log"])
        except OSError:
            return 0

    def _runtime(self, h, part: str, eval_mem: bool):
        path = h["files"][part]
        with self._quiet(h):
            rk = self.RKNN()
            ret = rk.load_rknn(path)
        if ret != 0:
            self._release(h, rk)
            raise HatError(f"rknn-toolkit2 load_rknn failed for {path} (log: {h['log']})")
        since = self._size(h)
        exc = None
        try:
            with self._quiet(h):
                ret = rk.init_runtime(target=self.platform, device_id=self.device_id, perf_debug=False,
                                      eval_mem=eval_mem, core_mask=self.core_mask)
        except Exception as e:  # the toolkit raises (ValueError with its traceback) when no device answers
            ret, exc = -1, e
        if ret != 0:
            self._release(h, rk)
            reason = _log_reason(h["log"], since, "init_runtime")
            if not reason and exc is not None:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            dev = f" (device id {self.device_id})" if self.device_id else ""
            raise HatError(f"no {self.platform.upper()} board found through adb{dev}: "
                           f"{reason or f'init_runtime returned {ret}'} (log: {h['log']})")
        return rk

    def _release(self, h, rk):
        try:
            with self._quiet(h):
                rk.release()
        except Exception:
            pass

    def _call(self, h, part: str, what: str, fn):
        """Run ``fn`` (an eval_* call) quietly; returns (its result, the text it printed)."""
        since = self._size(h)
        try:
            with self._quiet(h):
                result = fn()
        except Exception as e:
            reason = _log_reason(h["log"], since, what) or (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise HatError(f"rknn-toolkit2 {what} failed for the {part} graph on the board: {reason} "
                           f"(log: {h['log']})") from None
        try:
            with open(h["log"], errors="replace") as f:
                f.seek(since)
                text = f.read()
        except OSError:
            text = ""
        return result, text

    def _perf_ms(self, h, part: str) -> float:
        rk = h["rt"][part]
        result, text = self._call(h, part, "eval_perf", lambda: rk.eval_perf(is_print=True))
        us = perf_total_us(result)
        if us is None:
            us = perf_total_us(text)
        if us is None:
            raise HatError(f"rknn-toolkit2 eval_perf gave no total time for the {part} graph (result "
                           f"{str(result)[:200]!r}; log: {h['log']})")
        return us / 1000.0

    # -- Backend ------------------------------------------------------------------------------------------------------
    def load(self, cfg: SubConfig):
        d = self.work.of(cfg)
        name = export_onnx(cfg, self.opt, self.protocol, d)
        built = npu_bundle.build_rknn(d, name, self.platform, d)
        h = {"cfg": cfg, "files": {p: os.path.join(d, built[p]["rknn"]) for p in ("enc", "dec")},
             "log": os.path.join(d, "board-adb.log"), "rt": {}, "step_ms": None}
        try:
            for part in ("enc", "dec"):
                h["rt"][part] = self._runtime(h, part, eval_mem=False)
        except BaseException:
            self.unload(h, keep_files=True)  # the error names the toolkit's log: it stays
            raise
        return h

    def encoder(self, h):
        self._now += self._perf_ms(h, "enc")

    def start_decoding(self, h):
        h["step_ms"] = None

    def decoder_step(self, h, step):
        if h["step_ms"] is None:  # one board figure per decoding run, for its tgt_len identical steps
            h["step_ms"] = self._perf_ms(h, "dec")
        self._now += h["step_ms"]

    def memory(self, h) -> Dict[str, float]:
        total = 0.0
        for part in ("enc", "dec"):
            rk = self._runtime(h, part, eval_mem=True)
            try:
                result, text = self._call(h, part, "eval_memory", lambda: rk.eval_memory(is_print=True))
            finally:
                self._release(h, rk)
            b = memory_total_bytes(result)
            if b is None:
                b = memory_total_bytes(text)
            if b is None:
                self.log(f"| {h['cfg'].key()}: eval_memory gave no total for the {part} graph "
                         f"(result {str(result)[:120]!r}); measured_memory_mb left empty")
                return {}
            total += b
        return {"measured_memory_mb": total / 2**20}

    def unload(self, h, keep_files: bool = False):
        for rk in h.get("rt", {}).values():
            self._release(h, rk)
        cfg = h.get("cfg")
        h.clear()
        if cfg is not None and not keep_files:
            self.work.done(cfg)
