"""The SubTransformers HAT published, as a table: our parameter and FLOP counts next to HAT's numbers.

    python -m hat.paper_table [--task wmt14.en-de] [--predictor CKPT] [--latency-csv CSV] [--markdown]

Rows are the architecture files ``configs/<task>/subtransformer/HAT_*.yml`` (HAT's names: hardware, latency and
BLEU are in the name). Columns:

* ``params`` -- ours: the parameters of the model this repo builds for the architecture (on the meta device, no
  memory), counted as HAT's README counts them: **without the embedding table and the output projection** ("they
  depend on the task"); the second ``params(M)`` column is HAT's README figure.
* ``GFLOPs`` -- ours, analytic (:func:`flops`), counted the way HAT did (``train.py --profile-flops`` with
  torchprofile): one teacher-forced forward pass of a batch of one sentence, **source and target both L tokens,
  L = 30 for WMT and 23 for IWSLT** (HAT's profiling lengths); FLOPs = 2 x multiply-accumulates of every matmul
  (Q/K/V/out projections, QK^T, attention x V, FFN), plus one per element for each LayerNorm and for the two scalings
  (query by head_dim^-1/2, embeddings by sqrt(dim)); bias adds, softmax, ReLU and the embedding lookup are free; the
  output projection is excluded. Arbitrary encoder-decoder attention over the last k encoder layers projects keys and
  values of k*L tokens.
* ``latency`` / ``BLEU`` / ``sacreBLEU`` and the second ``params(M)`` / ``GFLOPs`` columns -- HAT's published
  figures, labelled ``published:HAT`` (latency and BLEU from the name; the latency was measured by HAT on the hardware
  in the name, not here).
* ``predicted(ms)`` -- ``--predictor CKPT`` (:mod:`hat.predictor`'s checkpoint): labelled ``predicted:<backend>``
  after the measurements it was trained on, its protocol under the table. A row outside the predictor's search space
  (or, without a recorded space, beyond its training data) is ``n/a``, with the reason under the table.
* ``measured(ms)`` -- ``--latency-csv CSV`` (a latency_dataset.py CSV, read by :func:`hat.latency.dataset.read_table`):
  encoder + decoder latency of the CSV's row with the row's architecture, labelled with the CSV's source
  (``measured:<backend>``); ``n/a`` for architectures the CSV does not hold. Both latencies are for the machine and
  protocol of their file, not for HAT's hardware.

Published figures are HAT's README (github.com/mit-han-lab/hardware-aware-transformers, the table of pre-trained
SubTransformers). Seven published checkpoints have no architecture file in HAT's repository; they are listed under
the table, not invented.
"""
from __future__ import annotations

import glob
import os
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from hat.config import load_yaml
from hat.errors import ConfigError, HatError
from hat.space import SearchSpace, SubConfig, ende_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# HAT's short task names (in its model names) -> our config dir, label, profiling sentence length
TASKS = {
    "wmt14ende": ("wmt14.en-de", "WMT'14 En-De", 30),
    "wmt14enfr": ("wmt14.en-fr", "WMT'14 En-Fr", 30),
    "wmt19ende": ("wmt19.en-de", "WMT'19 En-De", 30),
    "iwslt14deen": ("iwslt14.de-en", "IWSLT'14 De-En", 23),
}
HARDWARE = {
    "raspberrypi": "Raspberry Pi ARM Cortex-A72 CPU",
    "xeon": "Intel Xeon E5-2640 CPU",
    "titanxp": "Nvidia TITAN Xp GPU",
}

# HAT's README: name -> (#Params (M, without embeddings and output layer), FLOPs (G), BLEU, SacreBLEU)
PUBLISHED: Dict[str, Tuple[float, float, float, float]] = {}


def _add(task: str, hw: str, latencies: str, params, flops_g, bleu, sacre):
    for lat, p, f, b, s in zip(latencies.split(), params, flops_g, bleu, sacre):
        PUBLISHED[f"HAT_{task}_{hw}@{lat}_bleu@{b:.1f}"] = (p, f, b, s)


_add("wmt14ende", "raspberrypi", "3.5s 4.0s 4.5s 5.0s 6.0s 6.9s",
     [25.22, 29.42, 35.72, 36.77, 44.13, 48.33], [1.53, 1.78, 2.19, 2.26, 2.70, 3.02],
     [25.8, 26.9, 27.6, 27.8, 28.2, 28.4], [25.6, 26.6, 27.1, 27.2, 27.6, 27.8])
_add("wmt14ende", "xeon", "137.9ms 204.2ms 278.7ms 340.2ms 369.6ms 450.9ms",
     [30.47, 35.72, 40.97, 46.23, 51.48, 56.73], [1.87, 2.19, 2.54, 2.86, 3.21, 3.53],
     [25.8, 27.6, 27.9, 28.1, 28.2, 28.5], [25.6, 27.1, 27.3, 27.5, 27.6, 27.9])
_add("wmt14ende", "titanxp", "57.1ms 91.2ms 126.0ms 146.7ms 208.1ms",
     [30.47, 35.72, 40.97, 51.20, 49.38], [1.87, 2.19, 2.54, 3.17, 3.09],
     [25.8, 27.6, 27.9, 28.1, 28.5], [25.6, 27.1, 27.3, 27.5, 27.8])
_add("wmt14enfr", "raspberrypi", "4.3s 5.3s 5.8s 6.9s 7.8s 9.1s",
     [25.22, 35.72, 36.77, 44.13, 49.38, 56.73], [1.53, 2.23, 2.26, 2.70, 3.09, 3.57],
     [38.8, 40.1, 40.6, 41.1, 41.4, 41.8], [36.0, 37.3, 37.8, 38.3, 38.5, 38.9])
_add("wmt14enfr", "xeon", "154.7ms 208.8ms 329.4ms 394.5ms 442.0ms",
     [30.47, 35.72, 44.13, 51.48, 56.73], [1.84, 2.23, 2.70, 3.28, 3.57],
     [39.1, 40.0, 41.1, 41.4, 41.7], [36.3, 37.2, 38.2, 38.5, 38.8])
_add("wmt14enfr", "titanxp", "69.3ms 94.9ms 132.9ms 168.3ms 208.3ms",
     [30.47, 35.72, 40.97, 46.23, 51.48], [1.84, 2.23, 2.51, 2.90, 3.25],
     [39.1, 40.0, 40.7, 41.1, 41.7], [36.3, 37.2, 37.8, 38.3, 38.8])
_add("wmt19ende", "titanxp", "55.7ms 93.2ms 134.5ms 176.1ms 204.5ms 237.8ms",
     [36.89, 42.28, 40.97, 46.23, 51.48, 56.73], [2.27, 2.63, 2.54, 2.86, 3.18, 3.53],
     [42.4, 44.4, 45.4, 46.2, 46.5, 46.7], [41.9, 43.9, 44.7, 45.6, 45.7, 46.0])
_add("iwslt14deen", "titanxp", "45.6ms 74.5ms 109.0ms 137.8ms 168.8ms",
     [16.82, 19.98, 23.13, 27.33, 31.54], [0.78, 0.93, 1.13, 1.32, 1.52],
     [33.4, 34.2, 34.5, 34.7, 34.8], [32.5, 33.3, 33.6, 33.8, 33.9])

_NAME = re.compile(r"^HAT_(?P<task>[a-z0-9]+)_(?P<hw>[a-z]+)@(?P<lat>[0-9.]+)(?P<unit>ms|s)_bleu@(?P<bleu>[0-9.]+)$")


@dataclass
class HatName:
    task: str  # HAT's short name, e.g. wmt14ende
    hardware: str  # raspberrypi, xeon, titanxp
    latency_ms: float
    latency: str  # as written, e.g. "3.5s"
    bleu: float


def parse_name(name: str) -> HatName:
    m = _NAME.match(name)
    if not m:
        raise HatError(f"not a HAT model name (HAT_<task>_<hardware>@<latency>_bleu@<bleu>): {name}")
    lat = float(m["lat"]) * (1000.0 if m["unit"] == "s" else 1.0)
    return HatName(m["task"], m["hw"], lat, m["lat"] + m["unit"], float(m["bleu"]))


def task_dir(name_or_dir: str) -> str:
    """``wmt14ende`` or ``wmt14.en-de`` -> ``wmt14.en-de``."""
    if name_or_dir in TASKS:
        return TASKS[name_or_dir][0]
    for short, (d, _, _) in TASKS.items():
        if name_or_dir == d:
            return d
    raise HatError(f"unknown task {name_or_dir!r}; known: {', '.join(v[0] for v in TASKS.values())}")


def sentence_length(task: str) -> int:
    d = task_dir(task)
    return next(v[2] for v in TASKS.values() if v[0] == d)


def load_arch(path: str) -> SubConfig:
    return SubConfig.from_hat_dict(load_yaml(path), source=path)


def _order(hn: HatName):
    hw = list(HARDWARE)
    return (hw.index(hn.hardware) if hn.hardware in hw else len(hw), hn.hardware, hn.latency_ms)


def configs_dir() -> str:
    """``configs/`` of the checkout this package lies in, else of the current directory (the architecture files are
    not part of an installed wheel)."""
    for root in (ROOT, os.getcwd()):
        d = os.path.join(root, "configs")
        if glob.glob(os.path.join(d, "*", "subtransformer", "HAT_*.yml")):
            return d
    raise HatError(f"no configs/<task>/subtransformer/HAT_*.yml in {ROOT} or the current directory: run from a "
                   f"checkout of hat-rknn (the architecture files are not installed with the package)")


def arch_files(task: Optional[str] = None) -> List[str]:
    dirs = [task_dir(task)] if task else [v[0] for v in TASKS.values()]
    configs = configs_dir()
    out = []
    for d in dirs:
        out += sorted(
            glob.glob(os.path.join(configs, d, "subtransformer", "HAT_*.yml")),
            key=lambda p: _order(parse_name(os.path.basename(p)[:-4])),
        )
    return out


# -- counts ------------------------------------------------------------------------------------------------------
def flops(cfg: SubConfig, src_len: int, tgt_len: Optional[int] = None) -> int:
    """FLOPs of one teacher-forced forward pass (batch 1), HAT's convention: see the module docstring."""
    ls = src_len
    lt = src_len if tgt_len is None else tgt_len
    q, e, d = cfg.qkv_dim, cfg.encoder_embed_dim, cfg.decoder_embed_dim
    macs = ls * e  # embedding scale
    for ffn in cfg.encoder_ffn_embed_dim:
        macs += ls * 4 * e * q + 2 * ls * ls * q + ls * q  # projections, QK^T and AV, query scaling
        macs += ls * 2 * e * ffn + 2 * ls * e  # FFN, two LayerNorms
    macs += lt * d
    for ffn, arb in zip(cfg.decoder_ffn_embed_dim, cfg.decoder_arbitrary_ende_attn):
        kv = ende_layers(arb) * ls  # keys/values: the last k encoder layers' outputs, concatenated in time
        macs += lt * 4 * d * q + 2 * lt * lt * q + lt * q  # self-attention
        macs += lt * 2 * d * q + kv * 2 * e * q + 2 * lt * kv * q + lt * q  # encoder-decoder attention
        macs += lt * 2 * d * ffn + 3 * lt * d  # FFN, three LayerNorms
    return 2 * macs


def parameters(cfg: SubConfig, share_all_embeddings: bool = True) -> int:
    """Parameters of the model this repo builds for ``cfg``, without embedding table and output projection (HAT's
    README count). Built on the meta device: no memory, any size."""
    import torch

    from hat.models.transformer import ModelOptions, SuperTransformer

    opt = ModelOptions(src_vocab=8, tgt_vocab=8, share_all_embeddings=share_all_embeddings)
    with torch.device("meta"):
        model = SuperTransformer(cfg, opt)
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or "embed_tokens" in name or "output_projection" in name:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# -- latency columns: predicted (--predictor) and measured (--latency-csv) -------------------------------------------
PUBLISHED_LABEL = "published:HAT"
PUBLISHED_NOTE = (f"{PUBLISHED_LABEL} = HAT's README (github.com/mit-han-lab/hardware-aware-transformers, pre-trained "
                  f"SubTransformers): #Params, FLOPs, BLEU, sacreBLEU; latency measured by HAT on the hardware in the "
                  f"name")

Figure = Tuple[Optional[float], Optional[str]]  # (ms, None) or (None, why it is n/a)


def _backend_of(source: str) -> str:
    """``measured:onnxruntime`` -> ``onnxruntime``; ``measured:hat:wmt14ende_xeon`` -> ``hat:wmt14ende_xeon``."""
    head, _, rest = source.partition(":")
    return rest if head in ("measured", "extrapolated") and rest else source


class PredictedLatency:
    """``--predictor CKPT``: a :mod:`hat.predictor` checkpoint. ``self(cfg)`` -> (ms, None), or (None, why) for an
    architecture the predictor was not trained for: outside its search space (the space saved in the checkpoint), or,
    when it saved none, a feature beyond the largest of its training data."""

    def __init__(self, path: str):
        from hat.predictor import LatencyPredictor

        self.path = path
        self.predictor = LatencyPredictor.load(path)  # CheckpointError: one line
        meta = self.predictor.meta
        self.space = None
        if meta.get("space"):
            try:
                self.space = SearchSpace.from_dict(dict(meta["space"]), source=f"the search space of {path}")
            except (ConfigError, TypeError, ValueError) as e:
                raise ConfigError(f"{path}: the search space saved in the latency predictor is unreadable ({e})") \
                    from None
        protocol = self.predictor.protocol
        self.protocol = protocol
        self.backend = protocol.backend if protocol is not None and protocol.backend else \
            _backend_of(self.predictor.source)
        self.label = f"predicted:{self.backend}"

    def describe(self) -> str:
        trained = f"trained on {self.predictor.source}"
        if self.protocol is not None:
            trained += f" ({self.protocol.describe()})"
        test = (self.predictor.meta.get("metrics") or {}).get("test") or {}
        err = f"; test MRE {100 * test['mape']:.1f} %" if isinstance(test.get("mape"), (int, float)) else ""
        space = f"search space {self.predictor.space_fingerprint}" if self.space is not None else \
            "no search space recorded"
        return f"{self.label} = latency predictor {self.path}, {trained}; {space}{err}"

    def why_not(self, cfg: SubConfig) -> Optional[str]:
        if self.space is not None:
            try:
                self.space.validate(cfg, source="architecture")
            except ConfigError as e:
                return "outside the predictor's search space: " + str(e).split(": ", 1)[-1]
            return None
        if str(self.predictor.meta.get("norm_source", "")).startswith("training split"):
            from hat.predictor import config_features

            vals = config_features(cfg, self.predictor.feature_names)
            over = [f"{name} {v:g} (largest {top:g})"
                    for name, v, top in zip(self.predictor.feature_names, vals, self.predictor.scale)
                    if v > top * (1 + 1e-9)]
            if over:
                return "beyond the predictor's training data: " + ", ".join(over)
        return None

    def __call__(self, cfg: SubConfig) -> Figure:
        why = self.why_not(cfg)
        if why:
            return None, why
        return float(self.predictor.predict_config(cfg)), None


class MeasuredLatency:
    """``--latency-csv CSV``: a latency_dataset.py CSV. ``self(cfg)`` -> the encoder + decoder latency (ms) of the
    CSV's row with ``cfg``'s architecture (the median if it has several), or (None, why)."""

    def __init__(self, path: str):
        from hat.latency.dataset import one_protocol, read_table

        self.path = path
        data = read_table(path)  # ConfigError: one line
        if data.layout != "ours":
            raise ConfigError(f"{path} is one of HAT's latency CSVs (features only, no config column): its rows cannot "
                              f"be matched to architectures; give a CSV written by latency_dataset.py")
        self.protocol = one_protocol(data, "one protocol per column")
        self.label = data.source
        self.rows = len(data)
        self.by_key: Dict[str, List[float]] = defaultdict(list)
        for cfg, ms in zip(data.configs or [], data.latency):
            self.by_key[cfg.key()].append(float(ms))

    def describe(self) -> str:
        how = f" ({self.protocol.describe()})" if self.protocol is not None else " (no protocol recorded)"
        return (f"{self.label} = {self.path}: encoder + decoder latency of the row with the same architecture"
                f"{how}")

    def __call__(self, cfg: SubConfig) -> Figure:
        got = self.by_key.get(cfg.key())
        if not got:
            return None, f"not among the {self.rows} rows of {self.path}"
        return float(statistics.median(got)), None


# -- table ---------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    task: str
    hardware: str
    latency: str
    bleu: float
    sacrebleu: Optional[float]
    params: int
    params_published_m: Optional[float]
    gflops: float
    gflops_published: Optional[float]
    predicted_ms: Optional[float] = None
    predicted_why: Optional[str] = None
    measured_ms: Optional[float] = None
    measured_why: Optional[str] = None


def rows(task: Optional[str] = None, predicted: Optional[Callable[[SubConfig], Figure]] = None,
         measured: Optional[Callable[[SubConfig], Figure]] = None) -> List[Row]:
    out = []
    for path in arch_files(task):
        name = os.path.basename(path)[:-4]
        hn = parse_name(name)
        d, _, length = TASKS[hn.task]
        cfg = load_arch(path)
        pub = PUBLISHED.get(name)
        pred = predicted(cfg) if predicted is not None else (None, None)
        meas = measured(cfg) if measured is not None else (None, None)
        out.append(
            Row(
                name=name,
                task=d,
                hardware=hn.hardware,
                latency=hn.latency,
                bleu=hn.bleu,
                sacrebleu=pub[3] if pub else None,
                params=parameters(cfg, share_all_embeddings=not d.startswith("iwslt")),
                params_published_m=pub[0] if pub else None,
                gflops=flops(cfg, length) / 1e9,
                gflops_published=pub[1] if pub else None,
                predicted_ms=pred[0],
                predicted_why=pred[1],
                measured_ms=meas[0],
                measured_why=meas[1],
            )
        )
    return out


def checkpoint_only(task: Optional[str] = None) -> List[str]:
    """Published checkpoints whose architecture file HAT did not publish."""
    have = {os.path.basename(p)[:-4] for p in arch_files(task)}
    dirs = {task_dir(task)} if task else None
    return [n for n in PUBLISHED if n not in have and (dirs is None or TASKS[parse_name(n).task][0] in dirs)]


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def columns(predicted_label: Optional[str] = None, measured_label: Optional[str] = None) -> List[Tuple[str, str]]:
    """(title, source) of every column: where each figure comes from."""
    return [
        ("name", ""),
        ("params(M)", "counted"),
        ("params(M)", PUBLISHED_LABEL),
        ("GFLOPs", "analytic"),
        ("GFLOPs", PUBLISHED_LABEL),
        ("latency", PUBLISHED_LABEL),
        ("BLEU", PUBLISHED_LABEL),
        ("sacreBLEU", PUBLISHED_LABEL),
        ("predicted(ms)", predicted_label or "no --predictor"),
        ("measured(ms)", measured_label or "no --latency-csv"),
    ]


def render(table: List[Row], markdown: bool = False, predicted_label: Optional[str] = None,
           measured_label: Optional[str] = None) -> str:
    cols = columns(predicted_label, measured_label)
    body = [
        [
            r.name,
            f"{r.params / 1e6:.2f}",
            _fmt(r.params_published_m, ".2f"),
            f"{r.gflops:.2f}",
            _fmt(r.gflops_published, ".2f"),
            r.latency,
            f"{r.bleu:.1f}",
            _fmt(r.sacrebleu, ".1f"),
            _fmt(r.predicted_ms, ".1f"),
            _fmt(r.measured_ms, ".1f"),
        ]
        for r in table
    ]
    if markdown:
        head = [f"{t} [{s}]" if s else t for t, s in cols]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    heads = [[t for t, _ in cols], [f"[{s}]" if s else "" for _, s in cols]]  # two header lines: title, source
    widths = [max(len(x[i]) for x in heads + body) for i in range(len(cols))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(h) for h in heads] + [fmt(b) for b in body])


def na_notes(table: List[Row]) -> List[str]:
    """One line per reason a predicted or measured figure is n/a, naming the rows (all of them: 'every row')."""
    out = []
    for title, attr in (("predicted(ms)", "predicted_why"), ("measured(ms)", "measured_why")):
        groups: Dict[str, List[str]] = {}
        for r in table:
            why = getattr(r, attr)
            if why:
                groups.setdefault(why, []).append(r.name)
        for why, names in groups.items():
            which = f"every row ({len(names)})" if len(names) == len(table) else ", ".join(names)
            out.append(f"{title} n/a, {why}: {which}")
    return out


if __name__ == "__main__":  # python -m hat.paper_table: the CLI is hat/stages/paper_table.py
    from hat.cli import run
    from hat.stages.paper_table import main

    run(main)
