"""Memory of a SubTransformer from its config alone: exact weight bytes and an activation + KV-cache estimate.

Weights are counted by formula, no model is built: they equal ``count_parameters`` of the standalone model
(``SuperTransformer(cfg, opt)``, which is what ``extract()`` returns) times the bytes of one element at the
precision. Embeddings and the output projection are included; a shared embedding table is counted once (with
``share_all_embeddings`` one ``src_vocab x max(encoder, decoder embed)`` table; with
``share_decoder_input_output_embed`` no separate output projection). Positions are sinusoidal buffers, not weights.

Activations are an estimate from shapes (batch, src len, tgt len, beam), as one encoder pass and one decoder step of
incremental decoding at the last target position (the largest caches) hold them, at the same precision as the
weights unless told otherwise:

* encoder pass (batch ``B``, source ``S``): the states kept for the decoder (``keep`` =
  :attr:`SubConfig.encoder_states`, the most encoder layers one decoder layer attends, layers of ``B*S*E``) plus,
  for the largest layer, the larger of its attention phase
  (residual ``BSE`` + q, k, v ``3BSQ`` + scores and probabilities ``2*B*H*S*S`` + context ``BSQ``) and its FFN
  phase (residual ``BSE`` + hidden ``BSF`` + output ``BSE``);
* decoder step (``N = B*beam`` hypotheses, ``T = tgt_len`` cached positions): the KV caches (self attention
  ``2*N*T*Q`` and encoder-decoder attention ``2*N*k*S*Q`` per layer, ``k`` the encoder layers it attends),
  the encoder states expanded to the beam (``keep*N*S*E``), and the largest phase of one step (self attention,
  encoder-decoder attention, FFN, or the logits and their log-softmax ``2*N*V``).

Figures in MB are MiB (2**20 bytes). Only the standard library is imported (no torch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Union

from hat.errors import ConfigError
from hat.space import SubConfig

BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
MB = float(2**20)


def bytes_per_element(precision: str) -> int:
    try:
        return BYTES[str(precision).lower()]
    except KeyError:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(BYTES)}") from None


@dataclass(frozen=True)
class Shapes:
    """The inference shapes the estimate is for (HAT's latency protocol: batch 1, 30 tokens, beam 4)."""

    batch: int = 1
    src_len: int = 30
    tgt_len: int = 30
    beam: int = 4

    @classmethod
    def of(cls, shapes: Union["Shapes", Mapping[str, int], object, None]) -> "Shapes":
        """From a Shapes, a dict (``batch``, ``src_len``, ``tgt_len``, ``beam``) or any object with those
        attributes (e.g. the latency Protocol); missing ones take the defaults."""
        if shapes is None:
            return cls()
        if isinstance(shapes, cls):
            return shapes
        get = shapes.get if isinstance(shapes, Mapping) else (lambda k, d=None: getattr(shapes, k, d))
        vals = {}
        for name, default in asdict(cls()).items():
            v = get(name, None)
            v = default if v is None else v
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise ConfigError(f"memory shapes: {name} must be an integer, got {v!r}") from None
            if v < 1:
                raise ConfigError(f"memory shapes: {name} must be >= 1, got {v}")
            vals[name] = v
        return cls(**vals)


# -- weights -----------------------------------------------------------------------------------------------------
def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _attention(embed: int, kv_embed: int, qkv: int) -> int:
    """q from ``embed``, k and v from ``kv_embed``, each to ``qkv``; output back to ``embed`` (all with bias)."""
    return _linear(embed, qkv) + 2 * _linear(kv_embed, qkv) + _linear(qkv, embed)


def parameter_breakdown(cfg: SubConfig, opt) -> Dict[str, int]:
    """Parameters of the standalone SubTransformer by part: ``embeddings`` (token tables), ``encoder``,
    ``decoder`` (layers and final layer norms) and ``output_projection``."""
    e, d, q = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.qkv_dim
    if opt.share_all_embeddings:
        emb = opt.src_vocab * max(e, d)
    else:
        emb = opt.src_vocab * e + opt.tgt_vocab * d
    enc = 0
    for ffn in cfg.encoder_ffn_embed_dim:
        enc += _attention(e, e, q) + 2 * (2 * e) + _linear(e, ffn) + _linear(ffn, e)
    if opt.encoder_normalize_before:
        enc += 2 * e
    dec = 0
    for ffn in cfg.decoder_ffn_embed_dim:
        dec += _attention(d, d, q) + _attention(d, e, q) + 3 * (2 * d) + _linear(d, ffn) + _linear(ffn, d)
    if opt.decoder_normalize_before:
        dec += 2 * d
    shared_out = opt.share_all_embeddings or opt.share_decoder_input_output_embed
    out = 0 if shared_out else _linear(d, opt.tgt_vocab, bias=False)
    return {"embeddings": emb, "encoder": enc, "decoder": dec, "output_projection": out}


def parameter_count(cfg: SubConfig, opt) -> int:
    """Distinct parameters of ``SuperTransformer(cfg, opt)`` (a shared table counted once), by formula."""
    return sum(parameter_breakdown(cfg, opt).values())


def weight_bytes(cfg: SubConfig, opt, precision: str = "fp32") -> int:
    """Exact bytes of the SubTransformer's weights stored at ``precision`` (fp32, fp16, int8)."""
    return parameter_count(cfg, opt) * bytes_per_element(precision)


# -- activations -------------------------------------------------------------------------------------------------
def encoder_activation_elements(cfg: SubConfig, shapes: Shapes) -> Dict[str, int]:
    b, s, e, q = shapes.batch, shapes.src_len, cfg.encoder_embed_dim, cfg.qkv_dim
    phase = 0
    for ffn, heads in zip(cfg.encoder_ffn_embed_dim, cfg.encoder_self_attention_heads):
        attn = b * s * e + 3 * b * s * q + 2 * b * heads * s * s + b * s * q
        ffn_phase = b * s * e + b * s * ffn + b * s * e
        phase = max(phase, attn, ffn_phase)
    states = cfg.encoder_states * b * s * e
    return {"states": states, "layer_peak": phase, "peak": states + phase}


def decoder_step_elements(cfg: SubConfig, shapes: Shapes, tgt_vocab: int) -> Dict[str, int]:
    n = shapes.batch * shapes.beam
    s, t = shapes.src_len, shapes.tgt_len
    d, e, q = cfg.decoder_embed_dim, cfg.encoder_embed_dim, cfg.qkv_dim
    self_kv = ende_kv = phase = 0
    layers = zip(
        cfg.decoder_ffn_embed_dim,
        cfg.decoder_self_attention_heads,
        cfg.decoder_ende_attention_heads,
        cfg.ende_layers,
    )
    for ffn, heads, ende_heads, k in layers:
        self_kv += 2 * n * t * q
        ende_kv += 2 * n * k * s * q
        self_phase = n * d + 3 * n * q + 2 * n * heads * t + n * q
        ende_phase = n * d + n * q + 2 * n * ende_heads * k * s + n * q
        ffn_phase = n * d + n * ffn + n * d
        phase = max(phase, self_phase, ende_phase, ffn_phase)
    logits = 2 * n * tgt_vocab
    phase = max(phase, logits)
    states = cfg.encoder_states * n * s * e
    return {
        "self_kv_cache": self_kv,
        "ende_kv_cache": ende_kv,
        "kv_cache": self_kv + ende_kv,
        "encoder_states": states,
        "step_peak": phase,
        "peak": self_kv + ende_kv + states + phase,
    }


def kv_cache_elements(cfg: SubConfig, shapes) -> int:
    """Elements of the decoder's key/value caches after ``tgt_len`` steps (self + encoder-decoder attention)."""
    return decoder_step_elements(cfg, Shapes.of(shapes), 0)["kv_cache"]


@dataclass(frozen=True)
class MemoryReport:
    precision: str
    activation_precision: str
    shapes: Shapes
    parameters: int
    weights_mb: float
    encoder_activation_mb: float  # peak of one encoder pass (kept states included)
    kv_cache_mb: float  # decoder caches at the last step
    decoder_activation_mb: float  # caches + expanded encoder states + the largest phase of one step
    activation_mb: float  # the larger of the two
    total_mb: float  # weights + activation_mb

    def to_dict(self) -> Dict[str, object]:
        out = asdict(self)
        out["shapes"] = asdict(self.shapes)
        return out

    def summary(self) -> str:
        s = self.shapes
        return (f"{self.total_mb:.2f} MB = weights {self.weights_mb:.2f} MB ({self.precision}, {self.parameters:,} "
                f"parameters) + activations {self.activation_mb:.2f} MB ({self.activation_precision}; encoder pass "
                f"{self.encoder_activation_mb:.2f}, decoder step {self.decoder_activation_mb:.2f} incl. KV cache "
                f"{self.kv_cache_mb:.2f}; batch {s.batch}, src {s.src_len}, tgt {s.tgt_len}, beam {s.beam})")


def memory_report(cfg: SubConfig, opt, precision: str = "fp32", shapes=None,
                  activation_precision: Optional[str] = None) -> MemoryReport:
    shapes = Shapes.of(shapes)
    wb = bytes_per_element(precision)
    activation_precision = activation_precision or precision
    ab = bytes_per_element(activation_precision)
    params = parameter_count(cfg, opt)
    enc = encoder_activation_elements(cfg, shapes)
    dec = decoder_step_elements(cfg, shapes, opt.tgt_vocab)
    act = max(enc["peak"], dec["peak"])
    weights_mb = params * wb / MB
    return MemoryReport(
        precision=str(precision).lower(),
        activation_precision=str(activation_precision).lower(),
        shapes=shapes,
        parameters=params,
        weights_mb=weights_mb,
        encoder_activation_mb=enc["peak"] * ab / MB,
        kv_cache_mb=dec["kv_cache"] * ab / MB,
        decoder_activation_mb=dec["peak"] * ab / MB,
        activation_mb=act * ab / MB,
        total_mb=weights_mb + act * ab / MB,
    )


def memory_mb(cfg: SubConfig, opt, precision: str = "fp32", shapes=None,
              activation_precision: Optional[str] = None) -> float:
    """Weights + peak activations (encoder pass or decoder step with its KV cache), in MB (MiB)."""
    return memory_report(cfg, opt, precision, shapes, activation_precision).total_mb


def dataset_columns(cfg: SubConfig, opt, protocol, precision: str = "fp32") -> Dict[str, float]:
    """The memory-model columns of a latency dataset row (``weight_mb``, ``activation_mb``) for the protocol's
    shapes; the measuring backends run fp32."""
    rep = memory_report(cfg, opt, precision, Shapes.of(protocol))
    return {"weight_mb": round(rep.weights_mb, 6), "activation_mb": round(rep.activation_mb, 6)}
