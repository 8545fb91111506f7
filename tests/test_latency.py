import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FIXTURES, ROOT, run_script
from hat.latency.dataset import read_rows
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


def test_protocol_names_the_export_graphs_it_timed_and_refuses_other_graphs():
    """Rows measured before the protocol named the graphs' version were timed on version 1 of the exported graphs;
    a backend that times exported graphs records the current version, so older numbers are refused (issue 14's
    leaner graphs time differently)."""
    import json

    from hat.export import GRAPHS_VERSION
    from hat.latency.protocol import Protocol

    now = Protocol(threads=1).at("onnxruntime", "1.26.0")
    assert now.graphs == GRAPHS_VERSION and f"export graphs v{GRAPHS_VERSION}" in now.describe()
    legacy = json.loads(now.to_json())
    del legacy["graphs"]
    old = Protocol.from_dict(legacy)
    assert old.graphs == "1" and GRAPHS_VERSION != "1"
    assert "graphs" in now.mismatch(old)
    assert Protocol.from_json(now.to_json()) == now
    # torch backends run the model, not the exported graphs: nothing to name
    assert Protocol().at("cpu", "torch").graphs == ""


def test_dataset_agreement_compares_graph_versions_only_with_differ(tmp_path):
    """benchmarks/dataset_agreement.py: two datasets of the same configs measured on two export-graph versions are
    refused as an agreement check (the protocols differ), compared with --differ graphs (ratios b/a per part), and
    --differ refuses a field the two files do not differ in."""
    import random
    from dataclasses import replace

    from hat.latency.dataset import DatasetWriter

    space = SearchSpace.from_dict(load_yaml(TINY), source=TINY)
    cfgs = [space.sample(random.Random(i)) for i in range(6)]
    base = Protocol(backend="onnxruntime", graphs="2")
    paths = {}
    for name, proto, scale in (("a", base, 1.0), ("b", replace(base, graphs="3"), 0.5)):
        paths[name] = str(tmp_path / f"{name}.csv")
        with DatasetWriter(paths[name]) as w:
            for i, cfg in enumerate(cfgs):
                lat = {"latency_mean_encoder": 1.0 + i, "latency_mean_decoder": scale * (10.0 + i),
                       "latency_std_encoder": 0.0, "latency_std_decoder": 0.0}
                w.add(cfg, lat, {}, "onnxruntime", "measured:onnxruntime", proto)
    script = os.path.join("benchmarks", "dataset_agreement.py")
    refused = run_script(script, paths["a"], paths["b"])
    assert refused.returncode == 2 and "graphs" in refused.stderr and "Traceback" not in refused.stderr
    r = run_script(script, paths["a"], paths["b"], "--differ", "graphs")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["configs"] == len({c.key() for c in cfgs}) and out["graphs"] == ["2", "3"]
    assert out["median_ratio_encoder"] == 1.0 and out["median_ratio_decoder"] == 0.5
    assert out["ratio_p5"] < out["median_ratio_b_over_a"] < 1.0
    wrong = run_script(script, paths["a"], paths["b"], "--differ", "beam")
    assert wrong.returncode == 2 and "--differ" in wrong.stderr
