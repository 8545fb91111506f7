"""``latency-backend npu-adb``: a board on USB, driven from this machine through rknn-toolkit2.

``init_runtime(target=...)`` over adb: ``eval_perf()`` gives the board's own time of one encoder call and of one
decoder step, and ``eval_memory()`` the model's memory on the board (:func:`perf_total_us` and
:func:`memory_total_bytes` read them from what the toolkit returns). The encoder figure is measured; the decoder
figure is ONE measured step times ``tgt_len`` (the step graph has fixed shapes, so every step costs the same, but
the figure is an extrapolation, not a decode loop): rows carry the source ``extrapolated:board-adb``.
``hat/latency/board.py`` (the ``npu`` backend) runs the real decode loop on the board instead.

What rknn-toolkit2 2.5.0 returns (``rknn/api/rknn.py`` of the installed wheel; the return values below were checked
by running the toolkit's own compiled ``RKNNBase.eval_perf`` / ``eval_memory`` against a stand-in runtime, since no
board is at hand):

* ``RKNN.eval_perf(is_print=True, fix_freq=True)`` (rknn.py lines 295-302) is documented as returning
  "Performance Result (dict)" (line 300); ``RKNNBase`` builds such a dict as ``{'string': <report>, 'layers': {...},
  'total_time': ...}`` (``_collect_hardware_perf_detail``), but what ``eval_perf`` itself returns in 2.5.0 is the
  report text: the CPU/NPU/DDR frequency lists, then ``Total Time(us): N`` and ``FPS: F`` when the runtime was
  initialised with ``perf_debug=False``, or the runtime's per-layer table ending with ``Total Operator Elapsed Per
  Frame Time(us): N`` when ``perf_debug=True``. Per-layer times need ``init_runtime(perf_debug=True)`` (with it off the
  toolkit says "You can set perf_debug to True in init_runtime to get more detail performance information!"), and
  with it on it warns "The performance result is just for debugging, may worse than actual performance!". So the
  timed runtime keeps ``perf_debug=False`` and reads ``Total Time(us)``; :meth:`AdbBackend.profile_layers` opens a
  separate ``perf_debug=True`` runtime for the per-layer table, which is saved, never used as the latency.
  :func:`perf_total_us` reads both the text and the documented dict.
* ``RKNN.eval_memory(is_print=True)`` (rknn.py lines 304-310, "memory_detail (Dict)", line 308) returns
  ``{'weight_memory': B, 'internal_memory': B, 'other_memory': B, 'total_memory': B}`` in bytes (ints); it needs the
  runtime initialised with ``eval_mem=True`` (rknn.py line 269: "it will affect performance").
* ``load_rknn`` (lines 241-247) and ``init_runtime`` (lines 261-281) return 0 on success, -1 on failure; ``core_mask``
  takes the class constants ``NPU_CORE_AUTO`` 0, ``NPU_CORE_0`` 1, ``NPU_CORE_1`` 2, ``NPU_CORE_2`` 4,
  ``NPU_CORE_0_1`` 3, ``NPU_CORE_0_1_2`` 7 (lines 25-31).

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

SOURCE = "extrapolated:board-adb"  # encoder measured by eval_perf; decoder = one measured step x tgt_len

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TOTAL_RE = re.compile(r"Total\s+Time\s*\(us\)\s*:\s*([0-9]+(?:\.[0-9]+)?)", re.I)  # perf_debug=False
_DEBUG_TOTAL_RE = re.compile(r"Total\s+Operator\s+Elapsed\s+Per\s+Frame\s+Time\s*\(us\)\s*:\s*([0-9]+(?:\.[0-9]+)?)",
                             re.I)  # perf_debug=True: the sum of the per-layer times (a debugging figure)
_MEM_RE = re.compile(r"Total\s+Memory\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*(GiB|MiB|KiB|B)\b", re.I)
_UNITS = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _number(v) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def perf_total_us(result, debug: bool = False) -> Optional[float]:
    """Total time of one inference (µs) from what ``RKNN.eval_perf`` returned: its report text (2.5.0) or the
    documented dict (``total_time`` when it is set, else its ``string`` report). Without ``debug`` only the
    ``Total Time(us)`` of a ``perf_debug=False`` runtime counts; with it, the per-layer sum ``Total Operator Elapsed Per
    Frame Time(us)`` of a ``perf_debug=True`` runtime is read instead. None when no such figure is there."""
    if result is None:
        return None
    if isinstance(result, bytes):
        result = result.decode(errors="replace")
    if isinstance(result, str):
        m = (_DEBUG_TOTAL_RE if debug else _TOTAL_RE).search(_ANSI.sub("", result))
        return float(m.group(1)) if m else None
    if isinstance(result, dict):
        total = _number(result.get("total_time"))
        if total is not None and total > 0:
            return total
        return perf_total_us(result.get("string"), debug)
    return None


def memory_total_bytes(result) -> Optional[float]:
    """Total memory (bytes) of a model on the board from what ``RKNN.eval_memory`` returned: 2.5.0's dict
    (``total_memory``), the ``total_model_allocation`` of RKNN-Toolkit2 1.x's documented dict, or the printed
    ``Total Memory: N MiB`` line. None when no total is there."""
    if result is None:
        return None
    if isinstance(result, dict):
        for key in ("total_memory", "total_model_allocation"):
            v = _number(result.get(key))
            if v is not None:
                return v
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
    board (``init_runtime(target=platform, device_id=..., perf_debug=False, eval_mem=False, core_mask=...)``:
    ``perf_debug`` off, so that ``eval_perf`` reports the board's whole-graph ``Total Time(us)``, not the slower
    per-layer debugging run). Each timed run asks the board: ``encoder`` adds one encoder ``eval_perf()`` total
    (measured), and the decoder's time is ONE decoder-step ``eval_perf()`` total × ``tgt_len`` steps (extrapolated:
    the step graph has a fixed-size cache, so every step costs the same, but no decode loop runs). Hence the source
    :data:`SOURCE` (``extrapolated:board-adb``). The protocol's clock is the sum of these board figures, nothing
    measured on this machine. ``eval_perf`` is called with the toolkit's default ``fix_freq=True`` (CPU/NPU/DDR
    frequencies fixed).

    :meth:`memory` opens a second runtime per graph with ``eval_mem=True`` (the toolkit warns that memory
    evaluation affects performance, so it is kept out of the timed runtime) and reports
    ``measured_memory_mb`` = encoder + decoder ``total_memory`` of ``eval_memory()`` in MiB (both are loaded while
    decoding). :meth:`profile_layers` (optional) saves the per-layer tables of a ``perf_debug=True`` runtime.

    ``toolkit`` is rknn-toolkit2's ``RKNN`` class (injected by tests; a board-free fake must say so in its name).
    """

    name = "npu-adb"
    source = SOURCE

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
        self.preflight()  # before anything is exported or built
        self.work = WorkDir(work_dir, keep, "hat-lat-adb-", log)
        self.log = log
        self._now = 0.0
        where = f"device {device_id}" if device_id else "the one adb device"
        self.detail = (f"{platform} over adb ({where}), core mask {core_mask}, fp16; encoder: the board's eval_perf "
                       f"total [measured:board-adb]; decoder: one step's eval_perf total x {protocol.tgt_len} steps "
                       f"[extrapolated:board-adb]")

    def timer(self):
        return lambda: self._now

    def preflight(self) -> None:
        """Is a board there? The toolkit's device list (``RKNN().list_devices()``: the adb and ntb devices, through
        the adb it ships) is asked once, before any export or build; no board (or not ``device_id``) is one
        :class:`HatError` line. A toolkit without ``list_devices`` (a board-free stand-in) is not asked."""
        import io
        import tempfile

        if not callable(getattr(self.RKNN, "list_devices", None)):
            return
        with tempfile.TemporaryDirectory(prefix="hat-adb-preflight-") as d:
            log_path = os.path.join(d, "list_devices.log")
            from hat.export.rknn import quiet

            rk, exc, found = None, None, None
            try:
                with quiet(log_path), contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    rk = self.RKNN()
                    found = rk.list_devices()
            except Exception as e:  # adb missing or failing: the toolkit raises with its traceback in the message
                exc = e
            finally:
                if rk is not None:
                    try:
                        with quiet(log_path):
                            rk.release()
                    except Exception:
                        pass
            why = _log_reason(log_path, 0, "list_devices")
        if exc is not None:
            why = why or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise HatError(f"no {self.platform.upper()} board found through adb: the toolkit's device list failed "
                           f"({why}); nothing was exported")
        if not (isinstance(found, (tuple, list)) and len(found) == 2):
            return  # not the (adb devices, ntb devices) of rknn-toolkit2 2.x: no verdict; init_runtime will tell
        adb_devices, ntb_devices = list(found[0] or []), list(found[1] or [])
        devices = adb_devices + [d for d in ntb_devices if d not in adb_devices]
        if not devices:
            raise HatError(f"no {self.platform.upper()} board found through adb: the toolkit's device list is empty "
                           f"(connect the board by USB and check `adb devices`); nothing was exported")
        if self.device_id and self.device_id not in devices:
            raise HatError(f"no {self.platform.upper()} board with device id {self.device_id} found through adb "
                           f"(connected: {', '.join(devices)}); nothing was exported")

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

    def _runtime(self, h, part: str, eval_mem: bool, perf_debug: bool = False):
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
                ret = rk.init_runtime(target=self.platform, device_id=self.device_id, perf_debug=perf_debug,
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
        if us is None:  # the report it printed (the same text, in 2.5.0)
            us = perf_total_us(text)
        if us is None:
            raise HatError(f"rknn-toolkit2 eval_perf gave no 'Total Time(us)' for the {part} graph (result "
                           f"{str(result)[:200]!r}; log: {h['log']})")
        return us / 1000.0

    def profile_layers(self, h) -> Dict[str, str]:
        """The board's per-layer times of each graph: a ``perf_debug=True`` runtime (what per-layer timing needs;
        the toolkit warns that it is slower than the real run) and its ``eval_perf()`` report, written to
        ``<part>.perf_debug.txt`` in the model's work directory. Returns part -> file. The latency figures never
        come from here."""
        out = {}
        for part in ("enc", "dec"):
            rk = self._runtime(h, part, eval_mem=False, perf_debug=True)
            try:
                result, text = self._call(h, part, "eval_perf", lambda: rk.eval_perf(is_print=True))
            finally:
                self._release(h, rk)
            report = result.get("string") if isinstance(result, dict) else result
            if not isinstance(report, str) or perf_total_us(report, debug=True) is None:
                report = text
            if perf_total_us(report, debug=True) is None:
                raise HatError(f"rknn-toolkit2 eval_perf gave no per-layer report for the {part} graph with "
                               f"perf_debug=True (result {str(result)[:200]!r}; log: {h['log']})")
            path = os.path.join(os.path.dirname(h["files"][part]), f"{part}.perf_debug.txt")
            with open(path, "w") as f:
                f.write(_ANSI.sub("", report))
            out[part] = path
        return out

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
