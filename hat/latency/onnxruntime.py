"""``latency-backend onnxruntime``, and the ONNX export every exporting backend shares.

:class:`OrtBackend` runs the exported graphs (static-shape encoder + ONE decoder step, :mod:`hat.export.onnx`) in
onnxruntime on this machine's CPU, timed with the wall clock like ``cpu``. ``lat-threads`` intra-op threads, default
all cores this process may use (HAT measured its CPUs with all cores). Source ``measured:onnxruntime``.

:func:`export_onnx` exports (or reuses) one SubTransformer with the latency protocol's shapes; every model has random
weights (seeded, :func:`random_model`): latency does not depend on their values. :class:`WorkDir` is where exported
files go: ``lat-work-dir`` (a temporary directory by default), one subdirectory per SubTransformer key, reused when
already there, removed after the SubTransformer is measured unless ``lat-keep-models`` is set. The npu and npu-adb
backends (:mod:`hat.latency.npu_bundle`, :mod:`hat.latency.adb`) export through the same functions.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Optional

import numpy as np

from hat.errors import ConfigError, HatError
from hat.latency.protocol import Backend, Protocol
from hat.space import SubConfig

SEED = 0


def silent(*_a, **_k):
    """A ``log`` that prints nothing (exports and builds are not reported row by row)."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def export_name(cfg: SubConfig) -> str:
    return f"sub-{cfg.key()}"


def settings_of(protocol: Protocol):
    """Export shapes of the latency protocol: one sentence of ``src_len`` tokens, ``beam`` hypotheses, a decoder
    cache of ``tgt_len`` slots (the protocol runs ``tgt_len`` steps)."""
    from hat.export.onnx import ExportSettings

    return ExportSettings(batch_size=1, src_len=protocol.src_len, tgt_len=protocol.tgt_len, beam=protocol.beam)


def random_model(cfg: SubConfig, opt, seed: int = SEED):
    """A standalone model at ``cfg``'s shape with seeded random weights, eval mode."""
    import torch

    from hat.models.transformer import SuperTransformer

    torch.manual_seed(seed)
    return SuperTransformer(cfg, opt).eval()


def _exported(onnx_dir: str, name: str, s) -> bool:
    """Both graphs are in ``onnx_dir`` with the shapes ``s`` asks for, unchanged since export and from one export
    (the same ``export_id`` in both sidecars, :func:`hat.export.read_pair`)."""
    from hat.export import read_pair

    try:
        metas = read_pair(onnx_dir, name, ("enc", "dec"))
        for meta in metas.values():
            sh = meta["shapes"]
            if (sh["batch_size"], sh["beam"], sh["src_len"], sh["tgt_len"]) != (s.batch_size, s.beam, s.src_len,
                                                                                  s.tgt_len):
                return False
    except (HatError, OSError, KeyError, ValueError, TypeError):
        return False
    return True


def export_onnx(cfg: SubConfig, opt, protocol: Protocol, onnx_dir: str, model=None) -> str:
    """Export (or reuse) the encoder and decoder-step graphs of ``cfg`` into ``onnx_dir``; returns the export name."""
    from hat.export.onnx import export_model, torch_threads

    name, s = export_name(cfg), settings_of(protocol)
    if _exported(onnx_dir, name, s):
        return name
    with torch_threads(1):  # exporting is not timed; one thread leaves the cores to whatever runs beside
        export_model(model if model is not None else random_model(cfg, opt), onnx_dir, name, s, log=silent)
    return name


class WorkDir:
    """``lat-work-dir`` (or a temporary directory), one subdirectory per SubTransformer key, removed after use
    unless the models are kept. An interrupted run (Ctrl-C, an error) removes at exit what it would have removed
    after measuring: its temporary directory, or in ``lat-work-dir`` the subdirectories in use."""

    def __init__(self, root: Optional[str], keep: bool, prefix: str, log=print):
        self.keep, self.root, self.temp = bool(keep), root, not root
        self.prefix, self.log = prefix, log
        self._in_use = set()
        self._at_exit = None

    def of(self, cfg: SubConfig) -> str:
        if self.root is None:  # made on first use: a run with nothing to measure leaves nothing behind
            self.root = tempfile.mkdtemp(prefix=self.prefix)
            if self.keep:
                self.log(f"| exported models are kept in {self.root} (lat-keep-models; no lat-work-dir given)")
        d = os.path.join(self.root, cfg.key())
        if not self.keep and self._at_exit is None:
            import atexit

            self._at_exit = _cleanup_at_exit(self.root if self.temp else None, self._in_use)
            atexit.register(self._at_exit)
        os.makedirs(d, exist_ok=True)
        self._in_use.add(d)
        return d

    def done(self, cfg: SubConfig) -> None:
        if self.keep or self.root is None:
            return
        d = os.path.join(self.root, cfg.key())
        shutil.rmtree(d, ignore_errors=True)
        self._in_use.discard(d)
        if self.temp:
            try:
                os.rmdir(self.root)  # only when empty: the last SubTransformer of this run
            except OSError:
                pass


def _cleanup_at_exit(temp_root: Optional[str], in_use: set):
    """What an interrupted :class:`WorkDir` leaves: its temporary root (all of it), else the key directories that
    were not done (a user's lat-work-dir keeps the rest)."""

    def cleanup():
        for d in list(in_use):
            shutil.rmtree(d, ignore_errors=True)
        in_use.clear()
        if temp_root:
            shutil.rmtree(temp_root, ignore_errors=True)

    return cleanup


class OrtBackend(Backend):
    """The exported static-shape graphs in onnxruntime (CPU execution provider).

    ``encoder`` is one encoder-graph call plus the host's beam expansion of its ``cross_k_i``/``cross_v_i`` outputs
    (what a decoding host does, as the torch backend's encoder time includes its ``index_select``);
    ``decoder_step(step)`` is one decoder-graph call with ``position`` and ``self_mask`` for ``step`` (cache slots
    0..step valid), the self-attention caches the previous step returned and the encoder's keys/values; the caches
    start at zeros in :meth:`start_decoding`.
    """

    name = "onnxruntime"
    source = "measured:onnxruntime"

    def __init__(self, opt, protocol: Protocol, work_dir: Optional[str] = None, threads: Optional[int] = None,
                 keep: bool = False, log=print, model_for: Optional[Callable[[SubConfig], object]] = None):
        """``model_for(cfg)``: the model to export for ``cfg`` (default: random weights; latency does not depend on
        them, but a trained model can be measured as it will be deployed)."""
        self.model_for = model_for or (lambda cfg: random_model(cfg, self.opt))
        try:
            import onnxruntime
        except ImportError:
            raise HatError("latency-backend onnxruntime: onnxruntime is not installed (pip install onnxruntime)"
                           ) from None
        self.opt, self.protocol = opt, protocol
        self.threads = int(threads) if threads else available_cores()
        if self.threads < 1:
            raise ConfigError(f"lat-threads must be >= 1, got {threads}")
        self.work = WorkDir(work_dir, keep, "hat-lat-ort-", log)
        self.detail = (f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, {self.threads} intra-op "
                       f"thread{'s' if self.threads != 1 else ''}")

    def load(self, cfg: SubConfig):
        from hat.export import decode, onnx_path
        from hat.export.onnx import ort_session, sample_inputs

        d = self.work.of(cfg)
        model = self.model_for(cfg)
        name = export_onnx(cfg, self.opt, self.protocol, d, model)
        s = settings_of(self.protocol)
        enc = ort_session(onnx_path(d, name, "enc"), self.threads)
        dec = ort_session(onnx_path(d, name, "dec"), self.threads)
        dec_feeds = sample_inputs(model, "dec", s)
        offset = model.opt.padding_idx + 1
        self_names = [i.name for i in dec.get_inputs() if i.name.startswith(("self_k_", "self_v_"))]
        return {
            "cfg": cfg, "enc": enc, "dec": dec,
            "enc_feeds": sample_inputs(model, "enc", s),
            "enc_out": [o.name for o in enc.get_outputs()],
            "dec_out": [o.name for o in dec.get_outputs()],
            "static": {"prev_token": dec_feeds["prev_token"], "src_mask": dec_feeds["src_mask"]},
            "position": [np.full((1, 1), offset + t, np.int64) for t in range(s.tgt_len)],
            "self_mask": [decode.self_mask(s.tgt_len, t) for t in range(s.tgt_len)],
            "zeros": {n: np.zeros_like(dec_feeds[n]) for n in self_names},
            "cross": None, "cache": None,
        }

    def encoder(self, h):
        outs = h["enc"].run(h["enc_out"], h["enc_feeds"])
        beam = self.protocol.beam
        h["cross"] = {n: np.repeat(o, beam, axis=0) for n, o in zip(h["enc_out"], outs)}

    def start_decoding(self, h):
        h["cache"] = dict(h["zeros"])

    def decoder_step(self, h, step):
        feeds = {"position": h["position"][step], "self_mask": h["self_mask"][step]}
        feeds.update(h["static"])
        feeds.update(h["cross"])
        feeds.update(h["cache"])
        outs = h["dec"].run(h["dec_out"], feeds)
        cache = h["cache"]
        for n, o in zip(h["dec_out"], outs):
            if n.startswith("new_"):
                cache[n[4:]] = o

    def unload(self, h):
        cfg = h.get("cfg")
        h.clear()  # drops the sessions
        if cfg is not None:
            self.work.done(cfg)
