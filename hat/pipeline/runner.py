"""The generic part of a pipeline: each stage runs a top-level script (the same one a user would run) as a subprocess,
leaves a stamp ``<stamps>/<key>.json`` when it finished, and is skipped on a rerun while its stamp is there.

The child's output is passed through as it comes: a progress bar's redraws (``\\r``) move in place; fairseq's
INFO/DEBUG log and library warnings are dropped unless ``verbose``. ``--stage-args STAGE=FLAGS`` (more flags for one
stage's script) is parsed by :func:`parse_stage_args`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from hat.errors import HatError
from hat.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[2]  # the repository: stage scripts run here, relative paths start here


def rel(p) -> str:
    """``p`` relative to the repository when it is inside it, else as given."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def parse_stage_args(items: Optional[Sequence[str]], stages: Sequence[str]) -> Dict[str, List[str]]:
    """``["search=--evo-iter 10", ...]`` -> ``{"search": ["--evo-iter", "10"], ...}`` (a stage given twice gets both,
    in order); a stage not in ``stages`` or no flags is a :class:`HatError`."""
    names = f"{', '.join(stages[:-1])} or {stages[-1]}" if len(stages) > 1 else stages[0]
    out: Dict[str, List[str]] = {}
    for item in items or []:
        stage, _, flags = item.partition("=")
        if stage not in stages or not flags.strip():
            raise HatError(f"--stage-args {item!r}: give STAGE='FLAGS' with STAGE {names}")
        out.setdefault(stage, []).extend(flags.split())
    return out


class Runner:
    """Runs stage scripts from the repository root and keeps their stamps under ``stamps``.

    ``retrain``: run a stage even where its stamp says done. ``verbose``: show the children's full log.
    ``before_stage(key)``: called before a stage that is not skipped runs (e.g. to refuse a stage the machine cannot
    run), may raise :class:`HatError`."""

    def __init__(self, stamps: Path, retrain: bool = False, verbose: bool = False,
                 before_stage: Optional[Callable[[str], None]] = None):
        self.stamps = Path(stamps)
        self.retrain = retrain
        self.verbose = verbose
        self.before_stage = before_stage or (lambda key: None)

    # -- one script ---------------------------------------------------------------------------------------------
    def run(self, cmd: Sequence, what: str, env: Optional[Dict[str, str]] = None) -> str:
        """Run ``cmd`` in the repository, its output passed through; returns the last 80 lines it printed that were
        kept (for the caller to pick results from). A non-zero exit is a :class:`HatError`."""
        cmd = [str(c) for c in cmd]
        print(f"\n==> {what}\n    {' '.join(cmd)}", flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        tail: List[str] = []
        filt = OutputFilter()
        for text, end in segments(proc.stdout):
            if end == "\r":  # a progress bar redrawing itself: pass it through as it is
                sys.stdout.write(text + end)
            elif self.verbose or not filt.noise(text + end):
                sys.stdout.write(text + end)
                tail = (tail + [text + end])[-80:]
            sys.stdout.flush()
        if proc.wait() != 0:
            raise HatError(f"{what} failed (exit {proc.returncode}); see the output above")
        return "".join(tail)

    def spawn(self, cmd: Sequence, log: Path, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        """Start ``cmd`` in the repository with its output going to ``log`` (for stages that run side by side)."""
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        with open(log, "w") as out:  # the child has its own copy of the descriptor
            return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    # -- stamps ---------------------------------------------------------------------------------------------------
    def stamp(self, key: str) -> Path:
        return self.stamps / f"{key}.json"

    def done(self, key: str) -> bool:
        """The stage has a stamp, the files it names are there and ``retrain`` was not asked for: it will be
        skipped."""
        return self.stamp(key).exists() and not self.retrain and not missing_outputs(self.read_stamp(key))

    def read_stamp(self, key: str) -> dict:
        return read_json(str(self.stamp(key)), what="stage stamp")

    def write_stamp(self, key: str, info: dict) -> None:
        write_json(str(self.stamp(key)), info, indent=1)

    def stage(self, key: str, what: str, fn: Callable[[], Optional[dict]], outputs: Sequence = ()) -> dict:
        """``fn()`` once: its dict (plus the seconds it took) is the stage's stamp, returned now and on every rerun
        instead of running ``fn`` again. A stamp is trusted only while the files it names are there (``outputs``,
        and the ``checkpoint`` / ``config`` the stage returned): a stage whose output was deleted runs again."""
        if self.stamp(key).exists() and not self.retrain:
            info = self.read_stamp(key)
            gone = missing_outputs(info)
            if not gone:
                print(f"\n==> {what}: done before ({rel(self.stamp(key))}, {info.get('seconds', '?')} s), skipped",
                      flush=True)
                return info
            print(f"\n==> {what}: its stamp ({rel(self.stamp(key))}) names {rel(ROOT / gone[0])}, which is gone: "
                  f"running it again", flush=True)
        self.before_stage(key)
        t0 = time.time()
        info = fn() or {}
        info["seconds"] = round(time.time() - t0, 1)
        if outputs:
            info["outputs"] = [str(p) for p in outputs]
        self.write_stamp(key, info)
        return info


def missing_outputs(info: dict) -> List[str]:
    """The files a stamp names (its ``outputs`` list, its ``checkpoint`` and ``config``) that are not there; paths
    are relative to the repository (where the stages run) or absolute."""
    paths = [info[k] for k in ("checkpoint", "config") if isinstance(info.get(k), str)]
    paths += [p for p in info.get("outputs") or () if isinstance(p, str)]
    return [p for p in paths if not (ROOT / p).exists()]


# -- a child's output ---------------------------------------------------------------------------------------------
def segments(stream) -> Iterator[Tuple[str, str]]:
    """(text, end) pieces of a child's output as they arrive; end is "\\n" for a line, "\\r" for a progress bar's
    redraw (kept apart so the bar moves in place instead of becoming one line per update)."""
    buf = b""
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while True:
            cuts = [i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0]
            if not cuts:
                break
            i = min(cuts)
            yield buf[:i].decode("utf-8", "replace"), chr(buf[i])
            buf = buf[i + 1:]
    if buf:
        yield buf.decode("utf-8", "replace"), "\n"


_KEEP = ("train_inner", ":valid:", "num. shared model params", "done training", "Stopping", "early stop")

_HYDRA_CHATTER = ("The version_base parameter", "Please specify a compat", "Will assume defaults", "See https://hydra",
                  "This behavior is deprecated", "The strict flag", "'config' is validated")


class OutputFilter:
    """fairseq's INFO/DEBUG log (and the lines that continue a dropped record, e.g. the model print) and library
    warnings are dropped; progress, validation, results and errors stay. --verbose shows everything."""

    def __init__(self):
        self.dropping = False

    def noise(self, line: str) -> bool:
        if line[:1] in (" ", "\t", ")") and self.dropping:
            return True
        self.dropping = False
        if line.startswith(("INFO:", "DEBUG:", "WARNING:")) and not any(k in line for k in _KEEP):
            self.dropping = True
            return True
        if line.startswith(_HYDRA_CHATTER):
            self.dropping = True
            return True
        if "Warning:" in line or "warnings.warn" in line:
            self.dropping = True
            return True
        return False
