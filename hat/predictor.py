"""Latency predictor: HAT's MLP on the latency features, with everything needed to use it inside its checkpoint.

HAT's predictor is an MLP (features -> hidden x layers -> 1) trained with an MSE loss on latencies divided by a
hand-set ``lat-norm``, features divided by a hand-set ``feature-norm`` that the search config had to repeat. Here:

* **features**: HAT's ten (:data:`hat.space.FEATURE_NAMES`), plus the qkv dim when the dataset has it (our CSVs,
  which hold each config as JSON; HAT's CSVs have only the ten). The feature names are recorded in the checkpoint.
  ``decoder_arbitrary_ende_attn_avg`` follows HAT's convention, the mean number of encoder layers a decoder layer
  attends (gene -1 -> 1, 1 -> 2, 2 -> 3), as in HAT's published CSVs;
* **normalisation**: each feature is divided by the largest value the search space allows (from the data's training
  split when no space is given, or HAT's ``feature-norm`` if the config has one and no space); a few products of the
  normalised features (layers x embed x ffn, ...: the shapes of the matrix products) are appended. The target is
  log-latency, standardised with the training split's mean and std. All of it is saved in the checkpoint with the
  search space's fingerprint, so nothing has to be kept in sync by hand;
* **training**: an ensemble of small MLPs (HAT's ``Net``: a first layer, then ``hidden-layer-num`` hidden layers),
  trained as one batched computation with AdamW, a one-cycle learning rate and an L1 loss on the standardised
  log-latency (robust to the outliers that latency measurements have); each member keeps the weights of its best
  validation error (model selection on the valid split only); the ensemble predicts the geometric mean;
* **split**: HAT's random 80/10/10 (train/valid/test), seeded; metrics are reported on the test split.

Only torch and numpy are imported (scikit-learn baselines, progress bars and plots live in the scripts).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from hat.errors import CheckpointError, ConfigError
from hat.io import atomic_output
# The CSV layouts (ours and HAT's) are hat.latency.dataset's; these names stay importable from here.
from hat.latency.dataset import HAT_FEATURES, TARGET_COLUMNS, LatencyData, read_table  # noqa: F401
from hat.space import CHOICE_KEYS, FEATURE_NAMES, SearchSpace, SubConfig, ende_layers

FORMAT = "hat-latency-predictor"
VERSION = 1

# Products of normalised features appended to the inputs (only those whose factors are all present).
PRODUCTS = (
    ("encoder_layer_num", "encoder_embed_dim", "encoder_ffn_embed_dim_avg"),
    ("encoder_layer_num", "encoder_embed_dim", "encoder_embed_dim"),
    ("decoder_layer_num", "decoder_embed_dim", "decoder_ffn_embed_dim_avg"),
    ("decoder_layer_num", "decoder_embed_dim", "decoder_embed_dim"),
    ("decoder_layer_num", "decoder_arbitrary_ende_attn_avg", "encoder_embed_dim"),
    ("decoder_layer_num", "decoder_arbitrary_ende_attn_avg", "decoder_embed_dim"),
    ("decoder_layer_num", "decoder_self_attention_heads_avg"),
    ("decoder_layer_num", "decoder_ende_attention_heads_avg"),
    ("encoder_layer_num", "encoder_self_attention_heads_avg"),
    ("decoder_layer_num", "decoder_arbitrary_ende_attn_avg"),
    ("decoder_layer_num", "decoder_embed_dim"),
    ("encoder_layer_num", "encoder_embed_dim", "qkv_dim"),
    ("decoder_layer_num", "decoder_embed_dim", "qkv_dim"),
    ("decoder_layer_num", "decoder_arbitrary_ende_attn_avg", "encoder_embed_dim", "qkv_dim"),
)


# -- features ----------------------------------------------------------------------------------------------------
def config_features(cfg: SubConfig, names: Sequence[str] = FEATURE_NAMES) -> List[float]:
    """The latency features of one config, in ``names`` order (:meth:`SubConfig.features`, HAT's convention)."""
    f = dict(zip(FEATURE_NAMES, cfg.features()))
    return [float(f[n]) for n in names]


def space_feature_range(space: SearchSpace, names: Sequence[str] = FEATURE_NAMES) -> Tuple[np.ndarray, np.ndarray]:
    """(min, max) of every feature over the space (per-layer averages lie between the smallest and largest
    choice)."""
    c = space.choices
    arb = [ende_layers(a) for a in c["decoder-arbitrary-ende-attn-choice"]]
    max_enc = max(c["encoder-layer-num-choice"])
    arb = [a for a in arb if a <= max_enc] or [1]
    keys = {
        "encoder_embed_dim": c["encoder-embed-choice"],
        "encoder_layer_num": c["encoder-layer-num-choice"],
        "encoder_ffn_embed_dim_avg": c["encoder-ffn-embed-dim-choice"],
        "encoder_self_attention_heads_avg": c["encoder-self-attention-heads-choice"],
        "decoder_embed_dim": c["decoder-embed-choice"],
        "decoder_layer_num": c["decoder-layer-num-choice"],
        "decoder_ffn_embed_dim_avg": c["decoder-ffn-embed-dim-choice"],
        "decoder_self_attention_heads_avg": c["decoder-self-attention-heads-choice"],
        "decoder_ende_attention_heads_avg": c["decoder-ende-attention-heads-choice"],
        "decoder_arbitrary_ende_attn_avg": [1] + arb,
        "qkv_dim": c["qkv-dim-choice"],
    }
    lo = np.array([float(min(keys[n])) for n in names])
    hi = np.array([float(max(keys[n])) for n in names])
    return lo, hi


def products_for(names: Sequence[str]) -> List[Tuple[str, ...]]:
    have = set(names)
    return [p for p in PRODUCTS if set(p) <= have]


def design_matrix(features: np.ndarray, names: Sequence[str], scale: np.ndarray,
                  products: Sequence[Sequence[str]]) -> np.ndarray:
    """Normalised features followed by the products of normalised features."""
    z = np.asarray(features, dtype=np.float64) / scale
    idx = {n: i for i, n in enumerate(names)}
    cols = [z] + [np.prod(z[:, [idx[n] for n in p]], axis=1, keepdims=True) for p in products]
    return np.concatenate(cols, axis=1)


# -- metrics -----------------------------------------------------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def metrics(measured, predicted) -> Dict[str, float]:
    """RMSE (ms), MAPE = HAT's mean relative error (fraction), share within +-10%, Spearman rank correlation."""
    y = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    rel = np.abs(p - y) / y
    return {
        "n": int(len(y)),
        "rmse_ms": float(np.sqrt(np.mean((p - y) ** 2))),
        "mape": float(np.mean(rel)),
        "within10": float(np.mean(rel <= 0.10)),
        "spearman": spearman(y, p),
    }


# -- datasets ----------------------------------------------------------------------------------------------------
def read_dataset(path: str, space: Optional[SearchSpace] = None, feature_dim: Optional[int] = None,
                 size: Optional[int] = None) -> LatencyData:
    """Read a latency CSV (:func:`hat.latency.dataset.read_table`): ours (a ``config`` JSON column; features are
    computed from it, all eleven) or HAT's (its ten feature columns first), told apart by the header. The target is
    encoder + decoder mean latency. With ``space``, every row must come from it. ``feature_dim`` keeps the first
    features (10: HAT's ten), ``size`` the first rows. At least 10 rows, and one source, per predictor."""
    data = read_table(path, space=space, size=size)
    names, x = data.feature_names, data.features
    if feature_dim is not None:
        if not 1 <= feature_dim <= len(names):
            raise ConfigError(f"feature-dim {feature_dim}, but {path} has {len(names)} features ({data.layout} "
                              f"layout)")
        names, x = names[:feature_dim], x[:, :feature_dim]
    if len(data) < 10:
        raise ConfigError(f"{path}: {len(data)} rows; a predictor needs at least 10")
    if data.layout == "hat" and space is not None:
        lo, hi = space_feature_range(space, names)
        bad = np.argwhere((x < lo - 1e-6) | (x > hi + 1e-6))
        if len(bad):
            r, c = bad[0]
            raise ConfigError(f"{path} line {data.lines[r]}: {names[c]}={x[r, c]:g} is outside the search space of "
                              f"{space.source} ({lo[c]:g}..{hi[c]:g})")
    from hat.latency.dataset import one_protocol

    one_protocol(data, "one predictor per protocol")
    return dataclasses.replace(data, features=x, feature_names=tuple(names))


def split_indices(n: int, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)):
    """HAT's protocol: shuffle, then the first floor(0.8 n) rows train, the next floor(0.1 n) valid, the rest
    test. Seeded, so the same seed gives the same split."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"split must be three non-negative fractions summing to 1, got {list(fractions)}")
    perm = np.random.RandomState(seed).permutation(n)
    a = int(math.floor(fractions[0] * n))
    b = a + int(math.floor(fractions[1] * n))
    if a < 2 or b - a < 1 or n - b < 1:
        raise ConfigError(f"{n} rows are too few for a {list(fractions)} split")
    return perm[:a], perm[a:b], perm[b:]


# -- model -------------------------------------------------------------------------------------------------------
class EnsembleMLP(nn.Module):
    """``members`` independent copies of HAT's Net (``in -> hidden``, ``hidden_layer_num`` x ``hidden -> hidden``,
    ``hidden -> 1``, ReLU), evaluated as one batched computation. Input (B, in) or (members, B, in); output
    (members, B)."""

    def __init__(self, in_dim: int, hidden_dim: int, hidden_layer_num: int, members: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (hidden_layer_num + 1) + [1]
        self.members = members
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(a)  # nn.Linear's default init
            self.weights.append(nn.Parameter(torch.empty(members, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(members, 1, b).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
        return x.squeeze(-1)


@dataclass
class TrainParams:
    hidden_dim: int = 64
    hidden_layer_num: int = 1
    ensemble: int = 5
    train_steps: int = 1000
    bsz: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 1
    split: Tuple[float, float, float] = (0.8, 0.1, 0.1)
    engineered_features: bool = True
    eval_every: int = 50
    feature_norm: Optional[Sequence[float]] = None  # HAT's; used only without a search space


@dataclass
class TrainReport:
    split: Dict[str, np.ndarray]  # train/valid/test row indices
    predictions: np.ndarray  # ensemble prediction for every row (ms)
    metrics: Dict[str, Dict[str, float]]  # per split
    best_steps: List[int]  # per member, the step whose valid error was best
    norm_source: str  # where the feature normalisation came from
    params: TrainParams = field(default_factory=TrainParams)


def train(data: LatencyData, space: Optional[SearchSpace] = None, params: Optional[TrainParams] = None,
          on_progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
          threads: Optional[int] = 1) -> Tuple["LatencyPredictor", TrainReport]:
    """Fit a predictor on ``data``'s training split, select on its valid split, report every split.

    ``on_progress(steps_done, info)`` is called every ``eval_every`` steps (info: ``valid_mape`` of the best
    members so far). torch runs on ``threads`` threads meanwhile (default 1: these matrices are small, and on
    shared CPUs more threads make it several times slower); None leaves the setting alone."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(data, space, params or TrainParams(), on_progress)
    finally:
        torch.set_num_threads(before)


def _train(data, space, p, on_progress):
    names = tuple(data.feature_names)
    tr, va, te = split_indices(len(data), p.seed, p.split)
    if space is not None:
        scale = space_feature_range(space, names)[1]
        norm_source = f"search space {space.fingerprint()} (max of each feature)"
    elif p.feature_norm is not None:
        if len(p.feature_norm) != len(names):
            raise ConfigError(f"feature-norm has {len(p.feature_norm)} values for {len(names)} features")
        scale = np.asarray(p.feature_norm, dtype=np.float64)
        norm_source = "feature-norm of the config"
    else:
        scale = np.abs(data.features[tr]).max(axis=0)
        norm_source = "training split (max of each feature)"
    scale = np.where(scale > 0, scale, 1.0)
    products = products_for(names) if p.engineered_features else []
    x = torch.tensor(design_matrix(data.features, names, scale, products), dtype=torch.float32)
    logy = np.log(data.latency)
    mu, sd = float(logy[tr].mean()), float(logy[tr].std())
    sd = sd if sd > 1e-12 else 1.0
    y = torch.tensor((logy - mu) / sd, dtype=torch.float32)

    gen = torch.Generator().manual_seed(p.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        net = EnsembleMLP(x.shape[1], p.hidden_dim, p.hidden_layer_num, p.ensemble)
    opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    warm = max(1, p.train_steps // 10)

    def lr_at(step):  # one cycle: linear warm-up over 10% of the steps, then cosine decay to lr/100
        if step <= warm:
            return p.lr * (0.04 + 0.96 * step / warm)
        frac = (step - warm) / max(1, p.train_steps - warm)
        return p.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))

    xtr, ytr = x[tr], y[tr]
    xva, yva = x[va], torch.tensor(data.latency[va], dtype=torch.float32)
    best_err = torch.full((p.ensemble,), float("inf"))
    best_step = [0] * p.ensemble
    best_state = [t.detach().clone() for t in net.parameters()]
    start_select = p.train_steps // 3
    bsz = min(p.bsz, len(tr))

    def evaluate(step):
        with torch.no_grad():
            pred = torch.exp(net(xva) * sd + mu)  # (members, n_valid)
            err = ((pred - yva).abs() / yva).mean(dim=1)
            better = err < best_err
            if better.any():
                for cur, keep in zip(net.parameters(), best_state):
                    keep[better] = cur.detach()[better]
                best_err[better] = err[better]
                for m in torch.nonzero(better).flatten().tolist():
                    best_step[m] = step

    for step in range(1, p.train_steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(0, len(tr), (p.ensemble, bsz), generator=gen)
        loss = (net(xtr[idx]) - ytr[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % p.eval_every == 0 or step == p.train_steps:
            if step >= start_select or step == p.train_steps:
                evaluate(step)
            if on_progress is not None:
                on_progress(step, {"loss": float(loss.detach()), "valid_mape": float(best_err.mean())})
    with torch.no_grad():
        for cur, keep in zip(net.parameters(), best_state):
            cur.copy_(keep)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "feature_names": list(names),
        "feature_scale": [float(v) for v in scale],
        "products": [list(pr) for pr in products],
        "target": "log",
        "lat_log_mean": mu,
        "lat_log_std": sd,
        "hidden_dim": p.hidden_dim,
        "hidden_layer_num": p.hidden_layer_num,
        "ensemble": p.ensemble,
        "space_fingerprint": space.fingerprint() if space is not None else None,
        "space": space.to_dict() if space is not None else None,
        "space_source": space.source if space is not None else None,
        "norm_source": norm_source,
        "dataset": data.path,
        "source": data.source,
        "protocol": json.loads(data.protocols[0]) if len(data.protocols) == 1 else None,
        "layout": data.layout,
        "split_seed": p.seed,
        "split_fractions": list(p.split),
        "train_params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()},
    }
    predictor = LatencyPredictor(net.eval(), meta)
    pred = predictor.predict_features(data.features)
    split = {"train": tr, "valid": va, "test": te}
    report = TrainReport(
        split=split,
        predictions=pred,
        metrics={k: metrics(data.latency[v], pred[v]) for k, v in split.items()},
        best_steps=best_step,
        norm_source=norm_source,
        params=p,
    )
    predictor.meta["metrics"] = report.metrics
    return predictor, report


# -- the predictor -----------------------------------------------------------------------------------------------
class LatencyPredictor:
    """A trained predictor: ``predict(configs or feature rows) -> ms``. Load with :meth:`load`."""

    def __init__(self, net: EnsembleMLP, meta: Dict[str, object]):
        self.net = net.eval()
        self.meta = meta
        self.feature_names: Tuple[str, ...] = tuple(meta["feature_names"])
        self.scale = np.asarray(meta["feature_scale"], dtype=np.float64)
        self.products = [tuple(pr) for pr in meta["products"]]

    @property
    def space_fingerprint(self) -> Optional[str]:
        return self.meta.get("space_fingerprint")

    @property
    def source(self) -> str:
        return str(self.meta.get("source"))

    @property
    def protocol(self):
        """The measuring protocol of the dataset it was trained on (None for HAT's CSVs and older datasets)."""
        from hat.latency.protocol import Protocol

        d = self.meta.get("protocol")
        return Protocol.from_dict(d, source="predictor checkpoint") if d else None

    # -- prediction -----------------------------------------------------------------------------------------------
    def predict_features(self, rows) -> np.ndarray:
        """Latency (ms) of feature rows in this predictor's feature order (``feature_names``); rows with all eleven
        features are cut to the predictor's (HAT's ten)."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        n = len(self.feature_names)
        if x.ndim != 2 or x.shape[1] < n or (x.shape[1] > n and tuple(FEATURE_NAMES[:n]) != self.feature_names):
            raise ConfigError(f"feature rows must have {n} columns ({', '.join(self.feature_names)}), got shape "
                              f"{tuple(x.shape)}")
        x = x[:, :n]
        z = torch.tensor(design_matrix(x, self.feature_names, self.scale, self.products), dtype=torch.float32)
        with torch.no_grad():
            out = self.net(z).double().numpy()
        logp = out.mean(axis=0) * float(self.meta["lat_log_std"]) + float(self.meta["lat_log_mean"])
        return np.exp(logp)

    def predict_config(self, cfg: SubConfig) -> float:
        return float(self.predict_features([config_features(cfg, self.feature_names)])[0])

    def predict(self, x) -> Union[float, np.ndarray]:
        """Latency in ms. ``x``: one SubConfig (or HAT sub-config dict) -> float; a list of them -> array; feature
        rows (a 2-D array or list of lists, see :meth:`predict_features`) -> array; one row -> float."""
        if isinstance(x, (SubConfig, dict)):
            return self.predict_config(_as_config(x))
        if isinstance(x, np.ndarray):
            out = self.predict_features(x)
            return float(out[0]) if x.ndim == 1 else out
        items = list(x)
        if not items:
            return np.zeros(0)
        if isinstance(items[0], (SubConfig, dict)):
            rows = [config_features(_as_config(c), self.feature_names) for c in items]
            return self.predict_features(rows)
        if np.ndim(items[0]) == 0:
            return float(self.predict_features([items])[0])
        return self.predict_features(items)

    __call__ = predict

    # -- persistence ----------------------------------------------------------------------------------------------
    def state(self) -> Dict[str, object]:
        return {**self.meta, "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def save(self, path: str) -> str:
        """Write the checkpoint atomically (:func:`hat.io.atomic_output`)."""
        with atomic_output(path, suffix=".pt") as tmp:
            torch.save(self.state(), tmp)
        return path

    @classmethod
    def load(cls, path: str, space: Optional[SearchSpace] = None) -> "LatencyPredictor":
        """Load a checkpoint written by :meth:`save`. With ``space``, refuse one trained for another search space."""
        if not path or not os.path.isfile(path):
            raise CheckpointError(f"latency predictor checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or foreign file can raise almost anything from the unpickler
            import pickle
            import re

            text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e))  # torch colours its weights_only message
            if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in text:
                raise CheckpointError(f"{path} is not a latency predictor checkpoint (it holds Python objects, not "
                                      f"only tensors: a train.py checkpoint? write a predictor with "
                                      f"latency_predictor.py)") from None
            # torch's weights_only text is a paragraph of advice; its reason follows 'WeightsUnpickler error:'
            text = text.split("WeightsUnpickler error:", 1)[-1]
            msg = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
            raise CheckpointError(f"cannot load latency predictor {path}: {msg}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a latency predictor checkpoint (write one with latency_predictor.py)")
        if int(state.get("version", 0)) > VERSION:
            raise CheckpointError(f"{path} is a version {state.get('version')} latency predictor; this code reads "
                                  f"up to version {VERSION}")
        fp = state.get("space_fingerprint")
        if space is not None and fp is not None and fp != space.fingerprint():
            outside = _not_covered(state.get("space") or {}, space)
            if outside is not None:
                raise CheckpointError(
                    f"latency predictor {path} was trained for search space {fp} ({state.get('space_source')}), not "
                    f"for {space.source} (space {space.fingerprint()}: {outside} is outside it); train one for this "
                    f"space with latency_predictor.py"
                )
        meta = {k: v for k, v in state.items() if k != "state_dict"}
        try:
            net = EnsembleMLP(
                len(meta["feature_names"]) + len(meta["products"]),
                int(meta["hidden_dim"]),
                int(meta["hidden_layer_num"]),
                int(meta["ensemble"]),
            )
            net.load_state_dict(state["state_dict"])
        except (KeyError, RuntimeError, TypeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: latency predictor weights do not match its saved shape: {msg}") from None
        return cls(net, meta)


def _not_covered(saved: Dict[str, object], space: SearchSpace) -> Optional[str]:
    """None when every choice of ``space`` is a choice of the saved space (a predictor trained on a space covers
    its subspaces, e.g. HAT's latency-dataset space covers its search space); else the first choice outside."""
    for key in CHOICE_KEYS:
        have = {int(v) for v in (saved.get(key) or [])}
        for v in space.choices[key]:
            if v not in have:
                return f"{key} {v}"
    return None


def _as_config(c) -> SubConfig:
    return c if isinstance(c, SubConfig) else SubConfig.from_hat_dict(c)


def load(path: str, space: Optional[SearchSpace] = None) -> LatencyPredictor:
    return LatencyPredictor.load(path, space=space)


load_predictor = load
