"""The latency dataset: one CSV row per sampled SubTransformer, appended as soon as it is measured; and the one
reader of every latency CSV the predictor trains on.

Columns (:data:`COLUMNS`): ``key``, ``config`` (the SubTransformer as JSON, never parsed with eval), the latency
features (:data:`hat.space.FEATURE_NAMES`: HAT's ten + qkv dim), HAT's four latency columns (ms), memory columns
(MB), and ``backend`` / ``source`` (where the numbers come from). An interrupted run keeps every finished row; running
the same command again samples the same configs and skips those already in the file.

:func:`read_table` reads ours and HAT's published CSVs (HAT's ten feature columns first, then its latency columns)
into a :class:`LatencyData`, told apart by the header.
"""
from __future__ import annotations

import atexit
import csv
import io
import json
import math
import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hat.errors import ConfigError
from hat.io import atomic_output
from hat.latency.protocol import LATENCY_COLUMNS, Protocol
from hat.space import FEATURE_NAMES, SearchSpace, SubConfig

MEMORY_COLUMNS = ["weight_mb", "activation_mb", "memory_model_mb", "memory_model_source", "measured_memory_mb",
                  "measured_memory_source"]  # every memory figure beside its source (hat.memory.dataset_columns)
COLUMNS = (["key", "config"] + list(FEATURE_NAMES) + LATENCY_COLUMNS + MEMORY_COLUMNS
           + ["backend", "source", "protocol"])
TARGET_COLUMNS = tuple(LATENCY_COLUMNS[:2])  # a predictor's target: encoder + decoder mean latency
HAT_FEATURES = tuple(FEATURE_NAMES[:10])  # HAT's CSVs: these ten feature columns first


def sample_configs(space: SearchSpace, size: int, seed: int) -> List[SubConfig]:
    """``size`` distinct configs, deterministic in (space, seed); the largest and smallest come first."""
    rng = random.Random(f"latency-dataset:{seed}")
    out, seen = [], set()
    candidates = [space.largest(), space.smallest()]
    tries = 0
    while len(out) < size and tries < size * 50:
        cfg = candidates.pop(0) if candidates else space.sample(rng)
        tries += 1
        if cfg.key() in seen:
            continue
        seen.add(cfg.key())
        out.append(cfg)
    return out


# -- writing (latency_dataset.py) -------------------------------------------------------------------------------------
def _complete(row: Dict[str, str]) -> bool:
    """A row with every field, whose last field (the protocol, JSON) parses: a row cut short by a killed run is not."""
    if None in row.values() or any(v is None for v in row.values()) or not row.get("source"):
        return False
    try:
        return isinstance(json.loads(row.get("protocol") or ""), dict)
    except ValueError:
        return False


def read_rows(path: str) -> List[Dict[str, str]]:
    """The rows of a latency_dataset.py CSV. A torn LAST row (a killed run) is left out, to be measured again; a bad
    row anywhere else is an error naming its line (nothing is dropped or rewritten)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ConfigError(
                f"{path} exists with other columns (written by another version or another tool); move it away or "
                f"choose another lat-dataset-path"
            )
        rows = [(reader.line_num, r) for r in reader]
    out = []
    for i, (line, row) in enumerate(rows):
        if not _complete(row):
            if i == len(rows) - 1:
                break  # the torn last line of a killed run
            raise ConfigError(f"{path} line {line}: incomplete or damaged row (not the last one, so not an "
                              f"interrupted write); fix or remove that line")
        out.append(row)
    return out


def _repair(path: str, rows: List[Dict[str, str]]) -> None:
    """Rewrite the file with only its complete rows (drops a torn last line), atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)


def row_protocol(row: Dict[str, str], where: str = "row") -> Protocol:
    return Protocol.from_json(row["protocol"], source=where)


_LOCKS: Dict[str, list] = {}  # lock file -> [descriptor, writers of this process using it]


def lock_path(path: str) -> str:
    """The sidecar lock file of a dataset CSV: ``.<name>.lock`` beside it."""
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.lock")


def _lock(path: str) -> str:
    """Hold the dataset's lock (``fcntl.flock`` on its sidecar file, not waiting) or refuse in one line: two runs
    appending to one CSV would measure and write the same configs twice. Writers of one process share the lock."""
    import fcntl

    lock = lock_path(path)
    held = _LOCKS.get(lock)
    if held:
        held[1] += 1
        return lock
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise ConfigError(f"{path} is being written by another run ({f'pid {owner}, ' if owner else ''}lock "
                              f"{lock}); wait for it to finish or choose another lat-dataset-path") from None
        try:  # the lock file may have been removed (and made again) by a run that just finished: lock the one there
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[lock] = [fd, 1]
    return lock


def _unlock(lock: str) -> None:
    held = _LOCKS.get(lock)
    if not held:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _LOCKS[lock]
    try:
        os.unlink(lock)  # while still holding it: a run that opened this file finds it gone and tries again
    except OSError:
        pass
    os.close(held[0])


@atexit.register
def _unlock_all():
    for lock in list(_LOCKS):
        _LOCKS[lock][1] = 1
        _unlock(lock)


class DatasetWriter:
    """Appends one row per measured SubTransformer (fsync'ed); every row of a file is measured with one protocol:
    :meth:`check_protocol` refuses to mix. One writer at a time per file: a second run on the same CSV is refused
    (:func:`_lock`) until the first ends (or :meth:`close`)."""

    def __init__(self, path: str):
        self.path = path
        if os.path.isdir(path):
            raise ConfigError(f"lat-dataset-path {path} is a directory; give the CSV file to write, e.g. "
                              f"{os.path.join(path, 'lat.csv')}")
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self._lock = _lock(path)
        try:
            self.rows = read_rows(path)
        except BaseException:
            self.close()
            raise
        self.done = {r["key"] for r in self.rows}
        self._clean = False  # a torn last line is dropped before the first append, not before (a refused run
        # leaves the file as it found it)

    def close(self) -> None:
        """Release the file's lock (also at exit)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock:
            _unlock(lock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit the lock is already released by _unlock_all
            pass

    def _ensure_clean(self):
        if self._clean:
            return
        text = ""
        if os.path.isfile(self.path):
            with open(self.path, newline="") as f:
                text = f.read()
        if text and (len(text.splitlines()) != len(self.rows) + 1 or not text.endswith(("\n", "\r"))):
            _repair(self.path, self.rows)
        self._clean = True

    def protocol(self):
        """The protocol of the rows already in the file (None when empty)."""
        return row_protocol(self.rows[0], f"{self.path} line 2") if self.rows else None

    def check_protocol(self, protocol) -> None:
        """Refuse to append rows measured another way than the rows already there (one line naming how)."""
        have = self.protocol()
        if have is None:
            return
        why = have.mismatch(protocol)
        if why:
            raise ConfigError(f"{self.path} holds rows measured with another protocol ({why}); choose another "
                              f"lat-dataset-path or the same settings")

    def add(self, cfg: SubConfig, latency: Dict[str, float], memory: Dict[str, object], backend: str,
            source: str, protocol) -> Dict[str, object]:
        row = {"key": cfg.key(), "config": cfg.to_json()}
        row.update({k: v for k, v in zip(FEATURE_NAMES, cfg.features())})
        row.update({k: latency[k] for k in LATENCY_COLUMNS})
        row.update({k: ("" if memory.get(k) is None else memory[k]) for k in MEMORY_COLUMNS})
        row.update({"backend": backend, "source": source, "protocol": protocol.to_json()})
        self._ensure_clean()
        self._append(row)
        self.done.add(row["key"])
        self.rows.append({k: str(v) for k, v in row.items()})
        return row

    def _append(self, row: Dict[str, object]) -> None:
        """One row (with the header first in an empty file), fsync'ed; a failed write (a full disk) is cut off
        again, so the file never ends in half a row written by this run."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            if start == 0:
                w.writeheader()
            w.writerow(row)
            data = buf.getvalue().encode("utf-8")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise OSError(e.errno, e.strerror, self.path) from None
        finally:
            os.close(fd)


def config_of(row: Dict[str, str]) -> SubConfig:
    return SubConfig.from_hat_dict(json.loads(row["config"]))


# -- reading for a predictor: ours and HAT's CSVs ---------------------------------------------------------------------
@dataclass
class LatencyData:
    features: np.ndarray  # (n, F), raw feature values
    latency: np.ndarray  # (n,), encoder + decoder mean latency in ms
    feature_names: Tuple[str, ...]
    source: str  # what the latencies are: "measured:<source>"
    layout: str  # "hat" (HAT's CSV) or "ours" (latency_dataset.py's CSV)
    path: str
    configs: Optional[List[SubConfig]] = None
    sources: Tuple[str, ...] = ()  # ours: the distinct source (else backend) values of the rows, sorted
    lines: Tuple[int, ...] = ()  # the file's line number of every row
    protocols: Tuple[str, ...] = ()  # ours: the distinct protocol JSON values of the rows (none in older files)

    def __len__(self):
        return len(self.latency)


def _float(v, path, line, col) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{path} line {line}: column {col} is not a number: {v!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{path} line {line}: column {col} is not finite: {v!r}")
    return x


def _source_label(values: Sequence[str]) -> str:
    vals = sorted({v for v in values if v})
    label = "+".join(vals) if vals else "unknown"
    return label if label.startswith(("measured", "extrapolated")) else f"measured:{label}"


def read_table(path: str, space: Optional[SearchSpace] = None, size: Optional[int] = None) -> LatencyData:
    """Read a latency CSV: ours (a ``config`` column; features are computed from it, all eleven) or HAT's (its ten
    feature columns first), told apart by the header. The target is encoder + decoder mean latency (> 0 ms). With
    ``space``, every config of ours must come from it (HAT's rows have features only: see
    :func:`hat.predictor.read_dataset`). ``size`` keeps the first rows. A torn last line (an interrupted run) is
    dropped; blank lines are skipped. ``source`` is ``measured:hat:<file name>`` for HAT's CSVs, else the rows'
    ``source`` (or ``backend``) values, all of them in ``sources``."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"latency dataset not found: {path}")
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise ConfigError(f"{path} is empty")
            header = [h.strip() for h in header]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path} is not a latency CSV ({why})") from None
    missing = [c for c in TARGET_COLUMNS if c not in header]
    if "config" in header:
        layout = "ours"
    elif tuple(header[:10]) == HAT_FEATURES:
        layout = "hat"
    else:
        raise ConfigError(f"{path}: unrecognised header (neither a 'config' column nor HAT's ten feature columns "
                          f"first): {','.join(header[:4])},...")
    if missing:
        raise ConfigError(f"{path}: no {missing[0]} column")
    col = {h: i for i, h in enumerate(header)}
    enc_i, dec_i = col[TARGET_COLUMNS[0]], col[TARGET_COLUMNS[1]]
    feats, lats, configs, sources, lines, protocols = [], [], [], [], [], set()
    for n, row in enumerate(rows):
        line = n + 2
        if not row or all(not v.strip() for v in row):
            continue
        if len(row) != len(header):
            if n == len(rows) - 1:
                break  # a torn last line of an interrupted run
            raise ConfigError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        lat = _float(row[enc_i], path, line, TARGET_COLUMNS[0]) + _float(row[dec_i], path, line, TARGET_COLUMNS[1])
        if lat <= 0:
            raise ConfigError(f"{path} line {line}: latency must be > 0 ms, got {lat}")
        if layout == "ours":
            try:
                cfg = SubConfig.from_json(row[col["config"]])
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{path} line {line}: config column is not a SubTransformer JSON ({e})") from None
            if space is not None:
                try:
                    space.validate(cfg, source=f"{path} line {line}")
                except ConfigError as e:
                    raise ConfigError(f"{e} (the dataset is not from the search space of {space.source})") from None
            configs.append(cfg)
            feats.append([float(v) for v in cfg.features()])
            if "protocol" in col and row[col["protocol"]].strip():
                protocols.add(_canonical(row[col["protocol"]], path, line))
            for key in ("source", "backend"):
                if key in col and row[col[key]].strip():
                    sources.append(row[col[key]].strip())
                    break
        else:
            feats.append([_float(row[i], path, line, HAT_FEATURES[i]) for i in range(10)])
        lats.append(lat)
        lines.append(line)
        if size is not None and len(lats) >= size:
            break
    names = tuple(FEATURE_NAMES) if layout == "ours" else HAT_FEATURES
    x = np.array(feats, dtype=np.float64).reshape(len(feats), len(names))
    distinct = tuple(sorted(set(sources)))
    if layout == "ours":
        source = _source_label(distinct)
    else:
        source = "measured:hat:" + os.path.splitext(os.path.basename(path))[0]
    return LatencyData(x, np.array(lats), names, source, layout, path, configs or None, distinct, tuple(lines),
                       tuple(sorted(protocols)))


def one_protocol(data: LatencyData, what: str) -> Optional[Protocol]:
    """The one protocol (None for rows without one) of a dataset that is used as one set of numbers; mixed sources or
    protocols are refused in one line naming how they differ (``what``: e.g. "one predictor per protocol")."""
    if len(data.sources) > 1:
        raise ConfigError(f"{data.path} mixes latencies from {', '.join(data.sources)}: {what.replace('protocol', 'source')}")
    if len(data.protocols) > 1:
        a, b = (Protocol.from_json(p) for p in data.protocols[:2])
        why = a.mismatch(b) or f"machine {a.machine!r} vs {b.machine!r}"
        raise ConfigError(f"{data.path} mixes {len(data.protocols)} measuring protocols ({why}): {what}")
    return Protocol.from_json(data.protocols[0], source=data.path) if data.protocols else None


def _canonical(text: str, path: str, line: int) -> str:
    """A row's protocol as canonical JSON (field order and spacing do not make two protocols differ)."""
    return Protocol.from_json(text, source=f"{path} line {line}").to_json()
