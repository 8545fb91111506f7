"""Latency backends beyond torch eager (hat/latency/onnxruntime.py, npu_bundle.py, adb.py; made by name with
hat/latency/backends.py): onnxruntime measured for real on a tiny model; the npu bundle built for real with
rknn-toolkit2, then run by the board runner with a fake of rknn-toolkit-lite2 (FakeRKNNLite, tests/test_board.py:
rknnlite's call signature, onnxruntime instead of the NPU) and collected; npu-adb driven at its API boundary with a
fake of rknn-toolkit2 2.5.0 (FakeRKNNToolkit). No figure here comes from a board: every board figure below is a
fake's and is checked as such."""
import io
import json
import os

import pytest

from conftest import FIXTURES, run_script
from hat.config import load_yaml
from hat.errors import HatError
from hat.latency import adb, backends, board, npu_bundle
from hat.latency import onnxruntime as ort_backend
from hat.latency.dataset import read_rows, sample_configs
from hat.latency.protocol import Protocol, measure
from hat.models import ModelOptions
from hat.space import SearchSpace
from test_board import FakeRKNNLite

TINY = os.path.join(FIXTURES, "tiny_latency.yml")
TINY_PROTOCOL = {"src_len": 6, "tgt_len": 4, "beam": 2, "warmup": 1, "repeats": 3, "trim": 0.1}  # the YAML's


def _space():
    return SearchSpace.from_dict(load_yaml(TINY))


def _opt():
    return ModelOptions(300, 300, share_all_embeddings=True)


# ---- onnxruntime -----------------------------------------------------------------------------------------------------
def test_onnxruntime_backend_writes_measured_rows_and_cleans_up(tmp_path):
    out, work = tmp_path / "ort.csv", tmp_path / "work"
    r = run_script("latency_dataset.py", f"--configs={TINY}", "--latency-backend", "onnxruntime",
                   "--lat-dataset-size", "2", "--latiter", "2", "--lat-threads", "1", "--lat-dataset-path", str(out),
                   "--lat-work-dir", str(work))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "measured:onnxruntime" in r.stdout and "1 intra-op thread" in r.stdout
    rows = read_rows(str(out))
    assert len(rows) == 2
    for row in rows:
        assert row["backend"] == "onnxruntime" and row["source"] == "measured:onnxruntime"
        assert float(row["latency_mean_encoder"]) > 0 and float(row["latency_mean_decoder"]) > 0
    assert not any(files for _, _, files in os.walk(work)), "exported models are removed after measuring"


def test_onnxruntime_dataset_in_interleaved_passes_records_them_and_refuses_one_pass_rows(tmp_path):
    """lat-passes: blocks of lat-block SubTransformers take their passes in turn (hat.latency.protocol.measure_block);
    every row records the passes, and the same file measured in one pass is another protocol."""
    out = tmp_path / "ort.csv"
    args = ["latency_dataset.py", f"--configs={TINY}", "--latency-backend", "onnxruntime", "--lat-dataset-size", "5",
            "--latiter", "4", "--lat-threads", "1", "--lat-dataset-path", str(out)]
    r = run_script(*args, "--lat-passes", "2", "--lat-block", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 timed runs in 2 interleaved passes" in r.stdout
    rows = read_rows(str(out))
    assert len(rows) == 5 and len({row["key"] for row in rows}) == 5  # 2 + 2 + a block of 1
    assert {(json.loads(row["protocol"])["passes"], json.loads(row["protocol"])["block"]) for row in rows} == {(2, 2)}
    assert all(float(row["latency_mean_decoder"]) > 0 for row in rows)
    before = out.read_bytes()
    r = run_script(*args[:5], "6", *args[6:])
    assert r.returncode == 2 and "another protocol (passes 2 vs 1; block 2 vs 1)" in r.stderr and out.read_bytes() == before
    r = run_script(*args, "--lat-passes", "3")
    assert r.returncode == 2 and "passes must be >= 1 and divide the timed runs" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


class _Recorder:
    """Wraps an onnxruntime session and keeps every feed dict (and the outputs) of the decoder graph."""

    def __init__(self, sess):
        self.sess, self.feeds, self.outs = sess, [], []

    def run(self, names, feeds):
        out = self.sess.run(names, feeds)
        self.feeds.append(dict(feeds))
        self.outs.append(dict(zip(names, out)))
        return out


def test_onnxruntime_decoder_steps_feed_their_mask_and_the_previous_caches_and_models_are_reused(tmp_path):
    p = Protocol(src_len=6, tgt_len=4, beam=2, warmup=0, repeats=1)
    cfg = _space().smallest()
    b = ort_backend.OrtBackend(_opt(), p, work_dir=str(tmp_path), threads=1, keep=True)
    h = b.load(cfg)
    rec = h["dec"] = _Recorder(h["dec"])
    m = measure(b, cfg, p, handle=h)
    assert m.source == "measured:onnxruntime" and len(m.decoder_ms) == 1
    assert len(rec.feeds) == p.tgt_len
    for step, feeds in enumerate(rec.feeds):
        assert (feeds["self_mask"] == 0).sum() == step + 1  # slots 0..step valid
        assert int(feeds["position"][0, 0]) == 2 + step  # padding_idx + 1 + step
        assert feeds["cross_k_0"].shape[0] == p.beam  # the encoder's keys, one copy per hypothesis
        if step:
            assert feeds["self_k_0"] is rec.outs[step - 1]["new_self_k_0"]  # the caches the last step returned
        else:
            assert not feeds["self_k_0"].any()
    onnx = tmp_path / cfg.key() / f"sub-{cfg.key()}_enc.onnx"
    b.unload(h)
    assert onnx.is_file(), "lat-keep-models keeps the exported graphs"
    mtime = onnx.stat().st_mtime_ns
    b.unload(b.load(cfg))
    assert onnx.stat().st_mtime_ns == mtime, "an exported SubTransformer is reused, not exported again"


# ---- npu: bundle -> board runner (fake rknnlite) -> collect ----------------------------------------------------------
class _BundleRKNNLite(FakeRKNNLite):
    """FakeRKNNLite for a real bundle: loads the kept ONNX graph a .rknn file was built from (lat-keep-models keeps
    them in <bundle>/.build/<key>/), so that the board runner decodes for real."""

    def load_rknn(self, path):
        ret = super().load_rknn(path)
        if ret == 0:
            bundle, fname = os.path.split(path)
            name = fname.split(".")[0]  # sub-<key>_<part>
            key = name[len("sub-"):].rsplit("_", 1)[0]
            self.path = os.path.join(bundle, ".build", key, name + ".onnx")
        return ret


@pytest.mark.slow
def test_npu_bundle_board_run_with_fake_rknnlite_and_collect(tmp_path, monkeypatch, capsys):
    pytest.importorskip("rknn.api", reason="rknn-toolkit2 not installed (make install puts it in .venv)")
    from hat.export import decode
    from hat.stages import latency_dataset as run

    csv_path = tmp_path / "lat.csv"
    bundle = tmp_path / "lat_npu_bundle"
    r = run_script("latency_dataset.py", f"--configs={TINY}", "--latency-backend", "npu", "--lat-dataset-size", "1",
                   "--lat-dataset-path", str(csv_path), "--npu-core-mask", "0_1_2", "--lat-keep-models")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"python3 board.py {bundle.name} --core-mask 0_1_2" in r.stdout
    assert "--collect" in r.stdout and "Nothing was timed on this machine" in r.stdout
    assert not csv_path.exists() or read_rows(str(csv_path)) == [], "nothing is measured on the host"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == npu_bundle.BUNDLE_FORMAT == board.MANIFEST_FORMAT
    proto = Protocol.from_dict(manifest["protocol"])
    assert proto.backend == "npu" and proto.machine == "RK3588 board" and manifest["target_platform"] == "rk3588"
    assert proto.mismatch(Protocol(**TINY_PROTOCOL).at("npu", "", "")) is None
    cfg = _space().largest()
    (entry,) = manifest["models"]
    assert entry["key"] == cfg.key() and entry["config"] == cfg.to_hat_dict()
    for part in ("encoder", "decoder"):
        assert (bundle / entry[part]["file"]).stat().st_size > 0
    dec = {i["name"]: i for i in entry["decoder"]["inputs"]}
    assert dec["self_k_0"]["layout"] == "nchw" and len(dec["self_k_0"]["shape"]) == 4
    assert dec["prev_token"] == {"name": "prev_token", "shape": [2, 1], "dtype": "int64", "layout": None}
    assert entry["decoder"]["outputs"][0] == "logits" and "new_self_v_1" in entry["decoder"]["outputs"]
    d = entry["decode"]
    assert (d["beam"], d["tgt_len"], d["src_len"], d["position_offset"]) == (2, 4, 6, 2)
    assert d["cache"]["new_self_k_0"] == "self_k_0" and d["cross"]["cross_v_1"] == "cross_v_1"
    assert d["tokens"]["eos"] == d["src_tokens"][-1]
    assert (bundle / "board.py").read_text() == open(board.__file__).read()

    # resumable: a second bundle run builds nothing
    monkeypatch.setattr(npu_bundle, "build_rknn", lambda *a, **k: pytest.fail("rebuilt a bundled SubTransformer"))
    args = type("Args", (), dict(lat_work_dir=None, lat_dataset_path=str(csv_path), target_platform="rk3588",
                                 npu_core_mask="auto", configs=TINY, lat_keep_models=True))()
    npu_bundle.make_bundle(args, _opt(), Protocol(**TINY_PROTOCOL), [cfg], log=lambda s: None)

    # the board runner with the fake rknnlite over the kept ONNX graphs: 1 ms per inference on a fake clock
    FakeRKNNLite.now, FakeRKNNLite.step_s = 0.0, 0.001
    results = board.run(str(bundle), core_mask="0_1_2", RKNNLite=_BundleRKNNLite, clock=lambda: FakeRKNNLite.now,
                        log=io.StringIO())
    (rec,) = [json.loads(line) for line in open(results)]
    build = bundle / ".build" / cfg.key()
    (best,) = decode.translate(decode.OrtRunner(str(build), f"sub-{cfg.key()}"), [d["src_tokens"]], 2, 6, 4)
    assert rec["tokens"] == best.tokens and len(rec["encoder_ms"]) == TINY_PROTOCOL["repeats"]
    assert rec["protocol"]["backend"] == "npu"

    capsys.readouterr()
    assert run.main([f"--configs={TINY}", "--lat-dataset-size", "1", "--lat-dataset-path", str(csv_path),
                     "--collect", results]) == 0
    assert "collected 1 rows" in capsys.readouterr().out
    (row,) = read_rows(str(csv_path))
    assert row["key"] == cfg.key() and row["backend"] == "npu" and row["source"] == "measured:board"
    assert float(row["latency_mean_encoder"]) == pytest.approx(1.0)  # the fake's 1 ms per inference
    assert float(row["latency_mean_decoder"]) == pytest.approx(4.0)  # 4 decoder steps


# ---- collect: errors are reported, never turned into numbers ---------------------------------------------------------
def _result(key, enc=1.5, dec=6.0, **kw):
    """A board result line: raw per-run times (3 timed runs, TINY_PROTOCOL's repeats)."""
    proto = npu_bundle.bundle_protocol(Protocol(**TINY_PROTOCOL), "rk3588").to_dict()
    rec = {"key": key, "core_mask": "auto", "source": "measured:board", "protocol": proto,
           "encoder_ms": [enc] * 3, "decoder_ms": [dec] * 3, "decoder_step_ms": [[dec / 4] * 4] * 3,
           "decoder_inference_ms": [dec] * 3, "steps": 4, "tokens": [5, 2], "score": -1.0, "outputs_vary": False}
    rec.update(kw)
    return rec


def test_collect_skips_error_lines_and_keeps_the_boards_figures(tmp_path, capsys):
    from hat.stages import latency_dataset as run

    k1, k2, k3 = [c.key() for c in sample_configs(_space(), 3, 1)]
    results = tmp_path / "results.jsonl"
    lines = [
        json.dumps(_result(k1, enc=1.25, dec=7.5)),
        json.dumps({"key": k2, "core_mask": "auto", "source": "measured:board", "protocol": _result(k2)["protocol"],
                    "error": "init_runtime failed for x.rknn"}),
        json.dumps(_result("ffffffffffff")),  # not a config of this dataset, no manifest
        json.dumps(_result(k3, protocol=dict(_result(k3)["protocol"], tgt_len=30))),  # another protocol
        '{"key": "' + k3 + '", "encoder_ms": [1.0',  # torn by an interrupted run
    ]
    results.write_text("\n".join(lines) + "\n")
    csv_path = tmp_path / "lat.csv"
    argv = [f"--configs={TINY}", "--lat-dataset-size", "3", "--lat-dataset-path", str(csv_path),
            "--collect", str(results)]
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert "init_runtime failed for x.rknn" in out and "no figure taken" in out
    assert "ffffffffffff is neither in the bundle manifest" in out and "another protocol" in out
    rows = read_rows(str(csv_path))
    assert [r["key"] for r in rows] == [k1]
    assert float(rows[0]["latency_mean_encoder"]) == 1.25 and float(rows[0]["latency_mean_decoder"]) == 7.5
    assert rows[0]["source"] == "measured:board" and rows[0]["backend"] == "npu"
    assert run.main(argv) == 0  # collecting again adds nothing
    assert len(read_rows(str(csv_path))) == 1


# ---- npu-adb, at its API boundary ------------------------------------------------------------------------------------
_FREQ = ("CPU Current Frequency List:\n    - 2256000\nNPU Current Frequency List:\n    - 1000000000\n"
         "DDR Current Frequency List:\n    - 2112000000\n")


class FakeRKNNToolkit:
    """Stands in for rknn-toolkit2 2.5.0's ``RKNN`` class (.venv/.../rknn/api/rknn.py) with a board on USB: no board,
    no adb; every call is recorded.

    From that file: the core-mask constants (lines 25-31); ``RKNN(verbose=False, verbose_file=None)`` (line 33);
    ``load_rknn(path)`` -> 0 / -1 (lines 241-247); ``init_runtime(target=None, device_id=None, perf_debug=False,
    eval_mem=False, async_mode=False, core_mask=NPU_CORE_AUTO, fallback_prior_device="cpu")`` -> 0 / -1
    (lines 261-281); ``eval_perf(is_print=True, fix_freq=True)`` documented as "Performance Result (dict)"
    (lines 295-302); ``eval_memory(is_print=True)`` -> "memory_detail (Dict)" (lines 304-310); ``release()`` -> None
    (lines 403-411).

    What the values are: rknn.py wraps a compiled ``RKNNBase``, whose ``eval_perf`` / ``eval_memory`` were run here
    against a stand-in runtime (no board). ``eval_perf`` returns the report TEXT (frequency lists, then
    ``Total Time(us): N`` / ``FPS`` with ``perf_debug=False``, or the runtime's per-layer table ending in ``Total
    Operator Elapsed Per Frame Time(us): N`` with ``perf_debug=True``), not the dict its docstring names; the dict the
    toolkit builds elsewhere (``RKNNBase._collect_hardware_perf_detail``) has the keys ``string``, ``layers``,
    ``total_time``. ``perf_returns`` picks which one this fake returns ("text": 2.5.0's behaviour, "dict": the
    documented type). ``eval_memory`` returns ``{'weight_memory', 'internal_memory', 'other_memory',
    'total_memory'}`` in bytes (``RKNNBase._collect_memory_detail``), and refuses a runtime without ``eval_mem``."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2, NPU_CORE_ALL = (
        0x0, 0x1, 0x2, 0x4, 0x3, 0x7, 0xffff)
    PERF_US = {"enc": 1234.0, "dec": 321.0}
    DEBUG_PERF_US = {"enc": 1500.0, "dec": 400.0}  # perf_debug=True: the per-layer sum, slower
    MEMORY_BYTES = {"enc": 3 * 2**20, "dec": 5 * 2**20}
    calls = []
    no_board = False
    perf_returns = "text"

    def __init__(self, verbose=False, verbose_file=None):
        self.part, self.runtime = None, None

    def load_rknn(self, path):
        self.part = "enc" if "_enc." in os.path.basename(path) else "dec"
        FakeRKNNToolkit.calls.append(("load_rknn", self.part))
        return 0 if os.path.isfile(path) else -1

    def init_runtime(self, target=None, device_id=None, perf_debug=False, eval_mem=False, async_mode=False,
                     core_mask=NPU_CORE_AUTO, fallback_prior_device="cpu"):
        FakeRKNNToolkit.calls.append(("init_runtime", self.part, dict(target=target, device_id=device_id,
                                                                      perf_debug=perf_debug, eval_mem=eval_mem,
                                                                      core_mask=core_mask)))
        if FakeRKNNToolkit.no_board:  # what rknn-toolkit2 2.5.0 prints and raises when adb sees no device
            print("\x1b[1;31mE\x1b[0m \x1b[1;31minit_runtime: Get board target failed, ret code: 1. error: no "
                  "devices/emulators found\x1b[0m", flush=True)
            raise ValueError("Traceback (most recent call last):\n  File \"rknn/api/rknn_platform.py\", line 591, "
                             "in rknn.api.rknn_platform.get_board_info\nRuntimeError\n")
        self.runtime = dict(perf_debug=perf_debug, eval_mem=eval_mem)
        return 0

    def eval_perf(self, is_print=True, fix_freq=True):
        FakeRKNNToolkit.calls.append(("eval_perf", self.part, self.runtime["perf_debug"]))
        if self.runtime["perf_debug"]:
            us = self.DEBUG_PERF_US[self.part]
            text = (_FREQ + "Warning: The performance result is just for debugging, may worse than actual "
                    "performance!\n" + "-" * 40 + "\nID   OpType   DataType Target ... Time(us) ... FullName\n"
                    f"1    Conv     FLOAT16  NPU    ... {us:.0f} ... Conv:x\n" + "-" * 40 +
                    f"\nTotal Operator Elapsed Per Frame Time(us): {us:.0f}\n"
                    "Total Memory Read/Write Per Frame Size(KB): 9\n")
        else:
            us = self.PERF_US[self.part]
            text = _FREQ + f"Total Time(us): {us:.0f}\nFPS: {1e6 / us:.2f}\n"
        if is_print:
            print(text)
        if FakeRKNNToolkit.perf_returns == "dict":
            # total_time as RKNNBase._collect_hardware_perf_detail leaves it
            return {"string": text, "layers": {}, "total_time": 0}
        return text

    def eval_memory(self, is_print=True):
        FakeRKNNToolkit.calls.append(("eval_memory", self.part))
        if not self.runtime["eval_mem"]:
            raise ValueError("When init runtime, parameter <eval_mem> should be set to True, or we can not eval "
                             "memory!")
        total = self.MEMORY_BYTES[self.part]
        detail = {"weight_memory": total // 2, "internal_memory": total // 4, "other_memory": total // 4,
                  "total_memory": total}
        if is_print:
            print(f"    Total Memory: {total / 2**20:.2f} MiB")
        return detail

    def release(self):
        FakeRKNNToolkit.calls.append(("release", self.part))
        self.runtime = None


def fake_build_rknn(onnx_dir, name, platform, rknn_dir):
    """Stands in for the rknn-toolkit2 build (the real one is exercised by the npu bundle test): empty .rknn files."""
    from hat.export import read_sidecar

    out = {}
    for part in ("enc", "dec"):
        fname = f"{name}_{part}.{platform}.fp16.rknn"
        open(os.path.join(rknn_dir, fname), "wb").close()
        out[part] = {"rknn": fname, "inputs": read_sidecar(onnx_dir, name, part)["inputs"]}
    return out


def _adb_args(tmp_path, **kw):
    a = dict(lat_work_dir=str(tmp_path / "work"), lat_threads=None, lat_keep_models=False, target_platform="rk3588",
             device_id="0123ABCD", npu_core_mask="0_1")
    a.update(kw)
    return type("Args", (), a)()


@pytest.mark.parametrize("perf_returns", ["text", "dict"])
def test_npu_adb_reports_the_boards_eval_perf_and_eval_memory(tmp_path, monkeypatch, perf_returns):
    monkeypatch.setattr(npu_bundle, "build_rknn", fake_build_rknn)
    monkeypatch.setattr(FakeRKNNToolkit, "perf_returns", perf_returns)
    FakeRKNNToolkit.calls, FakeRKNNToolkit.no_board = [], False
    p = Protocol(src_len=6, tgt_len=4, beam=2, warmup=1, repeats=3)
    b = backends.make("npu-adb", _adb_args(tmp_path), _opt(), p, toolkit=FakeRKNNToolkit, log=lambda s: None)
    m = measure(b, _space().smallest(), p)
    assert m.source == "extrapolated:board-adb"  # the decoder figure is one step x tgt_len
    assert "[measured:board-adb]" in b.detail and "[extrapolated:board-adb]" in b.detail
    assert m.encoder_ms == [1.234] * 3  # exactly the fake board's eval_perf totals (perf_debug off)
    assert m.decoder_ms == pytest.approx([0.321 * 4] * 3, rel=1e-12)  # one step's total x tgt_len steps
    assert m.extra == {"measured_memory_mb": 8.0}  # (3 + 5) MiB: eval_memory's total_memory
    inits = [c for c in FakeRKNNToolkit.calls if c[0] == "init_runtime"]
    timed = dict(target="rk3588", device_id="0123ABCD", perf_debug=False, eval_mem=False, core_mask=3)
    assert inits == [("init_runtime", "enc", timed), ("init_runtime", "dec", timed),
                     ("init_runtime", "enc", dict(timed, eval_mem=True)),
                     ("init_runtime", "dec", dict(timed, eval_mem=True))]
    perf = [c for c in FakeRKNNToolkit.calls if c[0] == "eval_perf"]
    assert perf.count(("eval_perf", "enc", False)) == 4 and perf.count(("eval_perf", "dec", False)) == 4
    assert FakeRKNNToolkit.calls.count(("release", "enc")) == 2 == FakeRKNNToolkit.calls.count(("release", "dec"))
    assert not any(files for _, _, files in os.walk(tmp_path / "work")), "built models are removed after measuring"


def test_npu_adb_per_layer_profile_uses_a_perf_debug_runtime_and_no_figure_of_it(tmp_path, monkeypatch):
    monkeypatch.setattr(npu_bundle, "build_rknn", fake_build_rknn)
    FakeRKNNToolkit.calls, FakeRKNNToolkit.no_board = [], False
    p = Protocol(src_len=6, tgt_len=4, beam=2, warmup=0, repeats=1)
    b = backends.make("npu-adb", _adb_args(tmp_path, lat_keep_models=True), _opt(), p, toolkit=FakeRKNNToolkit,
                      log=lambda s: None)
    h = b.load(_space().smallest())
    files = b.profile_layers(h)
    m = measure(b, _space().smallest(), p, handle=h)
    b.unload(h)
    for part in ("enc", "dec"):
        text = open(files[part]).read()
        assert "Conv:x" in text and "Total Operator Elapsed Per Frame Time(us)" in text
        assert ("init_runtime", part, dict(target="rk3588", device_id="0123ABCD", perf_debug=True, eval_mem=False,
                                           core_mask=3)) in FakeRKNNToolkit.calls
    assert m.encoder_ms == [1.234]  # the perf_debug=False total, not the per-layer sum (1.5)


def test_npu_adb_rows_written_by_latency_dataset_are_the_fakes(tmp_path, monkeypatch):
    from hat.stages import latency_dataset as run

    monkeypatch.setattr(npu_bundle, "build_rknn", fake_build_rknn)
    monkeypatch.setattr(npu_bundle, "require_toolkit", lambda: FakeRKNNToolkit)  # the toolkit= parameter's default
    FakeRKNNToolkit.no_board = False
    csv_path = tmp_path / "adb.csv"
    assert run.main([f"--configs={TINY}", "--latency-backend", "npu-adb", "--lat-dataset-size", "1",
                     "--lat-dataset-path", str(csv_path), "--lat-work-dir", str(tmp_path / "work")]) == 0
    (row,) = read_rows(str(csv_path))
    assert row["backend"] == "npu-adb" and row["source"] == "extrapolated:board-adb"
    assert float(row["latency_mean_encoder"]) == 1.234 and float(row["latency_std_encoder"]) == 0.0
    assert float(row["latency_mean_decoder"]) == pytest.approx(1.284, rel=1e-12)
    assert float(row["measured_memory_mb"]) == 8.0


def test_npu_adb_without_a_board_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(npu_bundle, "build_rknn", fake_build_rknn)
    FakeRKNNToolkit.calls, FakeRKNNToolkit.no_board = [], True
    p = Protocol(src_len=6, tgt_len=4, beam=2, warmup=1, repeats=3)
    b = backends.make("npu-adb", _adb_args(tmp_path, device_id=None), _opt(), p, toolkit=FakeRKNNToolkit,
                      log=lambda s: None)
    with pytest.raises(HatError) as e:
        measure(b, _space().smallest(), p)
    msg = str(e.value)
    assert msg.startswith("no RK3588 board found through adb: Get board target failed, ret code: 1. error: no "
                          "devices/emulators found")
    assert "\n" not in msg and not any(c[0] == "eval_perf" for c in FakeRKNNToolkit.calls)
    FakeRKNNToolkit.no_board = False


_TEXT = _FREQ + "Total Time(us): 17219\nFPS: 58.07\n"
_DEBUG_TEXT = (_FREQ + "...\nTotal Operator Elapsed Per Frame Time(us): 20663\n"
               "Total Memory Read/Write Per Frame Size(KB): 9")


@pytest.mark.parametrize("result, debug, us", [
    (_TEXT, False, 17219.0),  # 2.5.0, perf_debug=False
    ("\x1b[1mTotal Time(us): 99\x1b[0m", False, 99.0),
    (_DEBUG_TEXT, False, None),  # a per-layer (perf_debug) sum is not the timed figure
    (_DEBUG_TEXT, True, 20663.0),
    ({"string": _TEXT, "layers": {}, "total_time": 0}, False, 17219.0),  # the documented dict
    ({"string": "", "layers": {}, "total_time": 812}, False, 812.0),
    ({"string": "", "layers": {}, "total_time": 0}, False, None),
    ("OpType  CallNumber  TotalTime(us)\nConv 1 5", False, None),
    (None, False, None),
])
def test_eval_perf_total_is_read_or_nothing(result, debug, us):
    assert adb.perf_total_us(result, debug=debug) == us


def test_eval_memory_total_is_read_or_nothing():
    detail = {"weight_memory": 4312608, "internal_memory": 1756160, "other_memory": 131232, "total_memory": 6200000}
    assert adb.memory_total_bytes(detail) == 6200000  # rknn-toolkit2 2.5.0's dict
    assert adb.memory_total_bytes({"total_model_allocation": 6068768}) == 6068768  # RKNN-Toolkit2 1.x's
    assert adb.memory_total_bytes("    Total Memory: 19.12 MiB\n") == pytest.approx(19.12 * 2**20)
    assert adb.memory_total_bytes({"weight_memory": 1}) is None


def test_npu_is_not_a_timing_backend(tmp_path):
    with pytest.raises(HatError, match="times nothing on this machine"):
        backends.make("npu", _adb_args(tmp_path), _opt(), Protocol())


def test_make_covers_every_backend_name(tmp_path):
    from hat.errors import ConfigError
    from hat.latency.torch_backend import TorchBackend

    assert set(backends.NAMES) == {"cpu", "gpu", "onnxruntime", "npu", "npu-adb"}
    b = backends.make("cpu", _adb_args(tmp_path, lat_threads=None), _opt(), Protocol())
    assert isinstance(b, TorchBackend) and b.source == "measured:cpu"
    ort = backends.make("onnxruntime", _adb_args(tmp_path, lat_threads=1), _opt(), Protocol(threads=1))
    assert isinstance(ort, ort_backend.OrtBackend) and ort.threads == 1
    with pytest.raises(ConfigError, match="unknown latency backend 'tpu'"):
        backends.make("tpu", _adb_args(tmp_path), _opt(), Protocol())
