"""Board-side latency runner for the RK3588 (or RK3566/RK3576) NPU.

Runs ON THE BOARD (Debian, Python 3.9, aarch64) and imports nothing but the standard library, numpy and
``rknnlite`` (rknn-toolkit-lite2). Copy this single file next to a bundle directory and run:

    python3 board.py BUNDLE_DIR [--out BUNDLE_DIR/results.jsonl] [--core-mask auto|0|1|2|0_1|0_1_2]

The bundle (made on the host by ``latency_dataset.py`` with ``latency-backend: npu``) holds ``manifest.json`` and the
``.rknn`` files of every sampled SubTransformer. For each model in the manifest, with HAT's protocol: warm-up runs,
then timed runs of one encoder call and ``tgt_len`` decoder steps; each run's times are written, one JSON line per
model, to the output file as soon as the model is done; models already in the output are skipped, so an interrupted
run resumes. The host's collect step merges the lines into the latency dataset. Nothing here invents a figure: a model
that fails to load or run is written with its error and no times.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

CORE_MASKS = ("auto", "0", "1", "2", "0_1", "0_1_2")
_DTYPES = {"int64": np.int64, "int32": np.int32, "float32": np.float32, "float16": np.float16, "bool": np.bool_}


def _rknnlite():
    try:
        from rknnlite.api import RKNNLite  # noqa: WPS433 (import on the board only)
    except ImportError:
        sys.stderr.write("error: rknnlite (rknn-toolkit-lite2) is not installed: this runner must run on the board\n")
        sys.exit(2)
    return RKNNLite


def core_mask_value(RKNNLite, mask):
    names = {
        "auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
        "0_1": "NPU_CORE_0_1", "0_1_2": "NPU_CORE_0_1_2",
    }
    if mask not in names:
        raise ValueError("core mask must be one of " + ", ".join(CORE_MASKS))
    return getattr(RKNNLite, names[mask])


def dummy_inputs(spec):
    """Inputs of the shapes and dtypes the manifest gives (values do not change NPU latency; token ids are 7)."""
    out = []
    for inp in spec["inputs"]:
        dtype = _DTYPES[inp.get("dtype", "float32")]
        fill = inp.get("fill", 7 if np.issubdtype(dtype, np.integer) else 0.0)
        out.append(np.full(inp["shape"], fill, dtype=dtype))
    return out


def data_format(spec):
    """The ``data_format`` list for ``RKNNLite.inference`` from the manifest's per-input ``layout`` (the graphs' 4-D
    inputs are NCHW: rknn-toolkit2 rejects them as NHWC, its default). None when no input gives a layout (then the
    argument is not passed). Inputs without a layout get "nchw", which rknn ignores for inputs that are not 4-D."""
    layouts = [inp.get("layout") for inp in spec["inputs"]]
    if not any(layouts):
        return None
    return [layout or "nchw" for layout in layouts]


def trimmed(xs, trim):
    xs = sorted(xs)
    n = len(xs)
    lo, hi = int(n * trim), n - max(1 if n >= 5 else 0, int(n * trim))
    kept = xs[lo:hi] or xs
    mean = sum(kept) / len(kept)
    return mean, (sum((x - mean) ** 2 for x in kept) / len(kept)) ** 0.5


def load(RKNNLite, path, core_mask):
    rk = RKNNLite()
    if rk.load_rknn(path) != 0:
        raise RuntimeError("load_rknn failed for " + path)
    if rk.init_runtime(core_mask=core_mask) != 0:
        raise RuntimeError("init_runtime failed for " + path)
    return rk


def measure_model(RKNNLite, bundle, entry, protocol, core_mask, clock=time.perf_counter):
    enc = load(RKNNLite, os.path.join(bundle, entry["encoder"]["file"]), core_mask)
    dec = load(RKNNLite, os.path.join(bundle, entry["decoder"]["file"]), core_mask)
    try:
        enc_in, dec_in = dummy_inputs(entry["encoder"]), dummy_inputs(entry["decoder"])
        fmt = data_format(entry["encoder"]), data_format(entry["decoder"])
        enc_kw = {"data_format": fmt[0]} if fmt[0] else {}
        dec_kw = {"data_format": fmt[1]} if fmt[1] else {}
        enc_ms, dec_ms = [], []
        for i in range(protocol["warmup"] + protocol["repeats"]):
            t0 = clock()
            if enc.inference(inputs=enc_in, **enc_kw) is None:
                raise RuntimeError("encoder inference returned nothing")
            t1 = clock()
            for _ in range(protocol["tgt_len"]):
                if dec.inference(inputs=dec_in, **dec_kw) is None:
                    raise RuntimeError("decoder inference returned nothing")
            t2 = clock()
            if i >= protocol["warmup"]:
                enc_ms.append((t1 - t0) * 1000.0)
                dec_ms.append((t2 - t1) * 1000.0)
        return enc_ms, dec_ms
    finally:
        enc.release()
        dec.release()


def done_keys(out_path):
    keys = set()
    if os.path.isfile(out_path):
        with open(out_path) as f:
            for line in f:
                try:
                    keys.add(json.loads(line)["key"])
                except (ValueError, KeyError):
                    pass  # a torn last line from an interrupted run
    return keys


def run(bundle, out_path=None, core_mask="auto", RKNNLite=None, clock=time.perf_counter, log=sys.stderr):
    RKNNLite = RKNNLite or _rknnlite()
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    protocol = manifest["protocol"]
    out_path = out_path or os.path.join(bundle, "results.jsonl")
    skip = done_keys(out_path)
    mask = core_mask_value(RKNNLite, core_mask)
    models = [m for m in manifest["models"] if m["key"] not in skip]
    log.write("board runner: %d models to measure, %d done before\n" % (len(models), len(skip)))
    for n, entry in enumerate(models, 1):
        rec = {"key": entry["key"], "core_mask": core_mask, "source": "measured:board", "protocol": protocol}
        try:
            enc_ms, dec_ms = measure_model(RKNNLite, bundle, entry, protocol, mask, clock)
            (em, es), (dm, ds) = trimmed(enc_ms, protocol["trim"]), trimmed(dec_ms, protocol["trim"])
            rec.update(encoder_ms=enc_ms, decoder_ms=dec_ms, latency_mean_encoder=em, latency_std_encoder=es,
                       latency_mean_decoder=dm, latency_std_decoder=ds)
            log.write("[%d/%d] %s: encoder %.3f ms, decoder %.3f ms [measured:board]\n" % (n, len(models), entry["key"], em, dm))
        except Exception as e:  # record the failure, never a number
            rec["error"] = str(e)
            log.write("[%d/%d] %s: error: %s\n" % (n, len(models), entry["key"], e))
        with open(out_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return out_path


def main(argv=None):
    ap = argparse.ArgumentParser(description="Time every RKNN model of a latency bundle on this board's NPU.")
    ap.add_argument("bundle")
    ap.add_argument("--out", default=None)
    ap.add_argument("--core-mask", default="auto", choices=CORE_MASKS)
    a = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(a.bundle, "manifest.json")):
        sys.stderr.write("error: %s has no manifest.json\n" % a.bundle)
        return 2
    run(a.bundle, a.out, a.core_mask)
    return 0


if __name__ == "__main__":
    sys.exit(main())
