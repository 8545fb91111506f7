"""Search space and SubTransformer configs, with HAT's YAML keys.

One definition of the architecture genes, used by training (sampling), the latency dataset and predictor (features)
and the search (genes). A :class:`SubConfig` is one architecture; a :class:`SearchSpace` is the set of choices plus the
SuperTransformer's dims that every choice must fit in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hat.errors import ConfigError

# HAT's choice keys (kebab-case in YAML), plus the new qkv-dim-choice.
CHOICE_KEYS = (
    "encoder-embed-choice",
    "decoder-embed-choice",
    "encoder-ffn-embed-dim-choice",
    "decoder-ffn-embed-dim-choice",
    "encoder-layer-num-choice",
    "decoder-layer-num-choice",
    "encoder-self-attention-heads-choice",
    "decoder-self-attention-heads-choice",
    "decoder-ende-attention-heads-choice",
    "decoder-arbitrary-ende-attn-choice",
    "qkv-dim-choice",
)

# SuperTransformer dims (fairseq/HAT keys). Choices are checked against them.
SUPER_KEYS = (
    "encoder-embed-dim",
    "decoder-embed-dim",
    "encoder-ffn-embed-dim",
    "decoder-ffn-embed-dim",
    "encoder-layers",
    "decoder-layers",
    "encoder-attention-heads",
    "decoder-attention-heads",
    "qkv-dim",
)

# HAT's SubTransformer keys, plus qkv-dim-subtransformer.
SUB_KEYS = (
    "encoder-embed-dim-subtransformer",
    "decoder-embed-dim-subtransformer",
    "encoder-ffn-embed-dim-all-subtransformer",
    "decoder-ffn-embed-dim-all-subtransformer",
    "encoder-layer-num-subtransformer",
    "decoder-layer-num-subtransformer",
    "encoder-self-attention-heads-all-subtransformer",
    "decoder-self-attention-heads-all-subtransformer",
    "decoder-ende-attention-heads-all-subtransformer",
    "decoder-arbitrary-ende-attn-all-subtransformer",
    "qkv-dim-subtransformer",
)

# which choice list constrains which sub key, and which super dim bounds which choice
_SUB_TO_CHOICE = dict(zip(SUB_KEYS, CHOICE_KEYS))
_CHOICE_BOUND = {
    "encoder-embed-choice": "encoder-embed-dim",
    "decoder-embed-choice": "decoder-embed-dim",
    "encoder-ffn-embed-dim-choice": "encoder-ffn-embed-dim",
    "decoder-ffn-embed-dim-choice": "decoder-ffn-embed-dim",
    "encoder-layer-num-choice": "encoder-layers",
    "decoder-layer-num-choice": "decoder-layers",
    "encoder-self-attention-heads-choice": "encoder-attention-heads",
    "decoder-self-attention-heads-choice": "decoder-attention-heads",
    "decoder-ende-attention-heads-choice": "decoder-attention-heads",
    "qkv-dim-choice": "qkv-dim",
}

# HAT's ten latency features, then ours.
FEATURE_NAMES = (
    "encoder_embed_dim",
    "encoder_layer_num",
    "encoder_ffn_embed_dim_avg",
    "encoder_self_attention_heads_avg",
    "decoder_embed_dim",
    "decoder_layer_num",
    "decoder_ffn_embed_dim_avg",
    "decoder_self_attention_heads_avg",
    "decoder_ende_attention_heads_avg",
    "decoder_arbitrary_ende_attn_avg",
    "qkv_dim",
)


ARBITRARY_ENDE_ATTN = (-1, 1, 2)  # HAT's arbitrary encoder-decoder attention genes (see ende_layers)


def ende_layers(arbitrary_ende_attn: int) -> int:
    """Encoder layers one decoder layer attends to, from HAT's arbitrary encoder-decoder attention gene: -1 -> the last
    layer only (1), 1 -> the last two (2), 2 -> the last three (3)."""
    a = int(arbitrary_ende_attn)
    return max(a, 0) + 1


def clamp_ende_attn(genes, encoder_layers: int) -> tuple:
    """HAT's rule for drawn arbitrary encoder-decoder attention genes: one that needs more encoder layers than the
    config has falls back to -1 (the last layer only). Used by sampling and by the search's gene decoding."""
    return tuple(a if ende_layers(a) <= encoder_layers else -1 for a in genes)


def _attr(key: str) -> str:
    return key.replace("-", "_")


@dataclass(frozen=True)
class SubConfig:
    """One SubTransformer architecture. Per-layer lists have exactly ``*_layer_num`` entries."""

    encoder_embed_dim: int
    decoder_embed_dim: int
    encoder_layer_num: int
    decoder_layer_num: int
    encoder_ffn_embed_dim: tuple
    decoder_ffn_embed_dim: tuple
    encoder_self_attention_heads: tuple
    decoder_self_attention_heads: tuple
    decoder_ende_attention_heads: tuple
    decoder_arbitrary_ende_attn: tuple
    qkv_dim: int

    def __post_init__(self):
        for side in ("encoder", "decoder"):
            n = getattr(self, f"{side}_layer_num")
            if n < 1:
                raise ConfigError(f"{side}-layer-num-subtransformer must be >= 1, got {n}")
        for name in _LIST_FIELDS:
            side = name.split("_")[0]
            n = getattr(self, f"{side}_layer_num")
            val = tuple(int(v) for v in getattr(self, name))
            if len(val) < n:
                raise ConfigError(f"{_hat_sub_key(name)} has {len(val)} entries but {side}-layer-num is {n}")
            object.__setattr__(self, name, val[:n])  # HAT writes lists for all super layers; extra ones are unused
        for name in ("encoder_embed_dim", "decoder_embed_dim", "qkv_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{_hat_sub_key(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise ConfigError(f"{_hat_sub_key(name)} must be >= 1, got {bad[0]}")
        bad = [a for a in self.decoder_arbitrary_ende_attn if a not in ARBITRARY_ENDE_ATTN]
        if bad:
            raise ConfigError(f"decoder-arbitrary-ende-attn-all-subtransformer has {bad[0]}; allowed: -1 (the last "
                              f"encoder layer), 1 (the last two), 2 (the last three)")
        heads = self.encoder_self_attention_heads + self.decoder_self_attention_heads + self.decoder_ende_attention_heads
        for h in heads:
            if h < 1 or self.qkv_dim % h:
                raise ConfigError(f"qkv-dim {self.qkv_dim} is not divisible by {h} attention heads")

    # -- HAT YAML ----------------------------------------------------------------------------------------------
    def to_hat_dict(self) -> Dict[str, object]:
        out = {}
        for key in SUB_KEYS:
            val = getattr(self, _SUB_FIELD[key])
            out[key] = list(val) if isinstance(val, tuple) else int(val)
        return out

    @classmethod
    def from_hat_dict(cls, d: Dict[str, object], source: str = "config") -> "SubConfig":
        d = {k.replace("_", "-"): v for k, v in d.items()}
        missing = [k for k in SUB_KEYS if k not in d]
        if missing:
            raise ConfigError(f"{source}: missing SubTransformer key {missing[0]}")
        kwargs = {}
        for key in SUB_KEYS:
            val = d[key]
            if _SUB_FIELD[key] in _LIST_FIELDS:
                if isinstance(val, (int, float)):
                    val = [val]
                try:
                    kwargs[_SUB_FIELD[key]] = tuple(int(v) for v in val)
                except (TypeError, ValueError):
                    raise ConfigError(f"{source}: {key} must be a list of integers, got {val!r}") from None
            else:
                try:
                    kwargs[_SUB_FIELD[key]] = int(val)
                except (TypeError, ValueError):
                    raise ConfigError(f"{source}: {key} must be an integer, got {val!r}") from None
        return cls(**kwargs)

    # -- genes, features ------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.to_hat_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "SubConfig":
        return cls.from_hat_dict(json.loads(s))

    def key(self) -> str:
        """Stable short id of this architecture (equal configs give equal keys)."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    @property
    def ende_layers(self) -> List[int]:
        """Per decoder layer, how many encoder layers' outputs its encoder-decoder attention reads (see
        :func:`ende_layers`)."""
        return [ende_layers(a) for a in self.decoder_arbitrary_ende_attn]

    @property
    def encoder_states(self) -> int:
        """Encoder layer outputs the decoder reads: those of the last ``max(ende_layers)`` layers (the encoder keeps
        them; the memory estimate counts them)."""
        return max(self.ende_layers, default=1)

    # -- fit checks (the one definition; SearchSpace.validate/fits and SuperTransformer.check_fits call these) ------
    def ende_problems(self) -> List[str]:
        """Decoder layers whose arbitrary encoder-decoder attention needs more encoder layers than this config has."""
        return [
            f"decoder-arbitrary-ende-attn {a} needs {ende_layers(a)} encoder layers, "
            f"encoder-layer-num-subtransformer is {self.encoder_layer_num}"
            for a in self.decoder_arbitrary_ende_attn
            if ende_layers(a) > self.encoder_layer_num
        ]

    def fit_problems(self, shape: "SubConfig") -> List[str]:
        """Why this config cannot be sampled inside a model built at ``shape`` (a SuperTransformer's super config or
        any larger SubConfig): a dim, layer count or per-layer FFN dim above ``shape``'s, or an arbitrary
        encoder-decoder attention needing more encoder layers than the config has. Empty when it fits. Attention
        heads are not bounded by the weights (they only split the qkv dim) and are not checked here."""
        problems = []

        def over(key, v, bound):
            if v > bound:
                problems.append(f"{key} value {v} exceeds {bound}")

        for name in ("encoder_embed_dim", "decoder_embed_dim", "encoder_layer_num", "decoder_layer_num", "qkv_dim"):
            over(_hat_sub_key(name), getattr(self, name), getattr(shape, name))
        for name in ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim"):
            have = getattr(shape, name)
            for i, v in enumerate(getattr(self, name)[: len(have)]):  # extra layers: already a layer-num problem
                over(f"{_hat_sub_key(name)}[{i}]", v, have[i])
        return problems + self.ende_problems()

    def features(self) -> List[float]:
        """HAT's ten latency features (averages over the sampled layers), then qkv dim. The arbitrary encoder-decoder
        attention counts encoder layers attended, as HAT's datasets do: -1 -> 1, 1 -> 2, 2 -> 3."""
        avg = lambda xs: float(sum(xs)) / len(xs)
        return [
            float(self.encoder_embed_dim),
            float(self.encoder_layer_num),
            avg(self.encoder_ffn_embed_dim),
            avg(self.encoder_self_attention_heads),
            float(self.decoder_embed_dim),
            float(self.decoder_layer_num),
            avg(self.decoder_ffn_embed_dim),
            avg(self.decoder_self_attention_heads),
            avg(self.decoder_ende_attention_heads),
            avg(self.ende_layers),
            float(self.qkv_dim),
        ]

    def replace(self, **kw) -> "SubConfig":
        return dataclasses.replace(self, **kw)


_LIST_FIELDS = (
    "encoder_ffn_embed_dim",
    "decoder_ffn_embed_dim",
    "encoder_self_attention_heads",
    "decoder_self_attention_heads",
    "decoder_ende_attention_heads",
    "decoder_arbitrary_ende_attn",
)
_SUB_FIELD = {
    "encoder-embed-dim-subtransformer": "encoder_embed_dim",
    "decoder-embed-dim-subtransformer": "decoder_embed_dim",
    "encoder-ffn-embed-dim-all-subtransformer": "encoder_ffn_embed_dim",
    "decoder-ffn-embed-dim-all-subtransformer": "decoder_ffn_embed_dim",
    "encoder-layer-num-subtransformer": "encoder_layer_num",
    "decoder-layer-num-subtransformer": "decoder_layer_num",
    "encoder-self-attention-heads-all-subtransformer": "encoder_self_attention_heads",
    "decoder-self-attention-heads-all-subtransformer": "decoder_self_attention_heads",
    "decoder-ende-attention-heads-all-subtransformer": "decoder_ende_attention_heads",
    "decoder-arbitrary-ende-attn-all-subtransformer": "decoder_arbitrary_ende_attn",
    "qkv-dim-subtransformer": "qkv_dim",
}
_FIELD_SUB = {v: k for k, v in _SUB_FIELD.items()}


def _hat_sub_key(field_name: str) -> str:
    return _FIELD_SUB[field_name]


@dataclass
class SearchSpace:
    """Choices for every gene plus the SuperTransformer dims they must fit in."""

    choices: Dict[str, List[int]]
    super_dims: Dict[str, int]
    source: str = "config"

    def __post_init__(self):
        for key in CHOICE_KEYS:
            vals = self.choices.get(key)
            if not vals:
                raise ConfigError(f"{self.source}: search space key {key} is missing or empty")
            try:
                self.choices[key] = sorted({int(v) for v in vals})
            except (TypeError, ValueError):
                raise ConfigError(f"{self.source}: {key} must be a list of integers, got {vals!r}") from None
        for key in SUPER_KEYS:
            if key not in self.super_dims:
                raise ConfigError(f"{self.source}: SuperTransformer dim {key} is missing")
            self.super_dims[key] = int(self.super_dims[key])
        for key, bound in _CHOICE_BOUND.items():
            over = [v for v in self.choices[key] if v > self.super_dims[bound] or v < 1]
            if over:
                raise ConfigError(
                    f"{self.source}: {key} has {over[0]}, outside 1..{bound}={self.super_dims[bound]}"
                )
        bad = [v for v in self.choices["decoder-arbitrary-ende-attn-choice"] if v not in ARBITRARY_ENDE_ATTN]
        if bad:
            raise ConfigError(f"{self.source}: decoder-arbitrary-ende-attn-choice has {bad[0]}; allowed: -1, 1, 2")
        if ende_layers(max(self.choices["decoder-arbitrary-ende-attn-choice"])) > min(
            self.choices["encoder-layer-num-choice"]
        ):
            raise ConfigError(
                f"{self.source}: decoder-arbitrary-ende-attn-choice needs more encoder layers than "
                f"encoder-layer-num-choice allows"
            )
        heads = set(
            self.choices["encoder-self-attention-heads-choice"]
            + self.choices["decoder-self-attention-heads-choice"]
            + self.choices["decoder-ende-attention-heads-choice"]
        )
        for q in self.choices["qkv-dim-choice"]:
            for h in heads:
                if q % h:
                    raise ConfigError(f"{self.source}: qkv-dim-choice {q} is not divisible by {h} attention heads")

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Dict[str, object], source: str = "config") -> "SearchSpace":
        d = {k.replace("_", "-"): v for k, v in d.items()}
        choices = {k: d.get(k) for k in CHOICE_KEYS}
        if choices["qkv-dim-choice"] is None and "qkv-dim" in d:
            choices["qkv-dim-choice"] = [d["qkv-dim"]]  # HAT's fixed qkv dim
        if "qkv-dim" not in d and choices["qkv-dim-choice"]:
            d["qkv-dim"] = max(int(v) for v in choices["qkv-dim-choice"])
        supers = {k: d.get(k) for k in SUPER_KEYS if d.get(k) is not None}
        # a missing super dim defaults to the largest choice (HAT configs always give them)
        for key, bound in _CHOICE_BOUND.items():
            if bound not in supers and choices.get(key):
                supers[bound] = max(int(v) for v in choices[key])
        return cls(choices=choices, super_dims=supers, source=source)

    def fingerprint(self) -> str:
        blob = json.dumps({"choices": self.choices, "super": self.super_dims}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> Dict[str, object]:
        out = dict(self.super_dims)
        out.update({k: list(v) for k, v in self.choices.items()})
        return out

    # -- sampling -------------------------------------------------------------------------------------------------
    def _pick(self, rng: random.Random, key: str, n: Optional[int] = None):
        vals = self.choices[key]
        if n is None:
            return rng.choice(vals)
        return tuple(rng.choice(vals) for _ in range(n))

    def sample(self, rng: random.Random) -> SubConfig:
        """Uniform sample of every gene (HAT's sample_configs), per-layer genes drawn per layer."""
        enc_layers = self._pick(rng, "encoder-layer-num-choice")
        dec_layers = self._pick(rng, "decoder-layer-num-choice")
        arb = clamp_ende_attn(self._pick(rng, "decoder-arbitrary-ende-attn-choice", dec_layers), enc_layers)
        return SubConfig(
            encoder_embed_dim=self._pick(rng, "encoder-embed-choice"),
            decoder_embed_dim=self._pick(rng, "decoder-embed-choice"),
            encoder_layer_num=enc_layers,
            decoder_layer_num=dec_layers,
            encoder_ffn_embed_dim=self._pick(rng, "encoder-ffn-embed-dim-choice", enc_layers),
            decoder_ffn_embed_dim=self._pick(rng, "decoder-ffn-embed-dim-choice", dec_layers),
            encoder_self_attention_heads=self._pick(rng, "encoder-self-attention-heads-choice", enc_layers),
            decoder_self_attention_heads=self._pick(rng, "decoder-self-attention-heads-choice", dec_layers),
            decoder_ende_attention_heads=self._pick(rng, "decoder-ende-attention-heads-choice", dec_layers),
            decoder_arbitrary_ende_attn=arb,
            qkv_dim=self._pick(rng, "qkv-dim-choice"),
        )

    def sample_for_update(self, seed: int, update_num: int) -> SubConfig:
        """The config for one training update: a function of (seed, update) only, so every rank agrees."""
        return self.sample(random.Random(f"hat-sample:{seed}:{update_num}"))

    def sandwich_for_update(self, seed: int, update_num: int, n_random: int,
                            smallest: bool = True) -> List[SubConfig]:
        """The sandwich rule's configs for one update: the largest, the smallest (unless ``smallest`` is False) and
        ``n_random`` uniform samples (a function of (seed, update) only, as :meth:`sample_for_update`; the largest
        first, the distillation teacher; the random samples are the same with or without the smallest)."""
        if n_random < 0:
            raise ValueError(f"sandwich-random-configs must be >= 0, got {n_random}")
        rng = random.Random(f"hat-sandwich:{seed}:{update_num}")
        fixed = [self.largest(), self.smallest()] if smallest else [self.largest()]
        return fixed + [self.sample(rng) for _ in range(n_random)]

    def _extreme(self, pick) -> SubConfig:
        c = {k: pick(v) for k, v in self.choices.items()}
        e, d = c["encoder-layer-num-choice"], c["decoder-layer-num-choice"]
        (arb,) = clamp_ende_attn([c["decoder-arbitrary-ende-attn-choice"]], e)
        return SubConfig(
            encoder_embed_dim=c["encoder-embed-choice"],
            decoder_embed_dim=c["decoder-embed-choice"],
            encoder_layer_num=e,
            decoder_layer_num=d,
            encoder_ffn_embed_dim=(c["encoder-ffn-embed-dim-choice"],) * e,
            decoder_ffn_embed_dim=(c["decoder-ffn-embed-dim-choice"],) * d,
            encoder_self_attention_heads=(c["encoder-self-attention-heads-choice"],) * e,
            decoder_self_attention_heads=(c["decoder-self-attention-heads-choice"],) * d,
            decoder_ende_attention_heads=(c["decoder-ende-attention-heads-choice"],) * d,
            decoder_arbitrary_ende_attn=(arb,) * d,
            qkv_dim=c["qkv-dim-choice"],
        )

    def largest(self) -> SubConfig:
        return self._extreme(max)

    def smallest(self) -> SubConfig:
        return self._extreme(min)

    def super_config(self) -> SubConfig:
        """The SuperTransformer's own shape (its super dims), for building the weight-shared model."""
        s = self.super_dims
        e, d = s["encoder-layers"], s["decoder-layers"]
        return SubConfig(
            encoder_embed_dim=s["encoder-embed-dim"],
            decoder_embed_dim=s["decoder-embed-dim"],
            encoder_layer_num=e,
            decoder_layer_num=d,
            encoder_ffn_embed_dim=(s["encoder-ffn-embed-dim"],) * e,
            decoder_ffn_embed_dim=(s["decoder-ffn-embed-dim"],) * d,
            encoder_self_attention_heads=(s["encoder-attention-heads"],) * e,
            decoder_self_attention_heads=(s["decoder-attention-heads"],) * d,
            decoder_ende_attention_heads=(s["decoder-attention-heads"],) * d,
            decoder_arbitrary_ende_attn=(-1,) * d,
            qkv_dim=s["qkv-dim"],
        )

    def validate(self, cfg: SubConfig, source: str = "config") -> SubConfig:
        """Raise ConfigError naming the key if ``cfg`` uses a value outside this space."""
        for sub_key, choice_key in _SUB_TO_CHOICE.items():
            val = getattr(cfg, _SUB_FIELD[sub_key])
            vals = val if isinstance(val, tuple) else (val,)
            for i, v in enumerate(vals):
                allowed = self.choices[choice_key]
                if v not in allowed:
                    where = f"{sub_key}[{i}]" if isinstance(val, tuple) else sub_key
                    raise ConfigError(f"{source}: {where}={v} is not in {choice_key} {allowed}")
        problems = cfg.ende_problems()
        if problems:
            raise ConfigError(f"{source}: {problems[0]}")
        return cfg

    def fits(self, cfg: SubConfig, source: str = "config") -> SubConfig:
        """Weaker than :meth:`validate`: the config fits the super dims (may use values that are not choices); see
        :meth:`SubConfig.fit_problems`. Raises ConfigError listing every problem."""
        problems = cfg.fit_problems(self.super_config())
        if problems:
            raise ConfigError(f"{source}: SubTransformer does not fit the SuperTransformer: " + "; ".join(problems))
        return cfg
