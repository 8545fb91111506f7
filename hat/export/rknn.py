"""convert2rknn.py: exported ONNX graphs -> RKNN models for the Rockchip NPU (rknn-toolkit2), checked in its simulator.

    python convert2rknn.py --onnx-name=NAME [--enc | --dec] [--configs=configs/<task>/convert_onnx/common.yml]
        [--target-platform rk3588] [--precision fp16|int8] [--data data-bin/<task>] [--verify]

Reads ``<onnx-dir>/<NAME>_<part>.onnx`` and its JSON sidecar (written by convert2onnx.py), writes
``<rknn-dir>/<NAME>_<part>.<platform>.<precision>.rknn`` and a ``.json`` next to it (platform, precision, shapes,
inputs/outputs, sha256 of the source ONNX and of the .rknn), and the toolkit's log as ``.log``.

* the graph must be unchanged since its sidecar was written (sha256), and an encoder and a decoder of one name must
  come from one export (the same ``export_id`` in both sidecars, :func:`hat.export.read_pair`): a pair mixed by an
  interrupted re-export is refused in one line before anything is built.
* fp16 (default, ``do_quantization=False``) is the safe precision on the RK3588 NPU.
* int8 (w8a8) needs a calibration set: inputs recorded while the ONNX graphs (onnxruntime) translate sentences of the
  data dir's ``calib-split`` (token ids from fairseq's binarized files), saved as .npy files listed in a .txt (one
  line per sample, one .npy per model input, in input order), as rknn-toolkit2 expects.
* ``--verify`` runs the toolkit's simulator (``init_runtime()`` without a target) on sample inputs recorded the same
  way and compares every output with onnxruntime (cosine similarity, max abs error); fp16 must reach cosine
  >= :data:`FP16_MIN_COSINE`, or nothing is written.

RK3588 notes: static shapes only (the graphs have them); 4-D inputs are fed as NCHW (``data_format='nchw'``), as
given in the sidecar; int64 inputs are token ids and positions (embedding gathers).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hat.errors import ConfigError, HatError
from hat.export import PARTS, ExportError, ToolkitMissingError, onnx_path, read_pair, rknn_path
from hat.io import atomic_output, sha256_file, write_json

PLATFORMS = ("rk3588", "rk3576", "rk3566", "rk3568", "rk3562")
FP16_MIN_COSINE = 0.999
RKNN_FORMAT = "hat-rknn/1"


def require_rknn():
    try:
        from rknn.api import RKNN  # noqa: F401
    except ImportError:
        raise ToolkitMissingError(
            "rknn-toolkit2 is not installed (pip install rknn-toolkit2; Linux x86_64/aarch64, Python 3.8-3.12)"
        ) from None
    return RKNN


def toolkit_version() -> str:
    try:
        from importlib.metadata import version

        return version("rknn-toolkit2")
    except Exception:
        return "unknown"


@contextlib.contextmanager
def no_progress_bars():
    """tqdm progress bars off: the toolkit's (loading, op fusing: hundreds of redraws per build, into the log) cost
    CPU time even when nobody sees them. ``TQDM_DISABLE`` in the environment does not do it here: tqdm reads it
    once, when it is imported (the toolkit imports it with itself); so for the duration the default of tqdm's
    ``disable`` argument is True (a bar created with an explicit ``disable=`` keeps it). Only what is drawn
    changes."""
    try:
        from tqdm.std import tqdm
    except ImportError:  # no tqdm, no bars
        tqdm = None
    init = vars(tqdm).get("__init__") if tqdm is not None else None  # a function, or tqdm's partialmethod of TQDM_*
    if init is None:
        yield
        return
    tqdm.__init__ = functools.partialmethod(init, disable=True)
    try:
        yield
    finally:
        tqdm.__init__ = init


@contextlib.contextmanager
def checked_at_export():
    """``onnx.checker.check_model`` skipped in this thread for the duration: rknn-toolkit2's ``load_onnx`` runs it on
    the whole model (serialized again for onnx's C++ side), a part of the full check convert2onnx ran on the very same
    bytes (:func:`build_part` compares their sha256 with the sidecar's first). A check only: it changes nothing of
    the model when it passes. Other threads check as usual."""
    import threading

    import onnx.checker

    check_model, me = onnx.checker.check_model, threading.get_ident()

    @functools.wraps(check_model)
    def checked(model, *args, **kwargs):
        if threading.get_ident() == me:
            return None
        return check_model(model, *args, **kwargs)

    onnx.checker.check_model = checked
    try:
        yield
    finally:
        onnx.checker.check_model = check_model


@contextlib.contextmanager
def quiet(log_path: str):
    """Send everything the toolkit prints (Python and native) to ``log_path``, its progress bars off
    (:func:`no_progress_bars`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log, no_progress_bars():
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _last_error(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith(("E ", "\x1b[1;31mE")) and "Unkown op target" not in ln]
    pick = errs[-1] if errs else (lines[-1] if lines else "")
    return pick.replace("\x1b[1;31m", "").replace("\x1b[0m", "")[:300]


# ---- sample inputs (verification, calibration) ------------------------------------------------------------------------
class _Recorder:
    """Wraps an OrtRunner and keeps the feeds (and onnxruntime's outputs) of every graph call."""

    def __init__(self, runner):
        self.runner = runner
        self.calls = {"enc": [], "dec": []}
        self._enc, self._dec = runner.run_encoder, runner.run_decoder
        runner.run_encoder = self._wrap("enc", self._enc)
        runner.run_decoder = self._wrap("dec", self._dec)

    def _wrap(self, part, fn):
        specs = (self.runner.enc_meta if part == "enc" else self.runner.dec_meta)["inputs"]

        def call(feeds):
            out = fn(feeds)
            self.calls[part].append(({s["name"]: np.array(feeds[s["name"]]) for s in specs}, out))
            return out

        return call


def record_samples(onnx_dir: str, name: str, sentences: Sequence[Sequence[int]]) -> Dict[str, list]:
    """Translate ``sentences`` with the exported graphs in onnxruntime (beam from the sidecar) and return every
    encoder / decoder-step call as (feeds, onnxruntime outputs)."""
    from hat.export.decode import OrtRunner, translate

    runner = OrtRunner(onnx_dir, name)
    rec = _Recorder(runner)
    translate(runner, sentences, runner.beam, runner.src_len, runner.tgt_len, batch_size=runner.batch_size,
              lenpen=runner.dec_meta.get("lenpen", 1.0))
    return rec.calls


def sample_sentences(meta: dict, data_dir: Optional[str], split: str, n: int, src=None, tgt=None, seed: int = 0):
    """``n`` source sentences: the first ones of the data dir's split, or random token ids without a data dir."""
    if data_dir:
        from hat.fairseq_plugin.data import load_split

        sents = load_split(data_dir, split, src, tgt, limit=n)
        if sents:
            return sents, f"{split} split of {data_dir}"
    rng = np.random.default_rng(seed)
    vocab, src_len = meta["tokens"]["src_vocab"], meta["shapes"]["src_len"]
    return [list(rng.integers(4, vocab, int(rng.integers(2, src_len)))) for _ in range(n)], "random token ids"


def pick(calls: list, n: int) -> list:
    if len(calls) <= n:
        return calls
    idx = np.linspace(0, len(calls) - 1, n).round().astype(int)
    return [calls[i] for i in idx]


def write_dataset(samples: list, specs: List[dict], out_dir: str, txt_path: str) -> str:
    """.npy per input per sample under ``out_dir``, listed in ``txt_path`` (one line per sample)."""
    os.makedirs(out_dir, exist_ok=True)
    lines = []
    for k, (feeds, _) in enumerate(samples):
        paths = []
        for s in specs:
            p = os.path.abspath(os.path.join(out_dir, f"{k:04d}_{s['name']}.npy"))
            np.save(p, feeds[s["name"]])
            paths.append(p)
        lines.append(" ".join(paths))
    with atomic_output(txt_path) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    return txt_path


# ---- build / verify --------------------------------------------------------------------------------------------------------
def compare(got: Sequence[np.ndarray], want: Sequence[np.ndarray], names: Sequence[str]) -> Dict[str, dict]:
    out = {}
    for name, a, b in zip(names, got, want):
        a = np.asarray(a, np.float64).reshape(b.shape) if np.asarray(a).size == b.size else np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise ExportError(f"simulator output {name} has shape {a.shape}, onnxruntime {b.shape}")
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float((a * b).sum() / denom) if denom > 0 else float(np.array_equal(a, b))
        out[name] = {"cosine": cos, "max_abs_err": float(np.abs(a - b).max())}
    return out


def _load_checked(rk, src: str):
    with checked_at_export():  # src is the graph convert2onnx checked (sha256 compared with its sidecar)
        return rk.load_onnx(model=src)


def build_part(onnx_dir: str, name: str, part: str, platform: str, precision: str, rknn_dir: str,
               data_dir: Optional[str] = None, split: str = "valid", calib_size: int = 16, verify: bool = False,
               verify_samples: int = 4, src_lang=None, tgt_lang=None, log=print) -> dict:
    """Build one graph; returns the summary (also written as JSON next to the .rknn)."""
    from hat.export.onnx import scan_ops

    RKNN = require_rknn()
    if platform not in PLATFORMS:
        raise ConfigError(f"target-platform {platform!r} is not one of {', '.join(PLATFORMS)}")
    # this graph and (when there) its partner: unchanged since export, and from one export (one export_id)
    meta = read_pair(onnx_dir, name, (part,))[part]
    src = onnx_path(onnx_dir, name, part)
    onnx_sha = meta["sha256"]
    scan_ops(src, os.path.basename(src))
    out = rknn_path(rknn_dir, name, part, platform, precision)
    log_path = out[: -len(".rknn")] + ".log"
    os.makedirs(rknn_dir, exist_ok=True)
    if os.path.exists(log_path):
        os.remove(log_path)

    need_samples = precision == "int8" or verify
    calls, sample_source = None, None
    if need_samples:
        # one encoder call per batch of sentences, many decoder calls: enough sentences for the encoder's samples
        n_calls = max(calib_size if precision == "int8" else 0, verify_samples if verify else 0, 1)
        n_sent = min(n_calls, 64) * meta["shapes"]["batch_size"] if part == "enc" else max(2, min(n_calls, 8))
        sents, sample_source = sample_sentences(meta, data_dir, split, n_sent, src_lang, tgt_lang)
        try:
            calls = record_samples(onnx_dir, name, sents)[part]
        except HatError:
            raise
        except Exception as e:  # onnxruntime's own errors (graphs it cannot run, inputs it refuses)
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ExportError(f"onnxruntime could not run the exported graphs of {name} to record sample inputs: "
                              f"{why}") from None

    specs = meta["inputs"]
    dataset = None
    if precision == "int8":
        calib = pick(calls, calib_size)
        calib_dir = out[: -len(".rknn")] + ".calib"
        dataset = write_dataset(calib, specs, calib_dir, calib_dir + ".txt")
        log(f"| calibration set: {len(calib)} samples of {sample_source} -> {dataset}")

    t0 = time.perf_counter()
    summary = {
        "format": RKNN_FORMAT, "part": part, "name": name, "rknn": os.path.basename(out), "platform": platform,
        "precision": precision, "onnx": os.path.basename(src), "onnx_sha256": onnx_sha,
        "shapes": meta["shapes"], "inputs": meta["inputs"], "outputs": meta["outputs"],
        "input_layout": "4-D inputs NCHW as listed (rknn inference(data_format='nchw'))",
        "config_key": meta["config_key"], "toolkit": f"rknn-toolkit2 {toolkit_version()}",
        "calibration": {"dataset": dataset, "samples": len(pick(calls, calib_size)), "source": sample_source}
        if dataset else None,
    }
    with atomic_output(out) as tmp:
        rk = None
        try:
            with quiet(log_path):
                rk = RKNN(verbose=False)
                steps = [
                    ("config", lambda: rk.config(target_platform=platform, **(
                        {"quantized_dtype": "w8a8"} if precision == "int8" else {}))),
                    ("load_onnx", lambda: _load_checked(rk, src)),
                    ("build", lambda: rk.build(do_quantization=precision == "int8", dataset=dataset)),
                    ("export_rknn", lambda: rk.export_rknn(tmp)),
                ]
                for step, fn in steps:
                    try:
                        ret = fn()
                    except Exception as e:  # the toolkit raises anything, with its traceback in the message
                        ret, exc = -1, e
                    else:
                        exc = None
                    if ret not in (0, None):
                        why = _last_error(log_path) or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                        raise ExportError(f"rknn-toolkit2 {step} failed for {os.path.basename(src)}: {why} "
                                          f"(log: {log_path})")
            summary["build_seconds"] = round(time.perf_counter() - t0, 3)
            if verify:
                summary["verify"] = simulate(rk, meta, pick(calls, verify_samples), log_path, precision)
                summary["verify"]["samples_from"] = sample_source
        finally:
            if rk is not None:
                with quiet(log_path):
                    rk.release()
        summary["sha256"] = sha256_file(tmp)
    write_json(out[: -len(".rknn")] + ".json", summary)
    log(f"| wrote {out} ({platform}, {precision}, built in {summary['build_seconds']:.2f} s [measured])")
    if verify:
        for o, r in summary["verify"]["outputs"].items():
            log(f"| {part} {o}: cosine {r['cosine']:.6f}, max abs err {r['max_abs_err']:.3g} "
                f"[simulator vs measured:onnxruntime, {summary['verify']['samples']} samples]")
    return summary


def simulate(rk, meta: dict, samples: list, log_path: str, precision: str) -> dict:
    """Run the simulator on ``samples`` ((feeds, onnxruntime outputs) pairs); worst cosine / max error per output.
    Raises ExportError if fp16 falls below FP16_MIN_COSINE (the .rknn is then not written)."""
    names = [o["name"] for o in meta["outputs"]]
    specs = meta["inputs"]
    worst: Dict[str, dict] = {}
    try:
        with quiet(log_path):
            ret = rk.init_runtime()
    except Exception as e:  # the toolkit raises with its traceback in the message
        why = _last_error(log_path) or (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise ExportError(f"rknn-toolkit2 simulator init_runtime failed: {why} (log: {log_path})") from None
    if ret != 0:
        raise ExportError(f"rknn-toolkit2 simulator init_runtime failed: {_last_error(log_path)} (log: {log_path})")
    for feeds, want in samples:
        inputs = [np.ascontiguousarray(feeds[s["name"]]) for s in specs]
        fmt = ["nchw"] * len(inputs)  # only 4-D inputs are affected: they are given NCHW, as exported
        try:
            with quiet(log_path):
                got = rk.inference(inputs=inputs, data_format=fmt)
        except Exception as e:
            raise ExportError(f"rknn-toolkit2 simulator inference failed: {str(e).strip().splitlines()[-1]} "
                              f"(log: {log_path})") from None
        if got is None:
            raise ExportError(f"rknn-toolkit2 simulator inference failed: {_last_error(log_path)} (log: {log_path})")
        res = compare(got, [want[n] for n in names], names)
        for n, r in res.items():
            w = worst.setdefault(n, {"cosine": 1.0, "max_abs_err": 0.0})
            w["cosine"] = min(w["cosine"], r["cosine"])
            w["max_abs_err"] = max(w["max_abs_err"], r["max_abs_err"])
    result = {"samples": len(samples), "outputs": worst, "source": "simulator vs measured:onnxruntime",
              "min_cosine": min(w["cosine"] for w in worst.values()) if worst else None}
    if precision == "fp16" and result["min_cosine"] is not None and result["min_cosine"] < FP16_MIN_COSINE:
        bad = min(worst, key=lambda n: worst[n]["cosine"])
        raise ExportError(f"simulator fp16 output {bad} has cosine {worst[bad]['cosine']:.6f} < {FP16_MIN_COSINE} "
                          f"against onnxruntime [simulator]")
    return result
