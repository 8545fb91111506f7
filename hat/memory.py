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

That estimate (``model="fairseq"``) is what fairseq-style decoding in torch holds. The deployed graphs hold other
things, and :func:`memory_mb` (the search's memory constraint) and :func:`dataset_columns` (the latency dataset's
memory columns) use the **exported-graph model** by default (:func:`exported_memory_report`): the weights as the
two exported graphs store them (each graph its own embedding table; the output projection as its own transposed
constant; the cross K/V projections in the encoder graph), at the runtime's precision (fp32 in onnxruntime, fp16 on
the RK3588 NPU); the buffers of a decoder step (the self-attention caches fed in and returned, the precomputed
cross K/V repeated per hypothesis, the encoder's outputs, the logits, the step's largest intermediates); and the
runtime's own memory per layer (onnxruntime: fitted once, see :data:`RUNTIME_OVERHEAD_MB_PER_LAYER`). Validated
against onnxruntime's measured peak memory (``hat.latency.memory_probe``, ``benchmarks/memory_model.py``).

Every figure carries its source: :func:`model_source` (``memory model (exported graphs, fp32, onnxruntime)``); a
measured figure is ``measured:onnxruntime``.

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


# -- the exported graphs: what a deployment holds -----------------------------------------------------------------
# What the deployed graphs run with (hat.export: an encoder graph and ONE decoder-step graph, static shapes; the host
# drives them as hat.latency.onnxruntime.OrtBackend / hat.export.decode do). Precision per runtime: onnxruntime runs
# the fp32 graphs; the RK3588 NPU runs the fp16 RKNN build of the same graphs.
RUNTIME_PRECISION = {"onnxruntime": "fp32", "npu": "fp16"}
# latency backend -> the runtime whose memory the dataset's model columns describe: the torch backends (cpu, gpu)
# time fp32 models, whose deployment is the exported graphs in onnxruntime
BACKEND_RUNTIME = {"onnxruntime": "onnxruntime", "cpu": "onnxruntime", "gpu": "onnxruntime", "npu": "npu",
                   "npu-adb": "npu", "board": "npu"}
# onnxruntime's own memory per layer of the loaded graphs (session structures: nodes, kernels, execution frames, and
# what the counted buffers leave out), MiB. Fitted once (least squares, no intercept) on the 12 calibration configs
# of benchmarks/memory_model.py --calibrate (seed "calibration", disjoint from the validation configs); see
# benchmarks/README.md "Memory model". Not measured on the NPU: 0 there (the source label says so).
RUNTIME_OVERHEAD_MB_PER_LAYER = {"onnxruntime": (0.4861, 0.6500), "npu": (0.0, 0.0)}  # (encoder, decoder)
# the RSS model of the driver: self-attention cache sets held at a decoder step (the zeros the caches start from,
# whose pages stay with the host allocator; the set the previous step returned and fed back in; the set this step
# returns), and the decoder step's largest intermediates (one layer's cache update, new*write for key and value,
# each N*T*Q; export graphs v2 also held cache*keep for both: 4)
CACHE_SETS_HELD = 3
STEP_INTERMEDIATE_CACHES = 2


def runtime_of(precision: str = "fp32", runtime: Optional[str] = None) -> str:
    """The runtime the memory model is for: ``runtime`` (a runtime or a latency backend name) if given, else
    onnxruntime for fp32 and the NPU for fp16/int8."""
    if runtime is None:
        return "onnxruntime" if str(precision).lower() == "fp32" else "npu"
    r = BACKEND_RUNTIME.get(str(runtime).lower())
    if r is None:
        raise ConfigError(f"memory model: unknown runtime {runtime!r}; choose one of {', '.join(BACKEND_RUNTIME)}")
    return r


def model_source(precision: str = "fp32", runtime: Optional[str] = None) -> str:
    """The source label of a memory-model figure, e.g. ``memory model (exported graphs, fp32, onnxruntime)``."""
    precision = str(precision).lower()
    bytes_per_element(precision)
    r = runtime_of(precision, runtime)
    extra = "" if any(RUNTIME_OVERHEAD_MB_PER_LAYER[r]) else "; runtime overhead not measured"
    return f"memory model (exported graphs, {precision}, {r}{extra})"


def exported_weight_elements(cfg: SubConfig, opt, shapes=None) -> Dict[str, int]:
    """Elements the two exported graphs hold as weights (initializers and constants), each graph its own copy:

    * encoder graph: the source embedding table as the encoder reads it (``src_vocab x E``), the encoder layers (and
      final layer norm), every decoder layer's encoder-decoder key and value projections (the encoder graph
      precomputes the cross K/V), the sinusoidal position rows a source of ``src_len`` can use (``(pad+1+S) x E``);
    * decoder graph: the target embedding table (``tgt_vocab x D``) and the output projection as its own transposed
      constant (``D x tgt_vocab``, also when the embeddings are shared: export folds the transpose), the decoder
      layers without the cross K/V projections, the position rows ``(pad+1+T) x D`` and the cache-slot table
      ``(pad+1+T) x T``.

    Equal to the exported initializers of a trained model (a model with random weights can hold a few less: export
    merges identical constants, e.g. layer norms still at 1 and 0)."""
    shapes = Shapes.of(shapes)
    e, d, q = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.qkv_dim
    parts = parameter_breakdown(cfg, opt)
    cross_proj = len(cfg.decoder_ffn_embed_dim) * 2 * _linear(e, q)
    pad = int(getattr(opt, "padding_idx", 1))
    enc = opt.src_vocab * e + parts["encoder"] + cross_proj + (pad + 1 + shapes.src_len) * e
    dec = (2 * opt.tgt_vocab * d + parts["decoder"] - cross_proj + (pad + 1 + shapes.tgt_len) * d
           + (pad + 1 + shapes.tgt_len) * shapes.tgt_len)
    return {"encoder_graph": enc, "decoder_graph": dec, "total": enc + dec}


def exported_activation_elements(cfg: SubConfig, opt, shapes=None) -> Dict[str, int]:
    """Elements of the buffers that decoding with the exported graphs holds at a decoder step (``N = batch*beam``
    rows, ``T = tgt_len`` cache slots, ``S = src_len``, ``Q = qkv_dim``, ``K`` = the encoder layers all decoder
    layers attend, summed):

    * ``encoder_outputs``: the encoder graph's cross keys/values at batch, ``2*K*B*S*Q``;
    * ``cross_kv``: the same repeated per hypothesis on the host and fed to every step, ``2*K*N*S*Q``;
    * ``self_cache``: ONE set of self-attention caches (``self_k_i``/``self_v_i``), ``2*L*N*T*Q``; held
      :data:`CACHE_SETS_HELD` times (``caches_held``: the zeros they start from, the set fed in, the set returned);
    * ``logits``: ``N * tgt_vocab``;
    * ``step_intermediate``: the step's largest intermediates, :data:`STEP_INTERMEDIATE_CACHES` x ``N*T*Q``.
    """
    s = Shapes.of(shapes)
    n, q = s.batch * s.beam, cfg.qkv_dim
    k = sum(cfg.ende_layers)
    layers = len(cfg.decoder_ffn_embed_dim)
    out = {
        "encoder_outputs": 2 * k * s.batch * s.src_len * q,
        "cross_kv": 2 * k * n * s.src_len * q,
        "self_cache": 2 * layers * n * s.tgt_len * q,
        "logits": n * opt.tgt_vocab,
        "step_intermediate": STEP_INTERMEDIATE_CACHES * n * s.tgt_len * q,
    }
    out["caches_held"] = CACHE_SETS_HELD * out["self_cache"]
    out["total"] = (out["encoder_outputs"] + out["cross_kv"] + out["caches_held"] + out["logits"]
                    + out["step_intermediate"])
    return out


def runtime_overhead_mb(cfg: SubConfig, runtime: str = "onnxruntime") -> float:
    per_enc, per_dec = RUNTIME_OVERHEAD_MB_PER_LAYER[runtime_of(runtime=runtime)]
    return per_enc * len(cfg.encoder_ffn_embed_dim) + per_dec * len(cfg.decoder_ffn_embed_dim)


@dataclass(frozen=True)
class ExportedMemoryReport:
    """The exported-graph model of one SubTransformer (figures in MiB)."""

    runtime: str
    precision: str
    activation_precision: str
    shapes: Shapes
    weight_elements: int  # both graphs' weights
    weights_mb: float
    encoder_graph_weights_mb: float
    decoder_graph_weights_mb: float
    kv_cache_mb: float  # one set of self-attention caches + the cross K/V per hypothesis
    activation_mb: float  # every counted buffer (exported_activation_elements' total)
    overhead_mb: float  # the runtime's own, per layer (RUNTIME_OVERHEAD_MB_PER_LAYER)
    total_mb: float  # weights + activations + overhead
    source: str

    def to_dict(self) -> Dict[str, object]:
        out = asdict(self)
        out["shapes"] = asdict(self.shapes)
        return out

    def summary(self) -> str:
        s = self.shapes
        return (f"{self.total_mb:.2f} MB = graph weights {self.weights_mb:.2f} MB (encoder "
                f"{self.encoder_graph_weights_mb:.2f} + decoder {self.decoder_graph_weights_mb:.2f}, {self.precision}) "
                f"+ buffers {self.activation_mb:.2f} MB ({self.activation_precision}; caches and cross K/V "
                f"{self.kv_cache_mb:.2f}) + {self.runtime} overhead {self.overhead_mb:.2f} MB; batch {s.batch}, src "
                f"{s.src_len}, tgt {s.tgt_len}, beam {s.beam} [{self.source}]")


def exported_memory_report(cfg: SubConfig, opt, precision: str = "fp32", shapes=None,
                           activation_precision: Optional[str] = None,
                           runtime: Optional[str] = None) -> ExportedMemoryReport:
    """The memory the deployed graphs need (see :func:`exported_weight_elements`,
    :func:`exported_activation_elements`, :func:`runtime_overhead_mb`). ``runtime``: onnxruntime or npu (or a latency
    backend name); by default onnxruntime for fp32, the NPU otherwise."""
    shapes = Shapes.of(shapes)
    precision = str(precision).lower()
    activation_precision = str(activation_precision or precision).lower()
    wb, ab = bytes_per_element(precision), bytes_per_element(activation_precision)
    rt = runtime_of(precision, runtime)
    w = exported_weight_elements(cfg, opt, shapes)
    a = exported_activation_elements(cfg, opt, shapes)
    weights_mb, act_mb = w["total"] * wb / MB, a["total"] * ab / MB
    over = runtime_overhead_mb(cfg, rt)
    return ExportedMemoryReport(
        runtime=rt, precision=precision, activation_precision=activation_precision, shapes=shapes,
        weight_elements=w["total"], weights_mb=weights_mb,
        encoder_graph_weights_mb=w["encoder_graph"] * wb / MB, decoder_graph_weights_mb=w["decoder_graph"] * wb / MB,
        kv_cache_mb=(a["self_cache"] + a["cross_kv"]) * ab / MB, activation_mb=act_mb, overhead_mb=over,
        total_mb=weights_mb + act_mb + over, source=model_source(precision, rt),
    )


MODELS = ("exported", "fairseq")


def memory_mb(cfg: SubConfig, opt, precision: str = "fp32", shapes=None,
              activation_precision: Optional[str] = None, model: str = "exported",
              runtime: Optional[str] = None) -> float:
    """The memory (MB, MiB) of ``cfg`` at ``precision``: by default the exported graphs' (weights + buffers + the
    runtime's overhead, :func:`exported_memory_report`; runtime onnxruntime for fp32, the NPU otherwise);
    ``model="fairseq"``: weights + peak activations of fairseq-style decoding (:func:`memory_report`)."""
    if model == "exported":
        return exported_memory_report(cfg, opt, precision, shapes, activation_precision, runtime).total_mb
    if model == "fairseq":
        return memory_report(cfg, opt, precision, shapes, activation_precision).total_mb
    raise ConfigError(f"memory model: unknown model {model!r}; choose one of {', '.join(MODELS)}")


MODEL_COLUMNS = ("weight_mb", "activation_mb", "memory_model_mb", "memory_model_source")


def dataset_columns(cfg: SubConfig, opt, protocol, precision: Optional[str] = None,
                    backend: Optional[str] = None) -> Dict[str, object]:
    """The memory-model columns of a latency dataset row for the protocol's shapes (:data:`MODEL_COLUMNS`):
    ``weight_mb`` (the exported graphs' weights), ``activation_mb`` (their buffers), ``memory_model_mb`` (weights +
    buffers + the runtime's overhead) and ``memory_model_source`` (the label: model, precision, runtime). The
    precision is the backend's runtime's (fp32 for onnxruntime/cpu/gpu, fp16 for npu/npu-adb) unless given."""
    runtime = runtime_of(precision or "fp32", backend)
    precision = str(precision or RUNTIME_PRECISION[runtime]).lower()
    rep = exported_memory_report(cfg, opt, precision, Shapes.of(protocol), runtime=runtime)
    return {"weight_mb": round(rep.weights_mb, 6), "activation_mb": round(rep.activation_mb, 6),
            "memory_model_mb": round(rep.total_mb, 6), "memory_model_source": rep.source}


def measured_columns(measured_mb: Optional[float], source: str = "measured:onnxruntime") -> Dict[str, object]:
    """The measured-memory columns of a dataset row: ``measured_memory_mb`` and ``measured_memory_source`` (empty
    source when nothing was measured)."""
    if measured_mb is None:
        return {"measured_memory_mb": None, "measured_memory_source": ""}
    return {"measured_memory_mb": round(float(measured_mb), 6), "measured_memory_source": source}
