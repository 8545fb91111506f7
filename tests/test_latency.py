import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FIXTURES, ROOT, run_script
from hat.latency import board
from hat.latency.dataset import COLUMNS, DatasetWriter, read_rows
from hat.latency.protocol import Backend, Protocol, measure, trimmed_stats
from hat.models import ModelOptions
from hat.space import SearchSpace
from hat.config import load_yaml

TINY = os.path.join(FIXTURES, "tiny_latency.yml")


def test_trimmed_stats_drop_fastest_and_slowest_tenth():
    xs = [100.0] + [10.0] * 18 + [0.0]  # one outlier each side out of 20
    mean, std = trimmed_stats(xs, 0.1)
    assert mean == 10.0 and std == 0.0
    assert trimmed_stats([1, 2, 3], 0.1) == (2.0, pytest.approx(0.816496, rel=1e-5))


class ClockBackend(Backend):
    """A backend whose 'work' advances a fake clock: encoder 2 ms, each decoder step 1 ms (+ 50 ms on warm-up)."""

    name, source = "clock", "measured:fake-clock"

    def __init__(self):
        self.now, self.calls = 0.0, {"enc": 0, "dec": 0}

    def load(self, cfg):
        return {}

    def encoder(self, h):
        self.calls["enc"] += 1
        self.now += 2.0 + (50.0 if self.calls["enc"] <= 2 else 0.0)

    def decoder_step(self, h, step):
        self.calls["dec"] += 1
        self.now += 1.0

    def timer(self):
        return lambda: self.now


def test_protocol_splits_encoder_and_decoder_and_skips_warmup():
    b = ClockBackend()
    cfg = SearchSpace.from_dict(load_yaml(TINY)).smallest()
    m = measure(b, cfg, Protocol(tgt_len=7, warmup=2, repeats=10))
    assert b.calls == {"enc": 12, "dec": 84}
    assert len(m.encoder_ms) == 10 and m.encoder == (2.0, 0.0)  # warm-up runs (52 ms) are not counted
    assert m.decoder == (7.0, 0.0)
    assert m.row()["latency_mean_decoder"] == 7.0 and "fake-clock" in m.summary()


def test_torch_backend_measures_a_real_model():
    from hat.latency.torch_backend import TorchBackend

    space = SearchSpace.from_dict(load_yaml(TINY))
    p = Protocol(src_len=5, tgt_len=3, beam=2, warmup=1, repeats=3)
    b = TorchBackend(ModelOptions(300, 300, share_all_embeddings=True), p)
    m = measure(b, space.largest(), p)
    assert m.source == "measured:cpu"
    assert len(m.encoder_ms) == 3 and all(x > 0 for x in m.encoder_ms + m.decoder_ms)


def _count_rows(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max(0, sum(1 for _ in f) - 1)


@pytest.mark.slow
def test_dataset_resumes_after_a_killed_run_without_losing_rows(tmp_path):
    out = tmp_path / "lat.csv"
    cmd = [sys.executable, "latency_dataset.py", f"--configs={TINY}", "--lat-dataset-path", str(out),
           "--lat-dataset-size", "6", "--latiter", "40"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while _count_rows(out) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_rows(str(out))
    assert 2 <= len(first) < 6, "killed while measuring"
    with open(out, "a") as f:
        f.write('abc123,"{""torn')  # a torn line, as a kill in the middle of a write leaves
    # the same file measured another way: refused in one line, nothing written
    before = out.read_bytes()
    r = run_script("latency_dataset.py", f"--configs={TINY}", "--lat-dataset-path", str(out), "--lat-dataset-size", "6")
    assert r.returncode == 2 and "another protocol (repeats 40 vs 3)" in r.stderr and out.read_bytes() == before
    r = run_script("latency_dataset.py", f"--configs={TINY}", "--lat-dataset-path", str(out), "--lat-dataset-size", "6",
                   "--latiter", "40")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_rows(str(out))
    assert len(rows) == 6 and len({row["key"] for row in rows}) == 6
    assert len({row["protocol"] for row in rows}) == 1 and json.loads(rows[0]["protocol"])["repeats"] == 40
    assert rows[: len(first)] == first, "finished rows are kept as they were"
    assert all(row["source"] == "measured:cpu" and float(row["latency_mean_encoder"]) > 0 for row in rows)
    json.loads(rows[0]["config"])  # the config is JSON


def _write_rows(path, n=4):
    from hat.latency.dataset import DatasetWriter

    space = SearchSpace.from_dict(load_yaml(TINY))
    w = DatasetWriter(str(path))
    p = Protocol(repeats=3).at("cpu", "torch test", "test machine")
    lat = {"latency_mean_encoder": 1.0, "latency_mean_decoder": 2.0, "latency_std_encoder": 0.1,
           "latency_std_decoder": 0.2}
    rng = __import__("random").Random(0)
    for cfg in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n)]:
        if cfg.key() not in w.done and len(w.done) < n:
            w.add(cfg, lat, {}, "cpu", "measured:cpu", p)
    return p


def test_a_damaged_row_in_the_middle_is_refused_not_dropped(tmp_path):
    """Issue 15: a malformed row that is not the last one stops the run in one line; the file is not rewritten."""
    from hat.errors import ConfigError
    from hat.latency.dataset import DatasetWriter

    out = tmp_path / "lat.csv"
    _write_rows(out)
    lines = out.read_text().splitlines(keepends=True)
    lines[2] = lines[2][: lines[2].rindex(',"{')] + "\n"  # drop the last field (the protocol) of data row 2
    out.write_text("".join(lines))
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="line 3: incomplete or damaged row"):
        DatasetWriter(str(out))
    assert out.read_bytes() == before


def test_a_torn_or_unterminated_last_row_is_not_merged_with_the_next(tmp_path):
    from hat.latency.dataset import DatasetWriter, read_rows

    out = tmp_path / "lat.csv"
    p = _write_rows(out)
    text = out.read_text()
    out.write_text(text[:-25])  # cut inside the last row's protocol JSON, no newline: a torn row
    assert len(DatasetWriter(str(out)).rows) == 3
    _write_rows(out, 5)  # the torn row is dropped, then the missing rows are appended, each on its own line
    rows = read_rows(str(out))
    assert len(rows) == 5 and all(r["protocol"].endswith("}") for r in rows)
    out.write_text(text.rstrip("\n"))  # a complete last row without its newline
    assert len(DatasetWriter(str(out)).rows) == 4
    _write_rows(out, 5)
    assert len(read_rows(str(out))) == 5
    w = DatasetWriter(str(out))
    w.check_protocol(p)
    with pytest.raises(Exception, match="another protocol"):
        w.check_protocol(Protocol(repeats=4).at("cpu", "torch test", "test machine"))


def test_unknown_key_in_latency_config(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(open(TINY).read() + "lat-dataset-sise: 3\n")
    r = run_script("latency_dataset.py", f"--configs={bad}")
    assert r.returncode == 2 and f"unknown key 'lat-dataset-sise' in {bad}" in r.stderr


# ---- board runner, tested at its API boundary with a fake of rknn-toolkit-lite2 ------------------------------------
class FakeRKNNLite:
    """Stands in for rknnlite.api.RKNNLite (which exists only on the board): same methods, no NPU, fixed outputs."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2 = 0, 1, 2, 4, 3, 7
    calls = []
    formats = []  # (file, data_format) of every inference call
    now = 0.0  # a fake clock (seconds): each inference takes 1 ms

    def load_rknn(self, path):
        self.path = path
        return 0 if os.path.exists(path) else -1

    def init_runtime(self, core_mask=0):
        FakeRKNNLite.calls.append(("init", os.path.basename(self.path), core_mask))
        return 0

    def inference(self, inputs, data_format=None):
        FakeRKNNLite.calls.append(("infer", os.path.basename(self.path), tuple(a.shape for a in inputs)))
        FakeRKNNLite.formats.append((os.path.basename(self.path), data_format))
        FakeRKNNLite.now += 0.001
        return [inputs[0].astype("float32")]

    def release(self):
        pass


def _bundle(tmp_path, keys):
    models = []
    for k in keys:
        for part in ("enc", "dec"):
            (tmp_path / f"{k}_{part}.rknn").write_bytes(b"rknn")
        models.append({
            "key": k,
            "encoder": {"file": f"{k}_enc.rknn", "inputs": [{"name": "src_tokens", "shape": [1, 6], "dtype": "int64"}]},
            "decoder": {"file": f"{k}_dec.rknn", "inputs": [{"name": "tokens", "shape": [2, 1], "dtype": "int64"},
                                                            {"name": "cache", "shape": [2, 4, 8], "dtype": "float16"}]},
        })
    manifest = {"protocol": {"warmup": 1, "repeats": 5, "tgt_len": 3, "trim": 0.1}, "models": models}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_board_runner_with_fake_rknnlite_writes_and_resumes(tmp_path):
    _bundle(tmp_path, ["aaa", "bbb"])
    FakeRKNNLite.calls = []
    out = board.run(str(tmp_path), core_mask="0_1_2", RKNNLite=FakeRKNNLite, clock=lambda: FakeRKNNLite.now,
                    log=io.StringIO())
    lines = [json.loads(x) for x in open(out)]
    assert [x["key"] for x in lines] == ["aaa", "bbb"]
    assert all(x["source"] == "measured:board" and len(x["encoder_ms"]) == 5 for x in lines)
    assert lines[0]["latency_mean_encoder"] == pytest.approx(1.0)
    assert lines[0]["latency_mean_decoder"] == pytest.approx(3.0)  # 3 steps of 1 ms each
    assert ("init", "aaa_enc.rknn", FakeRKNNLite.NPU_CORE_0_1_2) in FakeRKNNLite.calls
    assert ("infer", "aaa_dec.rknn", ((2, 1), (2, 4, 8))) in FakeRKNNLite.calls
    # resume: a second run measures nothing new
    FakeRKNNLite.calls = []
    board.run(str(tmp_path), RKNNLite=FakeRKNNLite, log=io.StringIO())
    assert FakeRKNNLite.calls == []


def test_board_runner_passes_the_manifests_layouts_as_data_format(tmp_path):
    manifest = _bundle(tmp_path, ["eee"])
    dec_inputs = manifest["models"][0]["decoder"]["inputs"]
    dec_inputs[1]["shape"] = [2, 4, 3, 8]  # a 4-D cache, NCHW as exported
    dec_inputs[1]["layout"] = "nchw"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    FakeRKNNLite.formats = []
    board.run(str(tmp_path), RKNNLite=FakeRKNNLite, clock=lambda: FakeRKNNLite.now, log=io.StringIO())
    formats = set((f, tuple(d) if d else d) for f, d in FakeRKNNLite.formats)
    assert formats == {("eee_enc.rknn", None), ("eee_dec.rknn", ("nchw", "nchw"))}  # no layout given: not passed


def test_board_runner_records_a_failure_without_numbers(tmp_path):
    _bundle(tmp_path, ["ccc"])
    os.remove(tmp_path / "ccc_dec.rknn")
    out = board.run(str(tmp_path), RKNNLite=FakeRKNNLite, log=io.StringIO())
    rec = json.loads(open(out).read())
    assert "load_rknn failed" in rec["error"] and "latency_mean_encoder" not in rec


def test_board_runner_imports_only_stdlib_numpy_and_rknnlite():
    import ast

    src = open(board.__file__).read()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"numpy", "rknnlite"}
    assert mods <= allowed, mods - allowed


def test_board_runner_without_rknnlite_says_so(tmp_path):
    _bundle(tmp_path, ["ddd"])
    r = subprocess.run([sys.executable, board.__file__, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "rknnlite" in r.stderr and "not installed" in r.stderr
