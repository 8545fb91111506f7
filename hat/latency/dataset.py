"""The latency dataset: one CSV row per sampled SubTransformer, appended as soon as it is measured.

Columns: ``key``, ``config`` (the SubTransformer as JSON, never parsed with eval), the latency features
(:data:`hat.space.FEATURE_NAMES`: HAT's ten + qkv dim), HAT's four latency columns (ms), memory columns (MB), and
``backend`` / ``source`` (where the numbers come from). An interrupted run keeps every finished row; running the
same command again samples the same configs and skips those already in the file.
"""
from __future__ import annotations

import csv
import json
import os
import random
from typing import Callable, Dict, Iterable, List, Optional

from hat.errors import ConfigError
from hat.space import FEATURE_NAMES, SearchSpace, SubConfig

LATENCY_COLUMNS = ["latency_mean_encoder", "latency_mean_decoder", "latency_std_encoder", "latency_std_decoder"]
MEMORY_COLUMNS = ["weight_mb", "activation_mb", "measured_memory_mb"]
COLUMNS = ["key", "config"] + list(FEATURE_NAMES) + LATENCY_COLUMNS + MEMORY_COLUMNS + ["backend", "source"]


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


def read_rows(path: str) -> List[Dict[str, str]]:
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ConfigError(
                f"{path} exists with other columns; move it away or choose another lat-dataset-path"
            )
        rows = []
        for row in reader:
            if None in row.values() or row.get("source") in (None, ""):
                break  # a torn last line from a killed run: ignore it, it will be measured again
            rows.append(row)
        return rows


def _repair(path: str, rows: List[Dict[str, str]]) -> None:
    """Rewrite the file with only its complete rows (drops a torn last line), atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


class DatasetWriter:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.rows = read_rows(path)
        self.done = {r["key"] for r in self.rows}
        with open(path, "a+", newline="") as f:
            f.seek(0)
            lines = f.read().splitlines()
        if len(lines) != len(self.rows) + 1:
            _repair(path, self.rows)

    def add(self, cfg: SubConfig, latency: Dict[str, float], memory: Dict[str, Optional[float]], backend: str,
            source: str) -> Dict[str, object]:
        row = {"key": cfg.key(), "config": cfg.to_json()}
        row.update({k: v for k, v in zip(FEATURE_NAMES, cfg.features())})
        row.update({k: latency[k] for k in LATENCY_COLUMNS})
        row.update({k: ("" if memory.get(k) is None else memory[k]) for k in MEMORY_COLUMNS})
        row.update({"backend": backend, "source": source})
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if f.tell() == 0:
                w.writeheader()
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self.done.add(row["key"])
        return row


def config_of(row: Dict[str, str]) -> SubConfig:
    return SubConfig.from_hat_dict(json.loads(row["config"]))
