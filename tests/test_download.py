"""download_model.py / hat.download against a real HTTP server on 127.0.0.1 (a thread; loopback only, bounded), and
the data scripts' behaviour without a network."""
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading

import pytest

from conftest import ROOT

from hat.download import DownloadError, KINDS, extract_archive, load_registry
from hat.stages.download_model import main

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
UNREACHABLE = "http://127.0.0.1:9/"  # discard port: nothing listens, connect is refused at once


class Handler(http.server.BaseHTTPRequestHandler):
    files = {}  # path -> (bytes, content type)
    log = []  # (path, Range header)

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        self.log.append((path, rng))
        if path not in self.files:
            self.send_error(404, "Not Found")
            return
        body, ctype = self.files[path]
        start = 0
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def registry(server, tmp_path, monkeypatch):
    monkeypatch.delenv("HAT_DATA_URL_BASE", raising=False)
    Handler.files.clear()
    Handler.log.clear()
    Handler.files["/m/good.pt"] = (PAYLOAD, "application/octet-stream")
    Handler.files["/m/bad.pt"] = (PAYLOAD, "application/octet-stream")
    Handler.files["/m/page.pt"] = (b"<html>moved</html>", "text/html; charset=utf-8")
    entries = {
        "good": {"kind": "subtransformer", "url": f"{server}/m/good.pt?dl=1", "filename": "good.pt", "sha256": SHA,
                 "size": len(PAYLOAD)},
        "unpinned": {"kind": "predictor", "url": f"{server}/m/good.pt", "filename": "unpinned.pt"},
        "bad": {"kind": "subtransformer", "url": f"{server}/m/bad.pt", "filename": "bad.pt", "sha256": "0" * 64},
        "missing": {"kind": "subtransformer", "url": f"{server}/m/missing.pt", "filename": "missing.pt"},
        "page": {"kind": "subtransformer", "url": f"{server}/m/page.pt", "filename": "page.pt"},
    }
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"version": 1, "entries": entries}))
    return str(path)


def run_main(registry, *argv):
    return main(["--registry", registry, "--quiet", *argv])


def test_success(registry, tmp_path):
    dest = tmp_path / "models"
    assert run_main(registry, "--model-name", "good", "--dest", str(dest)) == 0
    assert (dest / "good.pt").read_bytes() == PAYLOAD
    assert sorted(os.listdir(dest)) == ["good.pt"]
    # a second call finds it verified and does not download again
    n = len(Handler.log)
    assert run_main(registry, "--model-name", "good", "--dest", str(dest)) == 0
    assert len(Handler.log) == n


def test_resume_from_part(registry, tmp_path):
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "good.pt.part").write_bytes(PAYLOAD[:300_000])
    assert run_main(registry, "--model-name", "good", "--dest", str(dest)) == 0
    assert Handler.log[-1] == ("/m/good.pt", "bytes=300000-")
    assert (dest / "good.pt").read_bytes() == PAYLOAD
    assert not (dest / "good.pt.part").exists()


def test_complete_part_is_verified_not_refetched(registry, tmp_path):
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "good.pt.part").write_bytes(PAYLOAD)  # the server answers 416: nothing left to send
    assert run_main(registry, "--model-name", "good", "--dest", str(dest)) == 0
    assert (dest / "good.pt").read_bytes() == PAYLOAD


def test_bad_checksum(registry, tmp_path):
    dest = tmp_path / "models"
    with pytest.raises(DownloadError, match="checksum mismatch for bad.pt"):
        run_main(registry, "--model-name", "bad", "--dest", str(dest))
    assert os.listdir(dest) == []  # neither the final name nor a corrupt .part to resume from


def test_unpinned_prints_sha(registry, tmp_path, capsys):
    dest = tmp_path / "models"
    assert main(["--registry", registry, "--model-name", "unpinned", "--dest", str(dest)]) == 0
    assert SHA in capsys.readouterr().err


@pytest.mark.parametrize("name,message", [("missing", "HTTP 404"), ("page", "web page")])
def test_http_errors(registry, tmp_path, name, message):
    dest = tmp_path / "models"
    with pytest.raises(DownloadError, match=message):
        run_main(registry, "--model-name", name, "--dest", str(dest))
    assert not (dest / f"{name}.pt").exists() and not (dest / f"{name}.pt.part").exists()


def test_url_base_override(registry, tmp_path, server, monkeypatch):
    Handler.files["/mirror/good.pt"] = (PAYLOAD, "application/octet-stream")
    monkeypatch.setenv("HAT_DATA_URL_BASE", f"{server}/mirror/")
    assert run_main(registry, "--model-name", "good", "--dest", str(tmp_path)) == 0
    assert Handler.log[-1][0] == "/mirror/good.pt"


def _cli(*argv, env=None, cwd=ROOT):
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "download_model.py"), *argv], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=60)


def test_cli_errors_are_one_line(registry, tmp_path):
    r = _cli("--registry", registry, "--model-name", "nope", "--dest", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown model name 'nope'" in r.stderr
    r = _cli("--registry", registry, "--model-name", "good", "--dest", str(tmp_path / "d"),
             env={"HAT_DATA_URL_BASE": UNREACHABLE})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "cannot reach 127.0.0.1:9" in r.stderr
    assert not (tmp_path / "d").exists()
    r = _cli("--registry", registry, "--model-name", "bad", "--dest", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "checksum mismatch" in r.stderr
    assert os.listdir(tmp_path / "d") == []


def test_shipped_registry():
    from hat.paper_table import PUBLISHED

    reg = load_registry()
    for name, e in reg.items():
        assert e.kind in KINDS, name
        assert (e.url or "").startswith("https://") or e.gdrive_id, name
        if e.config:
            assert os.path.isfile(os.path.join(ROOT, e.config)), e.config
    subs = {n for n, e in reg.items() if e.kind == "subtransformer"}
    assert subs == set(PUBLISHED)  # HAT's 44 published SubTransformers
    assert {n for n, e in reg.items() if e.kind == "supertransformer"} == {
        "HAT_wmt14ende_super_space0", "HAT_wmt14enfr_super_space0", "HAT_wmt19ende_super_space0",
        "HAT_iwslt14deen_super_space1"}
    assert sum(e.kind == "predictor" for e in reg.values()) == 8
    assert sum(e.kind == "latency_dataset" for e in reg.values()) == 8
    assert {e.task for e in reg.values() if e.kind == "data"} == {"wmt14.en-de", "wmt14.en-fr", "wmt19.en-de",
                                                                   "iwslt14.de-en"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "download_model.py"), "--list", "--kind", "predictor"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 8


def _tgz(files, top=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("top", [None, "wmt16_en_de"])
def test_extract_archive(tmp_path, top):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(_tgz({"dict.en.txt": b"a 1\n", "train.en-de.en.bin": b"\0"}, top))
    dest = tmp_path / "data" / "binary" / "x"
    extract_archive(str(archive), str(dest))
    assert sorted(os.listdir(dest)) == ["dict.en.txt", "train.en-de.en.bin"]
    assert os.listdir(dest.parent) == ["x"]  # no temporary folder left


TASKS = ("wmt14.en-de", "wmt14.en-fr", "wmt19.en-de", "iwslt14.de-en")


@pytest.mark.parametrize("script", ["get_preprocessed.sh", "preprocess.sh"])
@pytest.mark.parametrize("task", TASKS)
def test_data_scripts_offline(tmp_path, task, script):
    """No network: one clear line, exit != 0, nothing created (not even the data folder)."""
    work = tmp_path / "cwd"
    work.mkdir()
    env = dict(os.environ, HAT_DATA_URL_BASE=UNREACHABLE, HAT_DATA_DIR=str(work / "data"), PYTHON=sys.executable)
    r = subprocess.run(["bash", os.path.join(ROOT, "configs", task, script)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert "cannot reach 127.0.0.1:9" in lines[0] and "network" in lines[0]
    assert os.listdir(work) == []


def test_get_preprocessed_from_mirror(server, tmp_path):
    """The whole path with a network: download (registry name), unpack atomically, remove the archive."""
    Handler.files["/mirror/iwslt14_de_en.preprocessed.tgz"] = (
        _tgz({"dict.de.txt": b"a 1\n", "dict.en.txt": b"b 1\n"}, "iwslt14_de_en"), "application/gzip")
    work = tmp_path / "cwd"
    work.mkdir()
    env = dict(os.environ, HAT_DATA_URL_BASE=f"{server}/mirror", PYTHON=sys.executable)
    r = subprocess.run(["bash", os.path.join(ROOT, "configs", "iwslt14.de-en", "get_preprocessed.sh")], cwd=work,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    dest = work / "data" / "binary"
    assert os.listdir(dest) == ["iwslt14_de_en"]
    assert sorted(os.listdir(dest / "iwslt14_de_en")) == ["dict.de.txt", "dict.en.txt"]


def test_a_corrupted_file_already_there_is_checked_not_trusted(registry, tmp_path, capsys):
    """A registry entry with a sha256 whose file is already in --dest but damaged: one line, exit 2, what to do; the
    file is left alone and nothing is downloaded."""
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "good.pt").write_bytes(PAYLOAD[:-1] + b"!")
    n = len(Handler.log)
    with pytest.raises(DownloadError, match=r"good.pt exists but its sha256 is [0-9a-f]{64}, not the expected "
                                            rf"{SHA}: remove it to download again"):
        main(["--registry", registry, "--model-name", "good", "--dest", str(dest)])
    assert len(Handler.log) == n and (dest / "good.pt").read_bytes() == PAYLOAD[:-1] + b"!"
    (dest / "good.pt").write_bytes(PAYLOAD)
    assert main(["--registry", registry, "--model-name", "good", "--dest", str(dest)]) == 0
    assert capsys.readouterr().err.strip().endswith("good.pt: already downloaded (verified)")
