"""hat/latency/board.py, the board runner, at rknn-toolkit-lite2's API boundary.

No board here: :class:`FakeRKNNLite` has rknnlite's call signature and return values and runs the ONNX graphs in
onnxruntime instead of the NPU. The runner must produce the host decoder's output tokens
(:func:`hat.export.decode.translate` over the same graphs) while it times the protocol's runs. Every time below is a
fake's (a fake clock or this machine's wall clock around onnxruntime): nothing here is a board figure."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hat.export import decode
from hat.latency import board, npu_bundle
from hat.latency.onnxruntime import export_onnx, random_model
from hat.latency.protocol import Protocol
from hat.models import ModelOptions
from hat.space import SubConfig

TINY_CFG = {  # a small SubTransformer: 2 + 2 layers, arbitrary ende attention in the second decoder layer
    "encoder-embed-dim-subtransformer": 32, "decoder-embed-dim-subtransformer": 32,
    "encoder-ffn-embed-dim-all-subtransformer": [64, 32], "decoder-ffn-embed-dim-all-subtransformer": [32, 64],
    "encoder-layer-num-subtransformer": 2, "decoder-layer-num-subtransformer": 2,
    "encoder-self-attention-heads-all-subtransformer": [4, 2],
    "decoder-self-attention-heads-all-subtransformer": [2, 4],
    "decoder-ende-attention-heads-all-subtransformer": [4, 2],
    "decoder-arbitrary-ende-attn-all-subtransformer": [-1, 1], "qkv-dim-subtransformer": 32,
}


class FakeRKNNLite:
    """Stands in for ``rknnlite.api.RKNNLite`` (rknn-toolkit-lite2 2.3.2, ``rknnlite/api/rknn_lite.py`` in
    airockchip/rknn-toolkit2 @ 42aa1d4, the newest lite wheel published there) without an NPU: it runs the model
    file in onnxruntime, so ``file`` entries of the manifest point at ``.onnx`` files here.

    Taken from that source: the core-mask constants (lines 15-21); ``__init__(verbose=False, verbose_file=None)``
    (line 26); ``load_rknn(path)`` returns -1 when the file is missing, else 0 (lines 57-79);
    ``init_runtime(target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO)`` returns 0 or -1
    (lines 115-191; -1 when no model was loaded); ``inference(inputs, data_type=None, data_format=None,
    inputs_pass_through=None, get_frame_id=False)`` returns the outputs as a list of numpy arrays, or None when the
    runtime is not initialised or a step fails (lines 193-235; note that ``data_type`` is the second positional
    parameter: callers must pass ``data_format`` by keyword); ``release()`` returns None (lines 266-275).
    Records every call in ``calls``; ``now`` is a fake clock (seconds) that each inference advances by ``step_s``."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2, NPU_CORE_ALL = (
        0, 1, 2, 4, 3, 7, 0xffff)
    calls = []
    now = 0.0
    step_s = 0.001
    fail_inference_of = None  # a file name whose inference returns None (as rknnlite does on a failure)

    def __init__(self, verbose=False, verbose_file=None):
        self.path, self.session = None, None

    def load_rknn(self, path):
        FakeRKNNLite.calls.append(("load_rknn", os.path.basename(path)))
        if not os.path.exists(path):
            return -1
        self.path = path
        return 0

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO):
        from hat.export.runtime import ort_session

        FakeRKNNLite.calls.append(("init_runtime", os.path.basename(self.path or ""), core_mask))
        if self.path is None:
            return -1
        try:
            self.session = ort_session(self.path, 1)
        except Exception:
            return -1
        return 0

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False):
        name = os.path.basename(self.path or "")
        FakeRKNNLite.calls.append(("inference", name, tuple(a.shape for a in inputs), data_format))
        FakeRKNNLite.now += FakeRKNNLite.step_s
        if self.session is None or name == FakeRKNNLite.fail_inference_of:
            return None
        specs = self.session.get_inputs()
        if len(inputs) != len(specs):
            return None
        for spec, a in zip(specs, inputs):
            if list(spec.shape) != list(a.shape):
                return None
        return self.session.run(None, {s.name: a for s, a in zip(specs, inputs)})

    def release(self):
        FakeRKNNLite.calls.append(("release", os.path.basename(self.path or "")))
        self.session = None


def _opt():
    return ModelOptions(120, 120, share_all_embeddings=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random SubTransformer exported as the latency backends export it, and a bundle manifest for it made
    the way npu_bundle makes one, its files pointing at the .onnx graphs."""
    d = tmp_path_factory.mktemp("board")
    p = Protocol(src_len=7, tgt_len=5, beam=3, warmup=1, repeats=4)
    cfg = SubConfig.from_hat_dict(TINY_CFG)
    model = random_model(cfg, _opt(), seed=3)
    name = export_onnx(cfg, _opt(), p, str(d), model)
    entry = npu_bundle.model_entry(cfg, str(d), name, {"enc": f"{name}_enc.onnx", "dec": f"{name}_dec.onnx"},
                                   npu_bundle.source_sentence(model, p))
    manifest = {"format": npu_bundle.BUNDLE_FORMAT, "protocol": npu_bundle.bundle_protocol(p, "rk3588").to_dict(),
                "models": [entry]}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d, p, name, entry


def _run(bundle, **kw):
    out = os.path.join(str(bundle), "results.jsonl")
    if os.path.exists(out):
        os.remove(out)
    kw.setdefault("log", io.StringIO())
    board.run(str(bundle), out_path=out, RKNNLite=FakeRKNNLite, **kw)
    return [json.loads(line) for line in open(out)]


def test_board_runner_decodes_the_host_decoders_tokens(exported):
    bundle, p, name, entry = exported
    FakeRKNNLite.calls = []
    (rec,) = _run(bundle, core_mask="0_1_2")
    assert "error" not in rec, rec.get("error")
    assert rec["key"] == entry["key"] and rec["source"] == "measured:board"
    assert Protocol.from_dict(rec["protocol"]).mismatch(p.at("npu", "", "")) is None

    host = decode.OrtRunner(str(bundle), name)
    (best,) = decode.translate(host, [entry["decode"]["src_tokens"]], p.beam, p.src_len, p.tgt_len)
    assert rec["tokens"] == best.tokens  # the same search over the same graphs and inputs
    assert rec["score"] == pytest.approx(best.score, abs=1e-5)
    assert rec["outputs_vary"] is False
    # the sentence is the onnxruntime backend's: the first row of its encoder input, without padding
    assert entry["decode"]["src_tokens"][-1] == entry["decode"]["tokens"]["eos"]
    assert len(entry["decode"]["src_tokens"]) <= p.src_len

    # one raw time per timed run, the protocol's number of runs; tgt_len decoder steps per run, warm-up included
    assert len(rec["encoder_ms"]) == len(rec["decoder_ms"]) == len(rec["decoder_inference_ms"]) == p.repeats
    assert len(rec["decoder_step_ms"]) == p.repeats and {len(r) for r in rec["decoder_step_ms"]} == {p.tgt_len}
    assert rec["steps"] == p.tgt_len
    infer = [c for c in FakeRKNNLite.calls if c[0] == "inference"]
    dec_calls = [c for c in infer if c[1] == f"{name}_dec.onnx"]
    assert len(dec_calls) == (p.warmup + p.repeats) * p.tgt_len
    assert len(infer) - len(dec_calls) == p.warmup + p.repeats  # one encoder call per run
    assert ("init_runtime", f"{name}_enc.onnx", FakeRKNNLite.NPU_CORE_0_1_2) in FakeRKNNLite.calls
    assert FakeRKNNLite.calls.count(("release", f"{name}_enc.onnx")) == 1
    # beam rows and the manifest's input order; 4-D inputs passed as NCHW
    dec_inputs = entry["decoder"]["inputs"]
    assert dec_calls[0][2] == tuple(tuple(i["shape"]) for i in dec_inputs)
    assert dec_inputs[0]["name"] == "prev_token" and dec_inputs[0]["shape"] == [p.beam, 1]
    assert dec_calls[0][3] == [i["layout"] or "nchw" for i in dec_inputs]


class _Recording(FakeRKNNLite):
    """Also keeps every decoder feed and output, to check the cache traffic."""

    feeds, outs = [], []

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False):
        outs = super().inference(inputs, data_type, data_format, inputs_pass_through, get_frame_id)
        if self.path.endswith("_dec.onnx"):
            _Recording.feeds.append([a.copy() for a in inputs])
            _Recording.outs.append([o.copy() for o in outs])
        return outs


def test_board_runner_feeds_each_steps_caches_to_the_next(exported):
    bundle, p, name, entry = exported
    _Recording.feeds, _Recording.outs = [], []
    out = os.path.join(str(bundle), "results.jsonl")
    if os.path.exists(out):
        os.remove(out)
    board.run(str(bundle), out_path=out, RKNNLite=_Recording, log=io.StringIO())
    ins = [i["name"] for i in entry["decoder"]["inputs"]]
    outs = entry["decoder"]["outputs"]
    cache = entry["decode"]["cache"]
    assert cache == {f"new_self_{kv}_{i}": f"self_{kv}_{i}" for i in range(2) for kv in "kv"}
    feeds = _Recording.feeds[: p.tgt_len]  # the warm-up run
    for step, f in enumerate(feeds):
        f = dict(zip(ins, f))
        assert int(f["position"][0, 0]) == entry["decode"]["position_offset"] + step
        assert (f["self_mask"] == 0).sum() == step + 1
        assert f["cross_k_1"].shape[0] == p.beam  # the encoder's keys, one copy per hypothesis
        if step == 0:
            assert not f["self_k_0"].any()
        else:
            prev = dict(zip(outs, _Recording.outs[step - 1]))
            # the caches the last step returned, rows reordered by the hypotheses the search kept
            rows = [np.flatnonzero([np.array_equal(f["self_k_0"][r], prev["new_self_k_0"][q])
                                    for q in range(p.beam)]) for r in range(p.beam)]
            assert all(len(r) for r in rows), "every row's cache comes from a row of the step before"


def test_board_times_are_the_clocks_and_collect_computes_the_statistics(exported, tmp_path):
    from hat.latency.dataset import DatasetWriter, read_rows

    bundle, p, name, entry = exported
    FakeRKNNLite.now, FakeRKNNLite.step_s = 0.0, 0.001
    (rec,) = _run(bundle, clock=lambda: FakeRKNNLite.now)
    assert rec["encoder_ms"] == pytest.approx([1.0] * p.repeats)  # one 1 ms inference
    assert rec["decoder_ms"] == pytest.approx([float(p.tgt_len)] * p.repeats)  # tgt_len steps of 1 ms
    assert rec["decoder_step_ms"] == [pytest.approx([1.0] * p.tgt_len)] * p.repeats
    assert rec["decoder_inference_ms"] == pytest.approx(rec["decoder_ms"])
    for k in ("latency_mean_encoder", "latency_mean_decoder"):
        assert k not in rec  # raw times only: the host computes the statistics

    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(rec) + "\n")
    cfg = SubConfig.from_hat_dict(entry["config"])
    for estimator in ("trimmed-mean", "call-min", "step-min"):
        q = Protocol(**dict(p.to_dict(), estimator=estimator, backend=""))
        writer = DatasetWriter(str(tmp_path / f"{estimator}.csv"))
        if estimator != rec["protocol"]["estimator"]:
            counts = npu_bundle.collect(str(results), writer, {cfg.key(): cfg}, q, log=lambda s: None)
            assert counts["added"] == 0 and counts["bad"] == 1, "measured with another estimator: not this protocol"
        rec_q = dict(rec, protocol=dict(rec["protocol"], estimator=estimator))
        if estimator != "trimmed-mean":  # per-step times that tell the estimators apart: step s >= 1 of run r takes
            # 0.2 + r + 0.01 s ms (so its own min is 0.2 + 0.01 s, the min of all later steps 0.21), step 0 0.5 + r
            rec_q["decoder_step_ms"] = [[0.5 + r] + [0.2 + r + 0.01 * s for s in range(1, p.tgt_len)]
                                        for r in range(p.repeats)]
        results.write_text(json.dumps(rec_q) + "\n")
        counts = npu_bundle.collect(str(results), writer, {cfg.key(): cfg}, q, log=lambda s: None)
        assert counts["added"] == 1
        (row,) = read_rows(writer.path)
        assert row["key"] == cfg.key() and row["backend"] == "npu" and row["source"] == "measured:board"
        assert float(row["latency_mean_encoder"]) == pytest.approx(1.0)
        want = {"trimmed-mean": float(p.tgt_len), "step-min": 0.5 + 0.21 * (p.tgt_len - 1),
                "call-min": 0.5 + sum(0.2 + 0.01 * s for s in range(1, p.tgt_len))}[estimator]
        assert float(row["latency_mean_decoder"]) == pytest.approx(want)
        assert json.loads(row["protocol"])["estimator"] == estimator
        results.write_text(json.dumps(rec) + "\n")

    # a record without the protocol's number of runs is not collected
    short = dict(rec, encoder_ms=rec["encoder_ms"][:-1])
    results.write_text(json.dumps(short) + "\n")
    writer = DatasetWriter(str(tmp_path / "short.csv"))
    assert npu_bundle.collect(str(results), writer, {cfg.key(): cfg}, p, log=lambda s: None)["bad"] == 1
    assert read_rows(writer.path) == []


def test_board_runner_resumes_and_records_failures_without_numbers(exported, tmp_path):
    bundle, p, name, entry = exported
    out = os.path.join(str(bundle), "results.jsonl")
    (rec,) = _run(bundle)
    FakeRKNNLite.calls = []
    board.run(str(bundle), out_path=out, RKNNLite=FakeRKNNLite, log=io.StringIO())
    assert FakeRKNNLite.calls == [], "a model already in the output is not measured again"

    FakeRKNNLite.fail_inference_of = f"{name}_dec.onnx"
    try:
        (rec,) = _run(bundle)
    finally:
        FakeRKNNLite.fail_inference_of = None
    assert "inference returned nothing" in rec["error"] and "encoder_ms" not in rec and "tokens" not in rec

    missing = json.loads((bundle / "manifest.json").read_text())
    missing["models"][0]["decoder"]["file"] = "absent_dec.rknn"
    other = tmp_path / "b2"
    other.mkdir()
    for f in os.listdir(bundle):
        if f.endswith(".onnx"):
            os.symlink(os.path.join(str(bundle), f), other / f)
    (other / "manifest.json").write_text(json.dumps(missing))
    FakeRKNNLite.calls = []
    (rec,) = _run(other)
    assert "load_rknn failed" in rec["error"] and "encoder_ms" not in rec
    assert ("release", f"{name}_enc.onnx") in FakeRKNNLite.calls, "the encoder is released when the decoder fails"


def test_board_runner_refuses_an_old_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "hat-npu-bundle/1", "protocol": {}, "models": []}))
    with pytest.raises(ValueError, match="not a hat-npu-bundle/2 manifest"):
        board.run(str(tmp_path), RKNNLite=FakeRKNNLite, log=io.StringIO())
    assert npu_bundle.BUNDLE_FORMAT == board.MANIFEST_FORMAT


def test_board_runner_imports_only_stdlib_numpy_and_rknnlite_and_runs_on_python_3_9_syntax():
    import ast

    src = open(board.__file__).read()
    tree = ast.parse(src, feature_version=(3, 9))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"numpy", "rknnlite"}
    assert mods <= allowed, mods - allowed


def test_board_runner_without_rknnlite_says_so(exported):
    bundle = exported[0]
    r = subprocess.run([sys.executable, board.__file__, str(bundle), "--out", os.devnull], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "rknnlite" in r.stderr and "not installed" in r.stderr
