"""Host side of ``latency-backend npu``: a bundle of RKNN models for the board, and its results collected back.

``npu`` is not a timing backend on this machine: :func:`make_bundle` exports and builds every sampled SubTransformer
for the board (rknn-toolkit2, fp16, ``target-platform``) into a bundle directory with ``manifest.json`` (format
:data:`BUNDLE_FORMAT`) and ``board.py``, and prints what to run on the board (:func:`board_instructions`;
``hat/latency/board.py`` runs the bundle there: the host's decode loop, :mod:`hat.export.decode`, in numpy). The
board's ``results.jsonl`` (raw per-run times) comes back through ``latency_dataset.py --collect``
(:func:`known_configs`, :func:`collect`, which computes the statistics with the protocol's estimator), source
``measured:board``.

A manifest entry (:func:`model_entry`, from the export sidecars) gives the board everything its decode loop needs:
per graph the file, the inputs (name, shape, dtype, layout) in the order ``inference`` takes them and the output
names in the order it returns them; and ``decode``: shapes, special token ids, position offset, mask value, length
penalty, the source sentence (the same one the onnxruntime backend times), which decoder outputs feed which decoder
inputs at the next step (``cache``) and which encoder outputs feed the decoder (``cross``, repeated per hypothesis).

:func:`build_rknn` and :func:`require_toolkit` are the RKNN builds the npu-adb backend (:mod:`hat.latency.adb`) uses
as well. Every model has random weights (seeded), exported with :func:`hat.latency.onnxruntime.export_onnx`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from typing import Callable, Dict, Iterable, List, Optional

from hat.errors import ConfigError, HatError
from hat.io import atomic_output, write_json
from hat.latency.dataset import sample_configs
from hat.latency.onnxruntime import export_onnx, random_model, settings_of, silent
from hat.latency.protocol import Measurement, Protocol
from hat.space import SubConfig

BUNDLE_FORMAT = "hat-npu-bundle/2"  # hat.latency.board.MANIFEST_FORMAT (board.py imports nothing of hat)
PRECISION = "fp16"
SOURCE = "measured:board"


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


def bundle_protocol(protocol: Protocol, platform: str) -> Protocol:
    """The protocol as the board applies it (backend ``npu``, machine the board's platform; the board fills in the
    rknnlite version and its own model name in the protocol of each result line)."""
    return protocol.at("npu", "rknn-toolkit-lite2", machine=f"{platform.upper()} board")


def input_specs(inputs: Iterable[dict]) -> List[dict]:
    """The manifest's per-input spec, in the graph's input order: name, shape, dtype, layout (``nchw`` for 4-D
    inputs, as exported: the board passes it to ``RKNNLite.inference(data_format=...)``)."""
    return [{"name": i["name"], "shape": [int(x) for x in i["shape"]], "dtype": i["dtype"],
             "layout": "nchw" if len(i["shape"]) == 4 else None} for i in inputs]


def source_sentence(model, protocol: Protocol) -> List[int]:
    """The source sentence every backend decodes: the first row of the onnxruntime backend's encoder input
    (:func:`hat.export.onnx.sample_inputs`, seeded), without its padding."""
    from hat.export.onnx import sample_inputs

    row = sample_inputs(model, "enc", settings_of(protocol))["src_tokens"][0]
    return [int(t) for t in row if int(t) != model.opt.padding_idx]


def decode_spec(enc_meta: dict, dec_meta: dict, src_tokens: List[int]) -> dict:
    """What the board's decode loop needs beyond the graphs' inputs/outputs (from the export sidecars)."""
    sh = dec_meta["shapes"]
    dec_in = {i["name"] for i in dec_meta["inputs"]}
    dec_out = [o["name"] for o in dec_meta["outputs"]]
    cache = {o: o[len("new_"):] for o in dec_out if o.startswith("new_") and o[len("new_"):] in dec_in}
    cross = {o["name"]: o["name"] for o in enc_meta["outputs"] if o["name"] in dec_in}
    want = {i for i in dec_in if i.startswith(("self_k_", "self_v_"))}
    if set(cache.values()) != want or "logits" not in dec_out or not cross:
        raise HatError(f"the exported decoder of {dec_meta.get('name', '?')} lacks the cache outputs or logits the "
                       f"board's decode loop needs (inputs {sorted(dec_in)}, outputs {dec_out})")
    return {"batch_size": sh["batch_size"], "beam": sh["beam"], "rows": sh["rows"], "src_len": sh["src_len"],
            "tgt_len": sh["tgt_len"], "tokens": {k: dec_meta["tokens"][k] for k in ("pad", "eos", "unk", "bos")},
            "position_offset": dec_meta["position_offset"], "mask_value": dec_meta["mask_value"],
            "lenpen": dec_meta.get("lenpen", 1.0), "src_tokens": [int(t) for t in src_tokens], "cache": cache,
            "cross": cross}


def model_entry(cfg: Optional[SubConfig], onnx_dir: str, name: str, files: Dict[str, str], src_tokens: List[int],
                built: Optional[Dict[str, dict]] = None) -> dict:
    """A manifest entry for the graphs exported as ``name`` in ``onnx_dir`` (their sidecars); ``files``: part ->
    the file the board loads, relative to the bundle (the .rknn builds; a test points them at the .onnx files);
    ``built``: part -> build summary (sha256, build time). Without ``cfg`` (one converted model measured by
    ``train.py --latnpu --rknn-name``) the entry's key is ``name``."""
    from hat.export import read_sidecar

    metas = {p: read_sidecar(onnx_dir, name, p) for p in ("enc", "dec")}
    entry = {"key": name} if cfg is None else {"key": cfg.key(), "config": cfg.to_hat_dict()}
    for part, field in (("enc", "encoder"), ("dec", "decoder")):
        meta, summary = metas[part], (built or {}).get(part, {})
        entry[field] = {"file": files[part], "inputs": input_specs(meta["inputs"]),
                        "outputs": [o["name"] for o in meta["outputs"]], "sha256": summary.get("sha256"),
                        "build_seconds": summary.get("build_seconds")}
    entry["decode"] = decode_spec(metas["enc"], metas["dec"], src_tokens)
    return entry


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
        raise HatError(f"{path} is not a {BUNDLE_FORMAT} manifest (format {manifest.get('format')!r}: an older "
                       f"bundle has no decode loop for the board); move it away or use another lat-work-dir")
    return manifest


def _model_files_present(bundle: str, entry: dict) -> bool:
    return all(os.path.isfile(os.path.join(bundle, entry[p]["file"])) for p in ("encoder", "decoder"))


def bundle_model(cfg: SubConfig, opt, protocol: Protocol, bundle: str, platform: str, keep: bool = False) -> dict:
    """Export + build one SubTransformer into ``bundle`` (its work files in ``bundle/.build/<key>``, removed unless
    ``keep``); returns its manifest entry."""
    build = os.path.join(bundle, ".build", cfg.key())
    model = random_model(cfg, opt)
    name = export_onnx(cfg, opt, protocol, build, model)
    built = build_rknn(build, name, platform, build)
    for part in ("enc", "dec"):
        dest = os.path.join(bundle, built[part]["rknn"])
        with atomic_output(dest) as tmp:
            shutil.copyfile(os.path.join(build, built[part]["rknn"]), tmp)
    entry = model_entry(cfg, build, name, {p: built[p]["rknn"] for p in ("enc", "dec")},
                        source_sentence(model, protocol), built)
    if not keep:
        shutil.rmtree(build, ignore_errors=True)
    return entry


def _worker_init() -> None:
    """A build process: one torch thread (the processes share the cores; torch resets its thread pools in a forked
    child), the toolkit's import warnings silenced (a spawned process imports it again)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)


class _Sized:
    """An iterator with a length (for the progress bar)."""

    def __init__(self, it, n: int):
        self.it, self.n = it, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(self.it)


def build_entries(todo: List[SubConfig], opt, protocol: Protocol, bundle: str, platform: str, keep: bool = False,
                  workers: int = 1):
    """An iterator of ``(index in todo, manifest entry)`` as each SubTransformer of ``todo`` is exported and built: in
    this process one after the other (``workers`` 1), else in a pool of ``workers`` processes (one torch thread
    each), in the order they finish. The pool's processes are forked when this is called (before a progress bar or
    anything else starts a thread here), so that torch and the toolkit are not imported again in each. When a build
    fails, nothing more is started; the builds under way finish and are yielded, then the first error is raised."""
    if workers <= 1 or len(todo) <= 1:
        return _serial_entries(todo, opt, protocol, bundle, platform, keep)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context, initializer=_worker_init)
    futures = {pool.submit(bundle_model, cfg, opt, protocol, bundle, platform, keep): i for i, cfg in enumerate(todo)}
    return _pooled_entries(pool, futures)


def _serial_entries(todo, opt, protocol, bundle, platform, keep):
    from hat.export.onnx import torch_threads

    with torch_threads(1):
        for i, cfg in enumerate(todo):
            yield i, bundle_model(cfg, opt, protocol, bundle, platform, keep)


def _pooled_entries(pool, futures):
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    error: Optional[BaseException] = None
    try:
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is None:
                yield futures[fut], fut.result()
            elif error is None:
                error = exc
                for other in futures:
                    other.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if isinstance(error, BrokenProcessPool):
        raise HatError("a bundle build process died (killed, or out of memory?); the SubTransformers it finished "
                       "are in the manifest: run again to build the rest") from None
    if error is not None:
        raise error


def make_bundle(args, opt, protocol: Protocol, configs: List[SubConfig], log=print, progress=None,
                argv: Optional[List[str]] = None) -> str:
    """Build (or extend) the board bundle for ``configs``; resumable: SubTransformers already in the manifest (with
    their files) are skipped, the manifest is rewritten atomically after each one. ``lat-workers`` N builds N
    SubTransformers at a time, one process each (:func:`build_entries`; the manifest is the same as one process
    makes, and the protocol it records keeps ``workers`` 1: the board measures one model at a time). ``argv`` (this
    run's flags) makes the printed collect command complete."""
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
    workers = max(1, int(getattr(args, "lat_workers", 1) or 1))  # processes building, not measuring
    proto = bundle_protocol(replace(protocol, workers=1), platform).to_dict()  # the board measures one at a time
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
    procs = f", {min(workers, len(todo))} build processes" if workers > 1 and len(todo) > 1 else ""
    log(f"| npu bundle {bundle}: {len(have)} SubTransformers already built; building {len(todo)} "
        f"({platform} {PRECISION}, {manifest['toolkit']}; src {protocol.src_len}, tgt {protocol.tgt_len}, "
        f"beam {protocol.beam}{procs})")
    write_json(manifest_path, manifest)
    keep = bool(getattr(args, "lat_keep_models", False))
    before, done = list(manifest["models"]), {}
    entries = build_entries(todo, opt, protocol, bundle, platform, keep, workers)
    try:
        for i, entry in (progress(_Sized(entries, len(todo))) if progress else entries):
            done[i] = entry  # the manifest lists them in the order of ``configs``, however they finish
            manifest["models"] = before + [done[j] for j in sorted(done)]
            write_json(manifest_path, manifest)
    finally:
        entries.close()
        if not keep:
            try:
                os.rmdir(os.path.join(bundle, ".build"))
            except OSError:
                pass
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
        f"rows get backend npu, source {SOURCE}; each run is the host's decode loop: encoder, then "
        f"{manifest['protocol']['tgt_len']} decoder steps with caches fed back, beam {manifest['protocol']['beam']})",
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


def _times(xs, n: int) -> bool:
    """``xs`` is a list of ``n`` finite numbers."""
    return (isinstance(xs, list) and len(xs) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in xs))


def collect(results_path: str, writer, known: Dict[str, SubConfig], protocol: Protocol,
            memory_of: Callable[[SubConfig], dict] = lambda c: {}, log=print) -> Dict[str, int]:
    """Merge the board runner's JSON lines into the dataset (backend ``npu``, source ``measured:board``): the
    statistics come from each line's raw ``encoder_ms`` / ``decoder_ms`` (one per timed run; ``decoder_step_ms`` per
    step for the per-call estimators) with the protocol's estimator (:class:`hat.latency.protocol.Measurement`); each
    row records the line's protocol (the board's rknnlite version and model). A line with ``error`` is reported and
    skipped (it holds no figure, and none is made up); so are torn lines, unknown keys, lines measured with another
    protocol (:meth:`Protocol.mismatch`), lines without ``repeats`` finite raw times, and keys already in the
    dataset. A dataset holding rows of another protocol is refused (one line)."""
    if not os.path.isfile(results_path):
        raise HatError(f"--collect: {results_path} not found (copy results.jsonl back from the board first)")
    want = replace(protocol, workers=1).at("npu", "", machine="")  # lat-workers built the bundle, measured nothing
    writer.check_protocol(want)  # the dataset's rows were measured the same way, or it is refused in one line
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
        try:
            got = Protocol.from_dict(rec.get("protocol") or {}, where)
        except HatError as e:
            log(f"| {e}, skipped")
            counts["bad"] += 1
            continue
        why = want.mismatch(got)
        if why:
            log(f"| {where}: {key} was measured with another protocol ({why}), skipped")
            counts["bad"] += 1
            continue
        if rec.get("source") != SOURCE:
            log(f"| {where}: {key} has source {rec.get('source')!r}, not {SOURCE}, skipped")
            counts["bad"] += 1
            continue
        runs = [rec.get("encoder_ms"), rec.get("decoder_ms")]
        if not all(_times(r, protocol.repeats) for r in runs):
            log(f"| {where}: {key} lacks {protocol.repeats} raw encoder and decoder times, skipped")
            counts["bad"] += 1
            continue
        steps = rec.get("decoder_step_ms")
        if not (isinstance(steps, list) and len(steps) == protocol.repeats
                and all(_times(r, protocol.tgt_len) for r in steps)):
            steps = None  # only the per-call estimators (call-*, step-min) need them; they then refuse the line
        m = Measurement([float(v) for v in runs[0]], [float(v) for v in runs[1]], got, SOURCE,
                        step_ms=[[float(v) for v in r] for r in steps] if steps else None)
        try:
            latency = m.row()
        except HatError as e:
            log(f"| {where}: {key}: {e}, skipped")
            counts["bad"] += 1
            continue
        writer.add(cfg, latency, memory_of(cfg), "npu", SOURCE, got)
        counts["added"] += 1
    log(f"| collected {counts['added']} rows from {results_path} into {writer.path} [{SOURCE}]; skipped "
        f"{counts['errors']} board errors, {counts['already']} already in the dataset, {counts['unknown']} unknown "
        f"keys, {counts['bad']} unusable lines")
    return counts
