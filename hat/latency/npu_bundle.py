"""Host side of ``latency-backend npu``: a bundle of RKNN models for the board, and its results collected back.

``npu`` is not a timing backend on this machine: :func:`make_bundle` exports and builds every sampled SubTransformer
for the board (rknn-toolkit2, fp16, ``target-platform``) into a bundle directory with ``manifest.json`` (format
``hat-npu-bundle/1``) and ``board.py``, and prints what to run on the board (:func:`board_instructions`;
``hat/latency/board.py`` runs the bundle there). The board's ``results.jsonl`` comes back through
``latency_dataset.py --collect`` (:func:`known_configs`, :func:`collect`), source ``measured:board``.

:func:`build_rknn` and :func:`require_toolkit` are the RKNN builds the npu-adb backend (:mod:`hat.latency.adb`) uses
as well. Every model has random weights (seeded), exported with :func:`hat.latency.onnxruntime.export_onnx`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Callable, Dict, Iterable, List, Optional

from hat.errors import ConfigError, HatError
from hat.io import atomic_output, write_json
from hat.latency.dataset import LATENCY_COLUMNS, sample_configs
from hat.latency.onnxruntime import export_onnx, silent
from hat.latency.protocol import Protocol
from hat.space import SubConfig

BUNDLE_FORMAT = "hat-npu-bundle/1"
PRECISION = "fp16"


# ---- RKNN builds (npu, npu-adb) --------------------------------------------------------------------------------------
def require_toolkit():
    """rknn-toolkit2's ``RKNN`` class (one clear error when it is missing)."""
    from hat.export.rknn import require_rknn

    return require_rknn()


def build_rknn(onnx_dir: str, name: str, platform: str, rknn_dir: str) -> Dict[str, dict]:
    """fp16 RKNN builds of both graphs (:func:`hat.export.rknn.build_part`); part -> build summary (``rknn`` is the
    file name in ``rknn_dir``, ``inputs`` the graph's inputs)."""
    from hat.export.rknn import build_part

    return {part: build_part(onnx_dir, name, part, platform, PRECISION, rknn_dir, log=silent)
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
