"""Latency backends beyond torch eager (``latency-backend`` in latency_dataset.py):

``onnxruntime``  the exported graphs (static-shape encoder + ONE decoder step, :mod:`hat.export.onnx`) in
                 onnxruntime on this machine's CPU, timed with the wall clock like ``cpu``. ``lat-threads`` intra-op
                 threads, default all cores this process may use (HAT measured its CPUs with all cores). Source
                 ``measured:onnxruntime``.
``npu``          not a timing backend on this machine: exports and builds every sampled SubTransformer for the
                 board (rknn-toolkit2, fp16, ``target-platform``) into a bundle directory with ``manifest.json``
                 (:func:`make_bundle`), and prints what to run on the board (``hat/latency/board.py``). The board's
                 ``results.jsonl`` comes back through ``latency_dataset.py --collect`` (:func:`collect`), source
                 ``measured:board``.
``npu-adb``      a board on USB, driven from this machine through rknn-toolkit2 (``init_runtime(target=...)`` over
                 adb): ``eval_perf()`` gives the board's own time of one encoder call and of one decoder step, and
                 ``eval_memory()`` the model's memory on the board. Source ``measured:board-adb``.

Every model has random weights (seeded): latency does not depend on their values. Exported files go to
``lat-work-dir`` (a temporary directory by default), one subdirectory per SubTransformer key, are reused when already
there, and are removed after the SubTransformer is measured unless ``lat-keep-models`` is set.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from hat.errors import ConfigError, HatError
from hat.latency.protocol import Backend, Protocol
from hat.space import SubConfig

BUNDLE_FORMAT = "hat-npu-bundle/1"
PRECISION = "fp16"
SEED = 0


def _silent(*_a, **_k):
    pass


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
    """Both graphs are in ``onnx_dir`` with the shapes ``s`` asks for and unchanged since export."""
    from hat.export import onnx_path, read_sidecar
    from hat.io import sha256_file

    try:
        for part in ("enc", "dec"):
            meta = read_sidecar(onnx_dir, name, part)
            sh = meta["shapes"]
            if (sh["batch_size"], sh["beam"], sh["src_len"], sh["tgt_len"]) != (s.batch_size, s.beam, s.src_len,
                                                                                  s.tgt_len):
                return False
            if sha256_file(onnx_path(onnx_dir, name, part)) != meta["sha256"]:
                return False
    except (HatError, OSError, KeyError, ValueError):
        return False
    return True


def export_onnx(cfg: SubConfig, opt, protocol: Protocol, onnx_dir: str, model=None) -> str:
    """Export (or reuse) the encoder and decoder-step graphs of ``cfg`` into ``onnx_dir``; returns the export name."""
    from hat.export.onnx import export_model, torch_threads

    name, s = export_name(cfg), settings_of(protocol)
    if _exported(onnx_dir, name, s):
        return name
    with torch_threads(1):  # exporting is not timed; one thread leaves the cores to whatever runs beside
        export_model(model if model is not None else random_model(cfg, opt), onnx_dir, name, s, log=_silent)
    return name


class _WorkDir:
    """``lat-work-dir`` (or a temporary directory), one subdirectory per SubTransformer key, removed after use
    unless the models are kept."""

    def __init__(self, root: Optional[str], keep: bool, prefix: str, log=print):
        self.keep, self.root, self.temp = bool(keep), root, not root
        self.prefix, self.log = prefix, log

    def of(self, cfg: SubConfig) -> str:
        if self.root is None:  # made on first use: a run with nothing to measure leaves nothing behind
            self.root = tempfile.mkdtemp(prefix=self.prefix)
            if self.keep:
                self.log(f"| exported models are kept in {self.root} (lat-keep-models; no lat-work-dir given)")
        d = os.path.join(self.root, cfg.key())
        os.makedirs(d, exist_ok=True)
        return d

    def done(self, cfg: SubConfig) -> None:
        if self.keep or self.root is None:
            return
        shutil.rmtree(os.path.join(self.root, cfg.key()), ignore_errors=True)
        if self.temp:
            try:
                os.rmdir(self.root)  # only when empty: the last SubTransformer of this run
            except OSError:
                pass


# ---- onnxruntime ----------------------------------------------------------------------------------------------------
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
        self.work = _WorkDir(work_dir, keep, "hat-lat-ort-", log)
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


# ---- RKNN builds (npu, npu-adb) --------------------------------------------------------------------------------------
def require_toolkit():
    """rknn-toolkit2's ``RKNN`` class (one clear error when it is missing)."""
    from hat.export.rknn import require_rknn

    return require_rknn()


def build_rknn(onnx_dir: str, name: str, platform: str, rknn_dir: str) -> Dict[str, dict]:
    """fp16 RKNN builds of both graphs (:func:`hat.export.rknn.build_part`); part -> build summary (``rknn`` is the
    file name in ``rknn_dir``, ``inputs`` the graph's inputs)."""
    from hat.export.rknn import build_part

    return {part: build_part(onnx_dir, name, part, platform, PRECISION, rknn_dir, log=_silent)
            for part in ("enc", "dec")}


def input_specs(inputs: Iterable[dict], position_offset: int) -> List[dict]:
    """The manifest's per-input spec: name, shape, dtype, layout (``nchw`` for 4-D inputs, as exported: the board
    passes it to ``RKNNLite.inference(data_format=...)``), and a fill value where the default one (7 for integers)
    would not be valid (positions: the first position)."""
    out = []
    for i in inputs:
        spec = {"name": i["name"], "shape": [int(x) for x in i["shape"]], "dtype": i["dtype"],
                "layout": "nchw" if len(i["shape"]) == 4 else None}
        if i["name"] in ("src_positions", "position"):
            spec["fill"] = int(position_offset)
        out.append(spec)
    return out


# ---- npu: a bundle for the board -------------------------------------------------------------------------------------
def bundle_dir(args) -> str:
    """``lat-work-dir``, or ``<lat-dataset-path without .csv>_npu_bundle`` next to the dataset."""
    if getattr(args, "lat_work_dir", None):
        return args.lat_work_dir
    return os.path.splitext(args.lat_dataset_path)[0] + "_npu_bundle"


def read_manifest(bundle: str) -> Optional[dict]:
    path = os.path.join(bundle, "manifest.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise HatError(f"{path} is not valid JSON ({e}); move it away to start the bundle again") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise HatError(f"{path} is not a {BUNDLE_FORMAT} manifest")
    return manifest


def _model_files_present(bundle: str, entry: dict) -> bool:
    return all(os.path.isfile(os.path.join(bundle, entry[p]["file"])) for p in ("encoder", "decoder"))


def bundle_model(cfg: SubConfig, opt, protocol: Protocol, bundle: str, platform: str, keep: bool = False) -> dict:
    """Export + build one SubTransformer into ``bundle``; returns its manifest entry."""
    from hat.export import read_sidecar
    from hat.io import atomic_output

    build = os.path.join(bundle, ".build", cfg.key())
    name = export_onnx(cfg, opt, protocol, build)
    built = build_rknn(build, name, platform, build)
    entry = {"key": cfg.key(), "config": cfg.to_hat_dict()}
    for part, field in (("enc", "encoder"), ("dec", "decoder")):
        meta = read_sidecar(build, name, part)
        summary = built[part]
        dest = os.path.join(bundle, summary["rknn"])
        with atomic_output(dest) as tmp:
            shutil.copyfile(os.path.join(build, summary["rknn"]), tmp)
        entry[field] = {"file": summary["rknn"], "inputs": input_specs(summary["inputs"], meta["position_offset"]),
                        "sha256": summary.get("sha256"), "build_seconds": summary.get("build_seconds")}
    if not keep:
        shutil.rmtree(build, ignore_errors=True)
        try:
            os.rmdir(os.path.join(bundle, ".build"))
        except OSError:
            pass
    return entry


def make_bundle(args, opt, protocol: Protocol, configs: List[SubConfig], log=print, progress=None,
                argv: Optional[List[str]] = None) -> str:
    """Build (or extend) the board bundle for ``configs``; resumable: SubTransformers already in the manifest (with
    their files) are skipped, the manifest is rewritten atomically after each one. ``argv`` (this run's flags) makes
    the printed collect command complete."""
    from hat.io import write_json
    from hat.export.rknn import PLATFORMS, toolkit_version
    from hat.latency import board

    platform = args.target_platform
    if platform not in PLATFORMS:
        raise ConfigError(f"target-platform {platform!r} is not one of {', '.join(PLATFORMS)}")
    if args.npu_core_mask not in board.CORE_MASKS:
        raise ConfigError(f"npu-core-mask must be one of {', '.join(board.CORE_MASKS)}, got {args.npu_core_mask!r}")
    require_toolkit()
    bundle = bundle_dir(args)
    os.makedirs(bundle, exist_ok=True)
    manifest_path = os.path.join(bundle, "manifest.json")
    proto = protocol.to_dict()
    vocab = {"src_vocab": opt.src_vocab, "tgt_vocab": opt.tgt_vocab}
    manifest = read_manifest(bundle)
    if manifest is None:
        manifest = {"format": BUNDLE_FORMAT, "protocol": proto, "target_platform": platform, "precision": PRECISION,
                    "vocab": vocab, "toolkit": f"rknn-toolkit2 {toolkit_version()}", "models": []}
    else:
        if manifest.get("vocab") != vocab:
            raise HatError(f"{manifest_path} was made for vocabularies {manifest.get('vocab')}, this run has {vocab}: "
                           f"use another lat-work-dir")
        if manifest.get("protocol") != proto:
            raise HatError(f"{manifest_path} was made with protocol {manifest.get('protocol')}, this run's is {proto}: "
                           f"use the same lat-* keys, or another lat-work-dir")
        if manifest.get("target_platform") != platform:
            raise HatError(f"{manifest_path} was built for {manifest.get('target_platform')}, this run asks for "
                           f"{platform}: use another lat-work-dir")
    manifest["models"] = [m for m in manifest.get("models", []) if _model_files_present(bundle, m)]
    have = {m["key"] for m in manifest["models"]}
    todo = [c for c in configs if c.key() not in have]
    log(f"| npu bundle {bundle}: {len(have)} SubTransformers already built; building {len(todo)} "
        f"({platform} {PRECISION}, {manifest['toolkit']}; src {protocol.src_len}, tgt {protocol.tgt_len}, "
        f"beam {protocol.beam})")
    write_json(manifest_path, manifest)
    keep = bool(getattr(args, "lat_keep_models", False))
    for cfg in (progress(todo) if progress else todo):
        manifest["models"].append(bundle_model(cfg, opt, protocol, bundle, platform, keep))
        write_json(manifest_path, manifest)
    from hat.io import atomic_output

    with atomic_output(os.path.join(bundle, "board.py")) as tmp:  # the runner travels with the bundle
        shutil.copyfile(board.__file__, tmp)
    log(board_instructions(bundle, manifest, args, argv))
    return bundle


def board_instructions(bundle: str, manifest: dict, args, argv: Optional[List[str]] = None) -> str:
    import shlex

    base = os.path.basename(os.path.normpath(bundle))
    size = sum(os.path.getsize(os.path.join(bundle, m[p]["file"])) for m in manifest["models"]
               for p in ("encoder", "decoder"))
    if argv is not None:
        configs = "".join(shlex.quote(a) + " " for a in argv)
    else:
        configs = f"--configs={args.configs} " if getattr(args, "configs", None) else ""
    platform = manifest["target_platform"].upper()
    return "\n".join([
        f"| bundle ready: {bundle} ({len(manifest['models'])} SubTransformers, {size / 2**20:.1f} MiB of .rknn, "
        f"manifest.json, board.py). Nothing was timed on this machine.",
        f"| on the {platform} board (Python 3 with numpy and rknn-toolkit-lite2):",
        f"|   1. copy the bundle and the runner:  scp -r {bundle} hat/latency/board.py USER@BOARD:~/",
        f"|   2. run on the board:                python3 board.py {base} --core-mask {args.npu_core_mask}",
        f"|      (writes {base}/results.jsonl, one line per SubTransformer as it finishes; run it again to resume)",
        f"|   3. copy the results back:           scp USER@BOARD:~/{base}/results.jsonl {bundle}/results.jsonl",
        f"|   4. merge them into the dataset:     python latency_dataset.py {configs}--collect "
        f"{os.path.join(bundle, 'results.jsonl')}",
        f"|      ({'this run' if argv is not None else 'with the same keys and flags as this run'}, plus --collect; "
        f"rows get backend npu, source measured:board)",
    ])


# ---- collect: the board's results.jsonl -> dataset rows --------------------------------------------------------------
def known_configs(results_path: str, args, space, size: int, seed: int) -> Dict[str, SubConfig]:
    """key -> SubConfig from the bundle manifests (next to the results file, and the bundle dir of these args) and
    from the configs this dataset samples."""
    from hat.latency.dataset import sample_configs

    known = {c.key(): c for c in sample_configs(space, size, seed)}
    for d in {os.path.dirname(os.path.abspath(results_path)), os.path.abspath(bundle_dir(args))}:
        manifest = read_manifest(d) if os.path.isdir(d) else None
        for m in (manifest or {}).get("models", []):
            known.setdefault(m["key"], SubConfig.from_hat_dict(m["config"], source=os.path.join(d, "manifest.json")))
    return known


def collect(results_path: str, writer, known: Dict[str, SubConfig], protocol: Protocol,
            memory_of: Callable[[SubConfig], dict] = lambda c: {}, log=print) -> Dict[str, int]:
    """Merge the board runner's JSON lines into the dataset (backend ``npu``, source ``measured:board``). A line with
    ``error`` is reported and skipped (it holds no figure, and none is made up); so are torn lines, unknown keys,
    lines measured with another protocol and keys already in the dataset."""
    from hat.latency.dataset import LATENCY_COLUMNS

    if not os.path.isfile(results_path):
        raise HatError(f"--collect: {results_path} not found (copy results.jsonl back from the board first)")
    want = protocol.to_dict()
    counts = {"added": 0, "errors": 0, "already": 0, "unknown": 0, "bad": 0}
    with open(results_path) as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{results_path}:{n}"
        try:
            rec = json.loads(line)
            key = rec["key"]
        except (ValueError, KeyError, TypeError):
            log(f"| {where}: not a complete result line (torn by an interrupted run?), skipped")
            counts["bad"] += 1
            continue
        if "error" in rec:
            log(f"| {where}: {key}: the board reported an error, no figure taken: {rec['error']}")
            counts["errors"] += 1
            continue
        if key in writer.done:
            counts["already"] += 1
            continue
        cfg = known.get(key)
        if cfg is None:
            log(f"| {where}: {key} is neither in the bundle manifest nor among this dataset's configs, skipped")
            counts["unknown"] += 1
            continue
        got = rec.get("protocol") or {}
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        if diff:
            what = ", ".join(f"{k} {a} != {b}" for k, (a, b) in diff.items())
            log(f"| {where}: {key} was measured with another protocol ({what}), skipped")
            counts["bad"] += 1
            continue
        if rec.get("source") != "measured:board":
            log(f"| {where}: {key} has source {rec.get('source')!r}, not measured:board, skipped")
            counts["bad"] += 1
            continue
        vals = {k: rec.get(k) for k in LATENCY_COLUMNS}
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals.values()):
            log(f"| {where}: {key} lacks latency figures, skipped")
            counts["bad"] += 1
            continue
        writer.add(cfg, {k: float(v) for k, v in vals.items()}, memory_of(cfg), "npu", "measured:board")
        counts["added"] += 1
    log(f"| collected {counts['added']} rows from {results_path} into {writer.path} [measured:board]; skipped "
        f"{counts['errors']} board errors, {counts['already']} already in the dataset, {counts['unknown']} unknown "
        f"keys, {counts['bad']} unusable lines")
    return counts


# ---- npu-adb: a board on USB through rknn-toolkit2 -------------------------------------------------------------------
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
        self.RKNN = toolkit if toolkit is not None else require_toolkit()
        self.core_mask = board.core_mask_value(self.RKNN, core_mask)
        self.work = _WorkDir(work_dir, keep, "hat-lat-adb-", log)
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
        built = build_rknn(d, name, self.platform, d)
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


def make(name: str, args, opt, protocol: Protocol, toolkit=None, log=print) -> Backend:
    """The backend ``name`` for latency_dataset.py / evo_search.py (``toolkit``: rknn-toolkit2's RKNN class for
    npu-adb, injected by tests)."""
    keep = bool(getattr(args, "lat_keep_models", False))
    if name == "onnxruntime":
        return OrtBackend(opt, protocol, work_dir=args.lat_work_dir, threads=args.lat_threads, keep=keep, log=log)
    if name == "npu-adb":
        return AdbBackend(opt, protocol, platform=args.target_platform, device_id=args.device_id,
                          core_mask=args.npu_core_mask, work_dir=args.lat_work_dir, keep=keep, toolkit=toolkit,
                          log=log)
    if name == "npu":
        raise HatError("latency-backend npu times nothing on this machine: latency_dataset.py builds a bundle for "
                       "the board with it (then board.py there, then --collect); for a board on USB use npu-adb")
    raise ConfigError(f"unknown latency backend {name!r}")
