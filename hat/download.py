"""Published HAT files (checkpoints, latency predictors and datasets, preprocessed data): registry and downloader.

    python download_model.py --model-name=HAT_wmt14ende_raspberrypi@3.5s_bleu@25.8 [--dest downloaded_models]
    python download_model.py --list [--kind subtransformer]
    python -m hat.download --model-name HAT_data_iwslt14_de_en --extract data/binary/iwslt14_de_en
    python -m hat.download --url URL --dest DIR          # any file, same resume/verify/atomic rules
    python -m hat.download --check URL [URL ...]         # is the host reachable (short timeout)?

The registry is ``hat/model_registry.json`` (``--registry FILE`` or ``$HAT_MODEL_REGISTRY`` to use another):
name -> kind, url (or gdrive_id), filename, sha256, size. Rules:

* a file is written as ``<name>.part`` and renamed to its final name only once it is complete and verified, so a
  final name never holds a partial file; a ``.part`` left by an interrupted run is resumed with an HTTP Range request;
* the sha256 (and size) are checked when the registry (or ``--sha256``) knows them; a mismatch removes the download
  and fails; otherwise the sha256 of what arrived is printed, to pin it in the registry; a file already there is
  checked against a known sha256 too (a mismatch fails and says to remove it), never trusted unverified;
* Google Drive files go through ``gdown`` (an error says how to install it when it is missing), the rest through
  plain HTTP(S) (urllib);
* ``$HAT_DATA_URL_BASE`` replaces where every file is fetched from: the URL becomes ``<base>/<filename>`` (a mirror,
  or a local server in tests);
* every failure (unknown name, no network, HTTP error, bad checksum) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from hat.errors import HatError
from hat.io import sha256_file

REGISTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_registry.json")
REGISTRY_ENV = "HAT_MODEL_REGISTRY"
URL_BASE_ENV = "HAT_DATA_URL_BASE"
DEFAULT_DEST = "downloaded_models"  # HAT's --save-path default
KINDS = ("subtransformer", "supertransformer", "predictor", "latency_dataset", "data", "dict", "raw")
CHUNK = 1 << 20


class DownloadError(HatError):
    """A download that cannot be done: the message is the whole story."""


@dataclass
class Entry:
    name: str
    kind: str
    filename: str
    url: Optional[str] = None
    gdrive_id: Optional[str] = None
    sha256: Optional[str] = None
    size: Optional[int] = None
    task: Optional[str] = None
    config: Optional[str] = None


# -- registry ----------------------------------------------------------------------------------------------------
def registry_path(path: Optional[str] = None) -> str:
    return path or os.environ.get(REGISTRY_ENV) or REGISTRY


def load_registry(path: Optional[str] = None) -> Dict[str, Entry]:
    path = registry_path(path)
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise DownloadError(f"cannot read the model registry {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise DownloadError(f"{path}: not valid JSON ({e})") from None
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise DownloadError(f"{path}: expected {{\"entries\": {{name: {{...}}}}}}")
    out = {}
    for name, e in entries.items():
        if not isinstance(e, dict) or not e.get("filename") or not (e.get("url") or e.get("gdrive_id")):
            raise DownloadError(f"{path}: entry {name!r} needs a filename and a url or gdrive_id")
        known = {k: e.get(k) for k in Entry.__dataclass_fields__ if k != "name"}
        known["kind"] = known.get("kind") or "file"
        out[name] = Entry(name=name, **known)
    return out


def get_entry(name: str, registry: Optional[str] = None) -> Entry:
    entries = load_registry(registry)
    if name not in entries:
        close = [n for n in entries if name.lower() in n.lower()][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see --list"
        raise DownloadError(f"unknown model name {name!r}{hint}")
    return entries[name]


# -- network -----------------------------------------------------------------------------------------------------
def url_for(entry: Entry) -> Optional[str]:
    """Where ``entry`` is fetched from over plain HTTP (None: Google Drive through gdown)."""
    base = os.environ.get(URL_BASE_ENV)
    if base:
        return base.rstrip("/") + "/" + urllib.parse.quote(entry.filename)
    return entry.url


def _endpoint(url: str):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"not an http(s) URL: {url}")
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return p.hostname, p.port or 80, "proxy "
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), ""


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail fast (one TCP connect, ``timeout`` s) when the host of ``url`` (or its proxy) cannot be reached."""
    host, port, via = _endpoint(url)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e) or type(e).__name__)
        raise DownloadError(
            f"cannot reach {via}{host}:{port} ({why}): downloading needs a network connection"
        ) from None


def check_sha256(sha256: Optional[str], what: str = "--sha256") -> Optional[str]:
    """``sha256`` as 64 lower-case hex digits (None stays None), else one :class:`DownloadError` line."""
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise DownloadError(f"{what} must be 64 hex digits, got {sha256!r}")
    return digest


def verify_present(path: str, sha256: Optional[str], quiet: bool = False) -> bool:
    """A file already at ``path``: checked against ``sha256`` when it is known (a mismatch is one line saying what
    to do; the file is left for the user to look at). Returns True when it was verified."""
    if sha256:
        digest = sha256_file(path)
        if digest.lower() != sha256.lower():
            raise DownloadError(f"{path} exists but its sha256 is {digest}, not the expected {sha256.lower()}: "
                                f"remove it to download again")
    if not quiet:
        state = "verified" if sha256 else "not verified: no sha256 given"
        print(f"{path}: already downloaded ({state})", file=sys.stderr)
    return bool(sha256)


def _verify(part: str, final: str, sha256: Optional[str], size: Optional[int]) -> str:
    got_size = os.path.getsize(part)
    if size is not None and got_size != int(size):
        os.remove(part)
        raise DownloadError(f"{os.path.basename(final)}: expected {size} bytes, got {got_size}; removed the download")
    digest = sha256_file(part)
    if sha256 and digest.lower() != sha256.lower():
        os.remove(part)
        raise DownloadError(
            f"checksum mismatch for {os.path.basename(final)}: expected sha256 {sha256}, got {digest}; "
            f"removed the download"
        )
    os.replace(part, final)  # not hat.io.atomic_output: the named .part survives an interrupt, to be resumed
    return digest


class _Progress:
    def __init__(self, name: str, total: Optional[int], start: int, quiet: bool):
        self.bar = None
        if quiet:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, file=sys.stderr,
                            disable=not sys.stderr.isatty(), leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            self.bar = None

    def update(self, n: int):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def http_download(url: str, dest: str, sha256: Optional[str] = None, size: Optional[int] = None,
                  timeout: float = 30.0, quiet: bool = False) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename. Returns the sha256."""
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "hat-download/1", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    name = os.path.basename(dest)
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and (size is None or have == int(size)):
            return _verify(part, dest, sha256, size)  # the .part was already complete
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot download {url}: {getattr(e.reason, 'strerror', None) or e.reason}") from None
    except (socket.timeout, TimeoutError, ConnectionError) as e:
        raise DownloadError(f"cannot download {url}: {e or type(e).__name__}") from None
    with resp:
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if ctype.startswith("text/html") and not name.endswith((".html", ".htm")):
            raise DownloadError(f"{url} answered with a web page, not the file (link moved or expired?)")
        status = getattr(resp, "status", 200)
        mode = "ab"
        if have and status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {have}-"):
                raise DownloadError(f"{url}: the server resumed at the wrong offset ({crange!r})")
        else:
            have, mode = 0, "wb"  # no resume: the server sent the whole file
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else (int(size) if size else None)
        progress = _Progress(name, total, have, quiet)
        got = have
        try:
            with open(part, mode) as f:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    progress.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        except (OSError, socket.timeout) as e:
            raise DownloadError(
                f"download of {name} interrupted after {got} bytes ({e}); run again to resume"
            ) from None
        finally:
            progress.close()
    if total is not None and got < total:
        raise DownloadError(f"download of {name} stopped at {got} of {total} bytes; run again to resume")
    return _verify(part, dest, sha256, size)


def gdrive_download(file_id: str, dest: str, sha256: Optional[str] = None, size: Optional[int] = None,
                    quiet: bool = False) -> str:
    try:
        import gdown
    except ImportError:
        raise DownloadError(
            f"{os.path.basename(dest)} is on Google Drive and needs gdown: pip install gdown "
            f"(or set {URL_BASE_ENV} to a mirror)"
        ) from None
    part = dest + ".part"
    try:
        out = gdown.download(id=file_id, output=part, quiet=quiet, resume=True)
    except Exception as e:  # gdown raises its own exception types for quota/permission pages
        raise DownloadError(f"Google Drive download of {os.path.basename(dest)} failed: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not out or not os.path.exists(part):
        raise DownloadError(f"Google Drive download of {os.path.basename(dest)} failed (no file written)")
    return _verify(part, dest, sha256, size)


def fetch(entry: Entry, dest_dir: str, timeout: float = 30.0, quiet: bool = False, check: bool = True) -> str:
    """Download one registry entry into ``dest_dir`` (skipped when already there and verified). Returns its path."""
    final = os.path.join(dest_dir, entry.filename)
    if os.path.exists(final):
        verify_present(final, entry.sha256, quiet)
        return final
    url = url_for(entry)
    if check:
        check_reachable(url or "https://drive.google.com/")
    os.makedirs(dest_dir, exist_ok=True)
    if url:
        digest = http_download(url, final, entry.sha256, entry.size, timeout=timeout, quiet=quiet)
    else:
        digest = gdrive_download(entry.gdrive_id, final, entry.sha256, entry.size, quiet=quiet)
    if not quiet:
        pinned = "verified" if entry.sha256 else "not pinned in the registry"
        print(f"{final}: sha256 {digest} ({pinned})", file=sys.stderr)
    return final


# -- archives ------------------------------------------------------------------------------------------------------
def extract_archive(archive: str, dest: str) -> str:
    """Unpack ``archive`` (.tgz/.tar/.zip) as the directory ``dest``, atomically: into a temporary directory beside
    ``dest``, renamed into place at the end. An archive holding a single top-level folder gives that folder's
    contents."""
    dest = os.path.abspath(dest)
    if os.path.isdir(dest) and os.listdir(dest):
        raise DownloadError(f"{dest} already exists and is not empty: remove it to unpack again")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", dir=parent)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            try:
                with tarfile.open(archive) as t:
                    if hasattr(tarfile, "data_filter"):
                        t.extractall(tmp, filter="data")
                    else:  # pragma: no cover - Python < 3.11.4
                        t.extractall(tmp)
            except (tarfile.TarError, EOFError, OSError) as e:
                raise DownloadError(f"cannot unpack {archive}: {e}") from None
        root = tmp
        items = os.listdir(tmp)
        if len(items) == 1 and os.path.isdir(os.path.join(tmp, items[0])):
            root = os.path.join(tmp, items[0])
        if os.path.isdir(dest):
            os.rmdir(dest)  # empty
        os.rename(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# -- command line ----------------------------------------------------------------------------------------------
def list_entries(entries: Dict[str, Entry], kind: Optional[str] = None) -> List[str]:
    lines = []
    for e in entries.values():
        if kind and e.kind != kind:
            continue
        size = f"{int(e.size) / 1e6:.1f}MB" if e.size else "?"
        where = "gdrive" if not e.url else urllib.parse.urlsplit(e.url).hostname
        lines.append(f"{e.name}\t{e.kind}\t{e.task or '-'}\t{size}\t{where}")
    return lines


if __name__ == "__main__":  # python -m hat.download: the CLI is hat/stages/download_model.py
    from hat.cli import run
    from hat.stages.download_model import main

    run(lambda: main(prog="python -m hat.download"))
