"""Board-side latency runner for the RK3588 (or RK3566/RK3576) NPU.

Runs ON THE BOARD (Debian, Python 3.9, aarch64) and imports nothing but the standard library, numpy and
``rknnlite`` (rknn-toolkit-lite2). Copy this single file next to a bundle directory and run:

    python3 board.py BUNDLE_DIR [--out BUNDLE_DIR/results.jsonl] [--core-mask auto|0|1|2|0_1|0_1_2]

The bundle (made on the host by ``latency_dataset.py`` with ``latency-backend: npu``) holds ``manifest.json`` and the
``.rknn`` files of every sampled SubTransformer. For each model in the manifest, with the manifest's protocol: warm-up
runs, then timed runs. One run is the decode loop of the host (``hat/export/decode.py``, which cannot be imported
here, so its search is repeated below in numpy): one encoder call on the bundle's source sentence (its
``cross_k_i``/``cross_v_i`` outputs repeated once per hypothesis), then ``tgt_len`` decoder steps over ``beam``
hypothesis rows, each step fed the cache outputs of the step before (``new_self_k_i`` -> ``self_k_i``), reordered
with the hypotheses that the beam search (fairseq's, as on the host) keeps. When the search has finished before
``tgt_len`` steps, the remaining steps still run (on the last tokens; their logits are not used): the protocol times
``tgt_len`` steps, as every host backend does.

Each run's raw times are written, one JSON line per model, as soon as the model is done: ``encoder_ms``,
``decoder_ms`` (the whole loop of ``tgt_len`` steps: inference calls, cache feedback and search),
``decoder_step_ms`` (each step's share of it) and ``decoder_inference_ms`` (the decoder's ``inference()`` calls
alone), plus the tokens the search produced. The host computes the statistics at collect time, with the protocol's
estimator. The manifest's ``protocol`` is used as a dict (``src_len``, ``tgt_len``, ``beam``, ``warmup``,
``repeats``; other keys are carried along, with this board's model and rknnlite version filled in). Models already in the output are skipped, so an interrupted run resumes.
Nothing here invents a figure: a model that fails to load or run is written with its error and no times.

rknnlite's API as used here (rknn-toolkit-lite2, ``rknnlite/api/rknn_lite.py``): ``RKNNLite()``,
``load_rknn(path)`` and ``init_runtime(core_mask=...)`` return 0 on success and -1 on failure, ``inference(inputs=[...],
data_format=[...])`` returns the outputs as a list of numpy arrays in the graph's output order (None on failure),
``release()``; core masks are the class constants ``NPU_CORE_AUTO`` (0), ``NPU_CORE_0`` (1), ``NPU_CORE_1`` (2),
``NPU_CORE_2`` (4), ``NPU_CORE_0_1`` (3), ``NPU_CORE_0_1_2`` (7).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

CORE_MASKS = ("auto", "0", "1", "2", "0_1", "0_1_2")
MANIFEST_FORMAT = "hat-npu-bundle/2"
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


def data_format(spec):
    """The ``data_format`` list for ``RKNNLite.inference`` from the manifest's per-input ``layout`` (the graphs' 4-D
    inputs are NCHW: rknn rejects them as NHWC, its default). None when no input gives a layout (then the argument is
    not passed). Inputs without a layout get "nchw", which rknn ignores for inputs that are not 4-D."""
    layouts = [inp.get("layout") for inp in spec["inputs"]]
    if not any(layouts):
        return None
    return [layout or "nchw" for layout in layouts]


# ---- what the host feeds the graphs (hat/export/runtime.py) ---------------------------------------------------------
def prepare_source(sentences, src_len, pad, eos, mask_value):
    """Token id lists -> (src_tokens int64, src_positions int64, src_mask float32), each (len(sentences), src_len),
    as ``hat.export.runtime.prepare_source``: EOS appended if missing, cut to ``src_len``, right-padded with ``pad``,
    positions from ``pad + 1``, additive mask 0 at real tokens and ``mask_value`` at pads."""
    n = len(sentences)
    tokens = np.full((n, src_len), pad, np.int64)
    positions = np.full((n, src_len), pad, np.int64)
    mask = np.full((n, src_len), mask_value, np.float32)
    for i, s in enumerate(sentences):
        s = [int(t) for t in s]
        if not s or s[-1] != eos:
            s = s + [eos]
        if len(s) > src_len:
            s = s[: src_len - 1] + [eos]
        tokens[i, : len(s)] = s
        positions[i, : len(s)] = np.arange(pad + 1, pad + 1 + len(s))
        mask[i, : len(s)] = 0.0
    return tokens, positions, mask


def self_mask(tgt_len, step, mask_value):
    """Additive self-attention mask (1, tgt_len) for decoder step ``step``: cache slots 0..step valid."""
    m = np.full((1, tgt_len), mask_value, np.float32)
    m[:, : step + 1] = 0.0
    return m


def log_softmax(x):
    x = x.astype(np.float32)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ---- the graphs through rknnlite ------------------------------------------------------------------------------------
class Graph(object):
    """One RKNN model: fed by input name in the manifest's input order, read by output name in its output order.
    ``busy`` adds up the seconds spent in ``inference`` calls."""

    def __init__(self, RKNNLite, path, spec, core_mask, clock=time.perf_counter):
        self.path, self.clock, self.busy = path, clock, 0.0
        self.inputs = spec["inputs"]
        self.outputs = list(spec["outputs"])
        fmt = data_format(spec)
        self.kw = {"data_format": fmt} if fmt else {}
        self.rk = RKNNLite()
        if self.rk.load_rknn(path) != 0:
            raise RuntimeError("load_rknn failed for " + path)
        if self.rk.init_runtime(core_mask=core_mask) != 0:
            self.release()
            raise RuntimeError("init_runtime failed for " + path)

    def run(self, feeds):
        arrays = [np.ascontiguousarray(feeds[i["name"]], dtype=_DTYPES[i.get("dtype", "float32")])
                  for i in self.inputs]
        t0 = self.clock()
        outs = self.rk.inference(inputs=arrays, **self.kw)
        self.busy += self.clock() - t0
        if outs is None:
            raise RuntimeError("inference returned nothing for " + os.path.basename(self.path))
        if len(outs) != len(self.outputs):
            raise RuntimeError("%s returned %d outputs, the manifest lists %d" % (
                os.path.basename(self.path), len(outs), len(self.outputs)))
        return dict(zip(self.outputs, outs))

    def release(self):
        if self.rk is not None:
            self.rk.release()
            self.rk = None


class Runner(object):
    """The host's fixed-shape runner (``hat.export.decode.FixedShapeRunner``) over the two graphs: the encoder's
    cross keys/values repeated per hypothesis, self-attention caches that start at zeros, are fed back step after
    step and reordered with the hypotheses the search keeps."""

    def __init__(self, encoder, decoder, decode):
        self.encoder, self.decoder, self.d = encoder, decoder, decode
        self.beam, self.tgt_len = int(decode["beam"]), int(decode["tgt_len"])
        self.offset, self.mask_value = int(decode["position_offset"]), float(decode["mask_value"])
        self.cache = decode["cache"]  # decoder output -> the decoder input it feeds at the next step
        self.cross = decode["cross"]  # encoder output -> decoder input (repeated per hypothesis)
        self.cache_shapes = {i["name"]: [int(x) for x in i["shape"]] for i in decoder.inputs
                             if i["name"] in self.cache.values()}
        self.self_masks = [self_mask(self.tgt_len, t, self.mask_value) for t in range(self.tgt_len)]
        self.positions = [np.full((1, 1), self.offset + t, np.int64) for t in range(self.tgt_len)]

    def encode(self, tokens, positions, mask):
        out = self.encoder.run({"src_tokens": tokens, "src_positions": positions, "src_mask": mask})
        state = {self.cross[k]: np.repeat(v, self.beam, axis=0) for k, v in out.items() if k in self.cross}
        state["src_mask"] = mask  # per sentence
        return state

    def start(self, state):
        for name, shape in self.cache_shapes.items():
            state[name] = np.zeros(shape, np.float32)

    def step(self, state, tokens, step):
        feeds = {"prev_token": tokens[:, step: step + 1].astype(np.int64), "position": self.positions[step],
                 "self_mask": self.self_masks[step]}
        feeds.update(state)
        out = self.decoder.run(feeds)
        for src, dst in self.cache.items():
            state[dst] = out[src]
        return out["logits"]

    def reorder(self, state, order):
        for name in self.cache.values():
            state[name] = state[name][order]


# ---- the search (hat/export/decode.py beam_search, fairseq's) -------------------------------------------------------
def beam_search(runner, state, tokens, beam, tgt_len, pad, eos, unk, lenpen=1.0, max_len_a=0.0, max_len_b=None,
                min_len=1, unk_penalty=0.0, all_steps=True, on_step=None):
    """``hat.export.decode.beam_search`` after the encoder: per sentence, its finished hypotheses best first, as
    (tokens, score) pairs; and the number of decoder steps run. With ``all_steps`` the decoder runs ``tgt_len`` steps
    even when the search finishes earlier (the protocol's step count). ``on_step()`` is called when each step's work
    (decoder call, cache feedback, search) is done."""
    on_step = on_step or (lambda: None)
    bsz = tokens.shape[0]
    src_lengths = (tokens != pad).sum(axis=1)
    max_len_b = tgt_len - 1 if max_len_b is None else max_len_b
    max_len = min(int(max_len_a * int(src_lengths.max()) + max_len_b), tgt_len - 1)
    if max_len < 1:
        raise ValueError("max length %d too small (tgt-len %d)" % (max_len, tgt_len))
    rows, cand_size = bsz * beam, 2 * beam
    runner.start(state)
    out_tokens = np.full((rows, max(max_len + 2, tgt_len + 1)), pad, np.int64)
    out_tokens[:, 0] = eos
    scores = np.zeros((rows, max_len + 1), np.float32)
    finalized = [[] for _ in range(bsz)]
    finished = np.zeros(bsz, bool)
    cands_to_ignore = np.zeros((bsz, beam), bool)
    bbsz_offsets = (np.arange(bsz) * beam)[:, None]
    reorder_state = None
    steps = 0
    for step in range(max_len + 1):
        if reorder_state is not None:
            runner.reorder(state, reorder_state)
        lprobs = log_softmax(runner.step(state, out_tokens, step))
        steps += 1
        lprobs[np.isnan(lprobs)] = -np.inf
        lprobs[:, pad] = -np.inf
        lprobs[:, unk] -= unk_penalty
        if step >= max_len:
            lprobs[:, :eos] = -np.inf
            lprobs[:, eos + 1:] = -np.inf
        elif step < min_len:
            lprobs[:, eos] = -np.inf
        vocab = lprobs.shape[1]
        lp = lprobs.reshape(bsz, beam, vocab)
        if step == 0:
            lp = lp[:, :1, :]
        else:
            lp = lp + scores.reshape(bsz, beam, -1)[:, :, step - 1][:, :, None]
        flat = lp.reshape(bsz, -1)
        k = min(cand_size, flat.shape[1] - 1)
        top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        cand_scores = np.take_along_axis(flat, top, axis=1)
        cand_beams, cand_indices = top // vocab, top % vocab
        cand_bbsz_idx = cand_beams + bbsz_offsets
        eos_mask = (cand_indices == eos) & (cand_scores != -np.inf)
        head = eos_mask[:, :beam]
        head[cands_to_ignore] = False
        head[finished] = False  # finished sentences ride along (static shapes)

        if head.any():
            sel = np.nonzero(head)
            bbsz_idx = cand_bbsz_idx[:, :beam][sel]
            eos_scores = cand_scores[:, :beam][sel].astype(np.float32)
            toks = out_tokens[bbsz_idx, 1: step + 2].copy()
            toks[:, step] = eos
            eos_scores = eos_scores / np.float32((step + 1) ** lenpen)
            seen = []
            for i, idx in enumerate(bbsz_idx):
                sent = int(idx) // beam
                if len(finalized[sent]) < beam:
                    finalized[sent].append((toks[i].tolist(), float(eos_scores[i])))
                if sent not in seen:
                    seen.append(sent)
            for sent in seen:
                if len(finalized[sent]) == beam or step == max_len:
                    finished[sent] = True
        if finished.all():
            on_step()
            break
        eos_mask[:, :beam] = ~((~cands_to_ignore) & (~eos_mask[:, :beam]))
        active_mask = eos_mask.astype(np.int64) * cand_size + np.arange(eos_mask.shape[1])[None, :]
        active_hypos = np.argsort(active_mask, axis=1, kind="stable")[:, :beam]
        cands_to_ignore = np.take_along_axis(active_mask, active_hypos, axis=1) >= cand_size
        active_bbsz_idx = np.take_along_axis(cand_bbsz_idx, active_hypos, axis=1).reshape(-1)
        out_tokens[:, : step + 1] = out_tokens[active_bbsz_idx, : step + 1]
        out_tokens.reshape(bsz, beam, -1)[:, :, step + 1] = np.take_along_axis(cand_indices, active_hypos, axis=1)
        if step > 0:
            scores[:, :step] = scores[active_bbsz_idx, :step]
        scores.reshape(bsz, beam, -1)[:, :, step] = np.take_along_axis(cand_scores, active_hypos, axis=1)
        reorder_state = active_bbsz_idx
        on_step()
    if all_steps:  # the rest of the protocol's steps: same tensor traffic, logits unused
        for step in range(steps, tgt_len):
            runner.step(state, out_tokens, step)
            steps += 1
            on_step()
    return [sorted(f, key=lambda h: -h[1]) for f in finalized], steps


# ---- one model ------------------------------------------------------------------------------------------------------
def measure_model(RKNNLite, bundle, entry, protocol, core_mask, clock=time.perf_counter):
    """Warm-up and timed runs of ``entry``; returns its record fields (raw times in ms, the search's tokens)."""
    d = entry["decode"]
    tok = d["tokens"]
    tgt_len, beam = int(protocol["tgt_len"]), int(protocol["beam"])
    if (int(d["src_len"]), int(d["tgt_len"]), int(d["beam"])) != (int(protocol["src_len"]), tgt_len, beam):
        raise RuntimeError("graphs were exported for src_len %s, tgt_len %s, beam %s; the protocol asks for %s, %d, "
                           "%d" % (d["src_len"], d["tgt_len"], d["beam"], protocol["src_len"], tgt_len, beam))
    enc = Graph(RKNNLite, os.path.join(bundle, entry["encoder"]["file"]), entry["encoder"], core_mask, clock)
    try:
        dec = Graph(RKNNLite, os.path.join(bundle, entry["decoder"]["file"]), entry["decoder"], core_mask, clock)
    except Exception:
        enc.release()
        raise
    try:
        runner = Runner(enc, dec, d)
        sentences = [d["src_tokens"]] * int(d["batch_size"])
        tokens, positions, mask = prepare_source(sentences, int(d["src_len"]), int(tok["pad"]), int(tok["eos"]),
                                                 float(d["mask_value"]))
        search = {"pad": int(tok["pad"]), "eos": int(tok["eos"]), "unk": int(tok["unk"]),
                  "lenpen": float(d.get("lenpen", 1.0))}
        enc_ms, dec_ms, dec_inf_ms, step_ms = [], [], [], []
        first, vary = None, False  # (tokens, score) of the first run's best hypothesis; whether a run differed
        for i in range(int(protocol["warmup"]) + int(protocol["repeats"])):
            dec.busy = 0.0
            t0 = clock()
            state = runner.encode(tokens, positions, mask)
            t1 = clock()
            marks = [t1]
            hyps, steps = beam_search(runner, state, tokens, beam, tgt_len, on_step=lambda: marks.append(clock()),
                                      **search)
            t2 = clock()
            if steps != tgt_len:
                raise RuntimeError("the decode loop ran %d steps, the protocol asks for %d" % (steps, tgt_len))
            if i >= int(protocol["warmup"]):
                enc_ms.append((t1 - t0) * 1000.0)
                dec_ms.append((t2 - t1) * 1000.0)
                dec_inf_ms.append(dec.busy * 1000.0)
                # each step's time; the first also carries the cache reset, as in the host's protocol
                step_ms.append([(b - a) * 1000.0 for a, b in zip(marks, marks[1:])])
            best = hyps[0][0]  # the first sentence's best hypothesis: (tokens, score)
            if first is None:
                first = best
            elif best[0] != first[0]:
                vary = True
        return {"encoder_ms": enc_ms, "decoder_ms": dec_ms, "decoder_step_ms": step_ms,
                "decoder_inference_ms": dec_inf_ms, "steps": tgt_len,
                "tokens": first[0], "score": first[1], "outputs_vary": vary}
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
                except (ValueError, KeyError, TypeError):
                    pass  # a torn last line from an interrupted run
    return keys


def read_manifest(bundle):
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError("%s/manifest.json is not a %s manifest (format %r): rebuild the bundle with this version"
                         % (bundle, MANIFEST_FORMAT, manifest.get("format")))
    return manifest


def where(protocol):
    """The manifest's protocol with this board's model (``/proc/device-tree/model``) and rknn-toolkit-lite2 version
    where the manifest has those fields and they can be read (else as the host wrote them)."""
    out = dict(protocol)
    if "machine" in out:
        try:
            with open("/proc/device-tree/model", "rb") as f:
                model = f.read().decode("utf-8", "replace").strip("\x00 \n")
            if model:
                out["machine"] = "%s (%s)" % (model, out["machine"]) if out["machine"] else model
        except OSError:
            pass
    if "backend_version" in out:
        try:
            from importlib.metadata import version  # Python >= 3.8

            out["backend_version"] = "rknn-toolkit-lite2 " + version("rknn-toolkit-lite2")
        except Exception:
            pass
    return out


def run(bundle, out_path=None, core_mask="auto", RKNNLite=None, clock=time.perf_counter, log=sys.stderr):
    RKNNLite = RKNNLite or _rknnlite()
    manifest = read_manifest(bundle)
    protocol = manifest["protocol"]
    applied = where(protocol)
    out_path = out_path or os.path.join(bundle, "results.jsonl")
    skip = done_keys(out_path)
    mask = core_mask_value(RKNNLite, core_mask)
    models = [m for m in manifest["models"] if m["key"] not in skip]
    log.write("board runner: %d models to measure, %d done before\n" % (len(models), len(skip)))
    for n, entry in enumerate(models, 1):
        rec = {"key": entry["key"], "core_mask": core_mask, "source": "measured:board", "protocol": applied}
        try:
            rec.update(measure_model(RKNNLite, bundle, entry, protocol, mask, clock))
            enc_ms, dec_ms = sorted(rec["encoder_ms"]), sorted(rec["decoder_ms"])
            log.write("[%d/%d] %s: %d timed runs, median encoder %.3f ms, decoder %.3f ms (%d steps, beam %d) "
                      "[measured:board]\n" % (n, len(models), entry["key"], len(enc_ms), enc_ms[len(enc_ms) // 2],
                                               dec_ms[len(dec_ms) // 2], rec["steps"], int(protocol["beam"])))
        except Exception as e:  # record the failure, never a number
            rec = {k: rec[k] for k in ("key", "core_mask", "source", "protocol")}
            rec["error"] = str(e) or type(e).__name__
            log.write("[%d/%d] %s: error: %s\n" % (n, len(models), entry["key"], rec["error"]))
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
    RKNNLite = _rknnlite()
    try:
        read_manifest(a.bundle)
    except ValueError as e:
        sys.stderr.write("error: %s\n" % e)
        return 2
    run(a.bundle, a.out, a.core_mask, RKNNLite=RKNNLite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
