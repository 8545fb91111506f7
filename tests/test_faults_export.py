"""Faults around the export, the RKNN build, the download and the npu-adb route (issue 15, items 5, 7, 8, 9), with
real parts: onnx / onnxruntime exports of a tiny random SubTransformer (as test_export.py), rknn-toolkit2's
convert2rknn.py, a real HTTP server on 127.0.0.1, a kill -9 of a child process in the middle of an export.

Nothing lost, nothing mixed, no traceback: an encoder and a decoder from two exports are refused in one line by
convert2rknn.py (``--verify`` included) and not reused by the onnxruntime latency backend; a killed export leaves the
old files of its name as they were and its temporary files are removed by the next export of that name; every user
error here is one line and exit code 2.
"""
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from conftest import FIXTURES, ROOT, run_script

from hat.config import load_yaml
from hat.errors import ConfigError, HatError
from hat.export import ExportError, onnx_path, read_pair, read_sidecar, sidecar_path
from hat.export.onnx import ExportSettings, export_lock, export_model, torch_threads
from hat.io import sha256_file

TINY = os.path.join(FIXTURES, "tiny_space.yml")
TINY_SUB = os.path.join(FIXTURES, "tiny_sub.yml")
V = 150
SETTINGS = dict(batch_size=1, src_len=8, tgt_len=8, beam=2)
QUIET = dict(log=lambda *a: None)


def tiny_model(seed: int):
    """A tiny SubTransformer with seeded random weights (``seed`` tells two models apart)."""
    from hat.models import ModelOptions, SuperTransformer
    from hat.space import SearchSpace

    torch.manual_seed(seed)
    space = SearchSpace.from_dict(load_yaml(TINY))
    sup = SuperTransformer(space.super_config(), ModelOptions(V, V, share_all_embeddings=True)).eval()
    cfg = space.sample(random.Random(3)).replace(  # as tests/test_export.py
        encoder_layer_num=2, decoder_layer_num=2, decoder_arbitrary_ende_attn=(1, -1), decoder_ffn_embed_dim=(64, 128),
        decoder_self_attention_heads=(2, 4), decoder_ende_attention_heads=(4, 2),
    )
    return sup.extract(cfg).eval()


def files_of(d, name):
    """file name -> sha256 of the four files of export ``name``."""
    paths = [f(d, name, p) for p in ("enc", "dec") for f in (onnx_path, sidecar_path)]
    return {os.path.basename(p): sha256_file(p) for p in paths if os.path.exists(p)}


def leftovers(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".partial") or f.endswith(".lock"))


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """Model A exported as 'a', model B (other weights) as 'b', same shapes."""
    d = str(tmp_path_factory.mktemp("two"))
    s = ExportSettings(**SETTINGS)
    export_model(tiny_model(0), d, "a", s, **QUIET)
    export_model(tiny_model(1), d, "b", s, **QUIET)
    return d


def mixed_pair(src, dst, name="x"):
    """What an interrupted re-export under one name leaves (the old behaviour; now at worst a kill between the final
    renames): the encoder of one model, the decoder of another, each consistent with its own sidecar."""
    os.makedirs(dst, exist_ok=True)
    for part, frm in (("enc", "b"), ("dec", "a")):
        shutil.copy(onnx_path(src, frm, part), onnx_path(dst, name, part))
        meta = read_sidecar(src, frm, part)
        meta["name"], meta["onnx"] = name, os.path.basename(onnx_path(dst, name, part))
        with open(sidecar_path(dst, name, part), "w") as f:
            json.dump(meta, f)
    return dst


def run_main(main, argv, capsys):
    from hat.cli import run

    with pytest.raises(SystemExit) as e:
        run(lambda: main(argv))
    cap = capsys.readouterr()
    return e.value.code, cap.err.strip().splitlines(), cap.out


# ---- item 5: one export id in both sidecars -------------------------------------------------------------------------
def test_both_sidecars_carry_one_export_id_and_other_models_another(two_exports):
    a, b = read_pair(two_exports, "a"), read_pair(two_exports, "b")
    assert a["enc"]["export_id"] == a["dec"]["export_id"]
    assert b["enc"]["export_id"] == b["dec"]["export_id"] != a["enc"]["export_id"]
    assert leftovers(two_exports) == []  # no temporary file, no lock file after a finished export


def test_a_mixed_pair_is_refused_in_one_line(two_exports, tmp_path):
    d = mixed_pair(two_exports, str(tmp_path / "mixed"))
    with pytest.raises(ExportError) as e:
        read_pair(d, "x")
    assert "not from one export" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ExportError, match="not from one export"):
        read_pair(d, "x", ("dec",))  # one part asked for: its partner is checked when it is there


def test_convert2rknn_refuses_a_mixed_pair_also_with_verify(two_exports, tmp_path, capsys):
    pytest.importorskip("rknn.api", reason="rknn-toolkit2 not installed (make install puts it in .venv)")
    from hat.stages.convert2rknn import main

    d = mixed_pair(two_exports, str(tmp_path / "mixed"))
    for extra in ([], ["--verify"], ["--dec", "--verify"]):
        code, err, _ = run_main(main, ["--onnx-dir", d, "--onnx-name", "x", *extra], capsys)
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("error: x_enc and x_dec in ") and "not from one export" in err[0]
        assert "run convert2onnx.py --name x again" in err[0]
    assert not [f for f in os.listdir(d) if f.endswith((".rknn", ".partial"))]


def test_verify_with_a_graph_onnxruntime_cannot_load_is_one_line(two_exports, tmp_path, capsys):
    """The decoder replaced by bytes that are not ONNX (its sidecar updated to match): --verify of the encoder runs
    the pair in onnxruntime and ends in one line, not onnxruntime's traceback."""
    pytest.importorskip("rknn.api", reason="rknn-toolkit2 not installed (make install puts it in .venv)")
    from hat.stages.convert2rknn import main

    d = str(tmp_path / "bad")
    os.makedirs(d)
    for part in ("enc", "dec"):
        shutil.copy(onnx_path(two_exports, "a", part), onnx_path(d, "a", part))
        shutil.copy(sidecar_path(two_exports, "a", part), sidecar_path(d, "a", part))
    with open(onnx_path(d, "a", "dec"), "wb") as f:
        f.write(b"not an onnx graph")
    meta = read_sidecar(d, "a", "dec")
    meta["sha256"] = sha256_file(onnx_path(d, "a", "dec"))
    with open(sidecar_path(d, "a", "dec"), "w") as f:
        json.dump(meta, f)
    code, err, _ = run_main(main, ["--onnx-dir", d, "--onnx-name", "a", "--enc", "--verify"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: onnxruntime could not run the exported graphs of a")


def test_the_onnxruntime_backend_does_not_reuse_a_mixed_pair(two_exports, tmp_path):
    from hat.latency.onnxruntime import _exported

    s = ExportSettings(**SETTINGS)
    assert _exported(two_exports, "a", s) and _exported(two_exports, "b", s)
    assert not _exported(mixed_pair(two_exports, str(tmp_path / "mixed")), "x", s)


def test_one_graph_re_exported_pairs_with_its_partner_only_for_the_same_model(tmp_path):
    d, s = str(tmp_path), ExportSettings(**SETTINGS)
    export_model(tiny_model(0), d, "x", s, **QUIET)
    export_model(tiny_model(0), d, "x", s, parts=("enc",), **QUIET)  # same model and shapes: same id
    assert read_pair(d, "x")["enc"]["export_id"] == read_pair(d, "x")["dec"]["export_id"]
    lines = []
    export_model(tiny_model(1), d, "x", s, parts=("enc",), log=lines.append)  # another model: refused later
    assert any("x_dec" in ln and "export it too" in ln for ln in lines)
    with pytest.raises(ExportError, match="not from one export"):
        read_pair(d, "x")


def test_a_second_export_of_one_name_at_once_is_refused_in_one_line(tmp_path):
    d = str(tmp_path)
    with export_lock(d, "x"):
        with pytest.raises(ExportError) as e:
            export_model(tiny_model(0), d, "x", ExportSettings(**SETTINGS), **QUIET)
    assert str(e.value).startswith("another export of 'x' is running in ") and "\n" not in str(e.value)
    assert leftovers(d) == [] and not os.path.exists(onnx_path(d, "x", "enc"))


CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import hat.export.onnx as ex
    from test_faults_export import tiny_model, SETTINGS

    orig = ex._export_to

    def stalled(model, part, tmp, source, s, log=print):
        out = orig(model, part, tmp, source, s, log)
        if part == "dec":  # both graphs written under temporary names, nothing moved into place yet
            open({marker!r}, "w").close()
            time.sleep(600)
        return out

    ex._export_to = stalled
    with ex.torch_threads(1):
        ex.export_model(tiny_model(1), {d!r}, "x", ex.ExportSettings(**SETTINGS), log=lambda *a: None)
""")


@pytest.mark.slow
def test_kill_9_during_a_re_export_leaves_the_old_pair_and_the_next_export_cleans_up(tmp_path):
    d, s = str(tmp_path / "onnx"), ExportSettings(**SETTINGS)
    old_id = export_model(tiny_model(0), d, "x", s, **QUIET)["enc"]["export_id"]
    old = files_of(d, "x")
    assert len(old) == 4
    marker = str(tmp_path / "stalled")
    code = CHILD.format(tests=os.path.join(ROOT, "tests"), marker=marker, d=d)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not os.path.exists(marker):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the child export never got to its decoder"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert files_of(d, "x") == old  # nothing of the killed export under a final name: the old pair, whole
    read_pair(d, "x")
    partials = [f for f in os.listdir(d) if f.endswith(".partial")]
    assert any(f.startswith(".x_enc.onnx.") for f in partials) and any(f.startswith(".x_dec.onnx.") for f in partials)
    # the lock died with the child: the next export of x runs, removes the leftovers and writes one pair
    new = export_model(tiny_model(1), d, "x", s, **QUIET)
    assert leftovers(d) == []
    pair = read_pair(d, "x")
    assert pair["enc"]["export_id"] == pair["dec"]["export_id"] == new["enc"]["export_id"]
    assert pair["enc"]["export_id"] != old_id


# ---- item 8: names outside onnx-dir, opsets out of range -----------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", ""])
def test_a_name_outside_onnx_dir_is_refused_in_one_line(tmp_path, capsys, name):
    from hat.stages.convert2onnx import main as onnx_main

    d = tmp_path / "w" / "onnx"
    code, err, out = run_main(onnx_main, [f"--configs={TINY_SUB}", "--model-path", str(tmp_path / "none.pt"),
                                          "--onnx-dir", str(d), "--name", name], capsys)
    assert code == 2 and len(err) == 1 and "is not a plain file name" in err[0], err
    assert not (tmp_path / "w").exists() and not os.path.exists(tmp_path / "x_enc.onnx")
    with pytest.raises(ExportError, match="not a plain file name"):
        export_model(tiny_model(0), str(d), name, ExportSettings(**SETTINGS), **QUIET)
    assert not (tmp_path / "w").exists()


def test_convert2rknn_refuses_a_name_outside_onnx_dir(tmp_path, capsys):
    pytest.importorskip("rknn.api", reason="rknn-toolkit2 not installed (make install puts it in .venv)")
    from hat.stages.convert2rknn import main

    code, err, _ = run_main(main, ["--onnx-dir", str(tmp_path), "--onnx-name", "../x"], capsys)
    assert code == 2 and len(err) == 1 and "is not a plain file name" in err[0]


@pytest.mark.parametrize("opset", ["99", "13", "0"])
def test_an_opset_out_of_range_is_one_line_before_anything_is_traced(tmp_path, capfd, opset):
    from hat.cli import run
    from hat.stages.convert2onnx import main

    with pytest.raises(SystemExit) as e:
        run(lambda: main([f"--configs={TINY_SUB}", "--model-path", str(tmp_path / "none.pt"), "--onnx-dir",
                          str(tmp_path / "o"), "--opset", opset]))
    cap = capfd.readouterr()
    assert e.value.code == 2 and cap.out == ""
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: opset must be between 14 and ") and err[0].endswith(opset)
    with pytest.raises(ConfigError, match="opset must be between"):
        export_model(tiny_model(0), str(tmp_path / "o"), "x", ExportSettings(**SETTINGS, opset=int(opset)), **QUIET)
    cap = capfd.readouterr()
    assert cap.out == "" and cap.err == "" and not (tmp_path / "o").exists()


# ---- item 9: argparse type errors of the stage parsers are one line --------------------------------------------------
@pytest.mark.parametrize("stage,argv", [
    ("convert2onnx", ["--opset", "abc"]),
    ("convert2onnx", ["--src-len", "1.5"]),
    ("convert2rknn", ["--onnx-name", "x", "--calib-size", "many"]),
    ("download_model", ["--timeout", "soon"]),
])
def test_a_type_error_is_one_line_without_the_usage(stage, argv, capsys):
    import importlib

    main = importlib.import_module(f"hat.stages.{stage}").main
    code, err, out = run_main(main, argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: argument --") and "invalid" in err[0], err
    assert "usage" not in out.lower()


def test_a_type_error_of_a_script_is_one_line():
    r = run_script("download_model.py", "--timeout", "soon", timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: argument --timeout: invalid float value: 'soon'"]


# ---- item 9: npu-adb looks for a board before exporting anything -----------------------------------------------------
class ToolkitWithoutBoard:
    """rknn-toolkit2 2.5.0's ``RKNN`` as far as the preflight uses it (``list_devices()`` -> (adb devices, ntb
    devices); rknn/api/rknn.py lines 312-337), with no board connected (board-free fake, by its name)."""

    devices = ([], [])
    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2, NPU_CORE_ALL = (
        0x0, 0x1, 0x2, 0x4, 0x3, 0x7, 0xffff)

    def __init__(self, verbose=False, verbose_file=None):
        pass

    def list_devices(self):
        print("*************************\nNone devices connected.\n*************************")
        return self.devices

    def release(self):
        pass


def _adb(tmp_path, toolkit, device_id=None):
    from hat.latency import adb
    from hat.latency.protocol import Protocol
    from hat.models import ModelOptions

    return adb.AdbBackend(ModelOptions(V, V, share_all_embeddings=True), Protocol(src_len=6, tgt_len=4, beam=2),
                          device_id=device_id, work_dir=str(tmp_path / "work"), toolkit=toolkit, log=lambda s: None)


def test_npu_adb_without_a_board_stops_before_any_export(tmp_path, monkeypatch, capfd):
    from hat.latency import adb, onnxruntime

    def no_export(*a, **k):
        raise AssertionError("exported before looking for a board")

    monkeypatch.setattr(adb, "export_onnx", no_export)
    monkeypatch.setattr(onnxruntime, "export_onnx", no_export)
    t0 = time.perf_counter()
    with pytest.raises(HatError) as e:
        _adb(tmp_path, ToolkitWithoutBoard)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert msg.startswith("no RK3588 board found through adb: the toolkit's device list is empty") and "\n" not in msg
    assert capfd.readouterr().out == ""  # the toolkit's printing went to its log
    monkeypatch.setattr(ToolkitWithoutBoard, "devices", (["0123ABCD"], []))
    with pytest.raises(HatError, match=r"device id FFFF found through adb \(connected: 0123ABCD\)"):
        _adb(tmp_path, ToolkitWithoutBoard, device_id="FFFF")
    b = _adb(tmp_path, ToolkitWithoutBoard, device_id="0123ABCD")  # the board is there: on to the work
    assert b.device_id == "0123ABCD" and not (tmp_path / "work").exists()


def _adb_server_running() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5037), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_npu_adb_with_the_real_toolkit_and_no_board_is_one_line_at_once(tmp_path):
    """rknn-toolkit2's own device list (its shipped adb) on a machine without a board."""
    api = pytest.importorskip("rknn.api", reason="rknn-toolkit2 not installed (make install puts it in .venv)")
    server_before = _adb_server_running()
    t0 = time.perf_counter()
    try:
        with pytest.raises(HatError) as e:
            _adb(tmp_path, None)
        assert time.perf_counter() - t0 < 20
    finally:  # the toolkit's adb leaves a server behind: stop the one this test started
        adb_bin = os.path.join(os.path.dirname(os.path.dirname(api.__file__)), "3rdparty", "platform-tools", "adb",
                               "linux-x86_64", "adb")
        if not server_before and _adb_server_running() and os.path.isfile(adb_bin):
            subprocess.run([adb_bin, "kill-server"], capture_output=True, timeout=30)
    assert str(e.value).startswith("no RK3588 board found through adb: ") and "\n" not in str(e.value)
    assert "nothing was exported" in str(e.value) and not (tmp_path / "work").exists()


# ---- item 7: --sha256 always verifies --------------------------------------------------------------------------------
PAYLOAD = bytes(range(256)) * 64
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Files(http.server.BaseHTTPRequestHandler):
    hits = []

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture
def url():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    _Files.hits = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/f/model.pt"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_sha256_is_checked_on_a_file_already_there(url, tmp_path, capsys, monkeypatch):
    from hat.stages.download_model import main

    monkeypatch.delenv("HAT_DATA_URL_BASE", raising=False)
    dest = tmp_path / "dl"
    code, err, _ = run_main(main, ["--url", url, "--dest", str(dest), "--sha256", SHA], capsys)
    assert code == 0 and err == [f"{dest / 'model.pt'}: sha256 {SHA} (verified)"]
    (dest / "model.pt").write_bytes(PAYLOAD[:-10] + b"corrupted!")  # damaged after the download
    hits = len(_Files.hits)
    code, err, _ = run_main(main, ["--url", url, "--dest", str(dest), "--sha256", SHA], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {dest / 'model.pt'} exists but its sha256 is ")
    assert err[0].endswith(f"not the expected {SHA}: remove it to download again")
    code, err, _ = run_main(main, ["--url", url, "--dest", str(dest), "--sha256", "0" * 64], capsys)  # wrong digest
    assert code == 2 and len(err) == 1 and "remove it to download again" in err[0]
    assert len(_Files.hits) == hits  # decided without the network
    (dest / "model.pt").write_bytes(PAYLOAD)
    code, err, _ = run_main(main, ["--url", url, "--dest", str(dest), "--sha256", SHA.upper()], capsys)
    assert code == 0 and err == [f"{dest / 'model.pt'}: already downloaded (verified)"]
    code, err, _ = run_main(main, ["--url", url, "--dest", str(dest)], capsys)
    assert code == 0 and err == [f"{dest / 'model.pt'}: already downloaded (not verified: no sha256 given)"]


@pytest.mark.parametrize("argv,msg", [
    (["--sha256", "abc"], "--sha256 must be 64 hex digits, got 'abc'"),
    (["--sha256", "z" * 64], "--sha256 must be 64 hex digits"),
])
def test_a_malformed_sha256_is_one_line(url, tmp_path, capsys, argv, msg):
    from hat.stages.download_model import main

    code, err, _ = run_main(main, ["--url", url, "--dest", str(tmp_path), *argv], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: " + msg)
    assert _Files.hits == [] and os.listdir(tmp_path) == []


def test_sha256_without_url_is_refused(tmp_path, capsys):
    from hat.stages.download_model import main

    code, err, _ = run_main(main, ["--model-name", "x", "--sha256", SHA, "--dest", str(tmp_path)], capsys)
    assert code == 2 and err == ["error: --sha256 goes with --url (registry entries carry their own sha256)"]
