"""The ground floor every layer may use: atomic file writes, JSON, sha256.

A file that users keep is either its old self, absent, or complete: :func:`atomic_output` yields a temporary path in
the final directory and moves it into place (``os.replace``) only when the block finished without an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional, Union

from hat.errors import HatError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(final_path: str, suffix: str = ".partial") -> Iterator[str]:
    """Yields a temporary path next to ``final_path``; on success it is moved to ``final_path``, on any error it is
    removed, so ``final_path`` is either the old file, absent, or complete. ``suffix`` keeps an extension some
    writers need (matplotlib picks the format from it, torch does not care)."""
    d = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(d, exist_ok=True)
    base = os.path.basename(final_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=suffix, dir=d)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600; a finished file gets the usual mode
        os.replace(tmp, final_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json(path: str, data, indent: Optional[int] = 2) -> None:
    write_text(path, json.dumps(data, indent=indent, sort_keys=False) + "\n")


def read_json(path: str, what: str = "JSON file"):
    """The parsed file, or one :class:`HatError` line naming the file (missing, unreadable or not JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise HatError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HatError(f"{path}: not a readable {what} ({str(e).splitlines()[0]})") from None


def sha256_file(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
