"""The two static-shape graphs that are exported: the encoder and ONE incremental decoder step.

Both are built from a standalone (extracted) :class:`~hat.models.transformer.SuperTransformer`: they copy its weights
(in the layouts below) and run its layers in its order (post-norm or pre-norm residual blocks, HAT's arbitrary
encoder-decoder attention, the final layer norms and output projection), with every shape fixed and nothing the
RK3588 NPU lacks (CumSum, Range, Trilu, TopK, Neg):

* positions and the padding mask are inputs, computed by the host from the token ids (see ``hat.export.decode``);
  the sinusoidal table is a constant cut to the rows the static length can use;
* masks are additive float tensors: ``0.0`` where attending is allowed, :data:`MASK_VALUE` elsewhere (finite, so that
  fp16 on the NPU never meets ``inf - inf``);
* the encoder graph also projects the encoder-decoder attention keys/values of every decoder layer (fairseq computes
  them once at the first step and keeps them in its ``static_kv`` cache), so a decoder step only reads them;
* the self-attention cache of a decoder layer is a fixed buffer of ``max_len`` slots: the step writes its new
  key/value into slot ``position - padding_idx - 1`` (a one-hot row gathered from a constant table, then a
  multiply-add: no Scatter, no Slice) and attends over the slots the ``self_mask`` input marks valid. The write is
  an addition: the slot must hold zeros until its step (the host starts from zero buffers and never writes a slot
  twice; :class:`hat.export.decode.FixedShapeRunner`), which saves a multiplication of the whole cache per step.

Layouts, chosen so that rknn-toolkit2 has little to rewrite (its build time grows with the rewrites it makes, each a
pass over the graph, more than with the nodes; each node left is an NPU kernel launch;
``benchmarks/export_build_time.py`` measures both):

* activations are NCHW with the model dimension as channels: ``(B, C, 1, S)`` in the encoder, ``(rows, C, 1, 1)``
  in the decoder step, so that every linear layer is one 1x1 ``Conv`` with its bias (the toolkit's own form); the
  encoder's query/key/value projections are one ``Conv`` whose output is split (the toolkit keeps that Split), the
  decoder step's and the encoder's cross key/value projections one ``Conv`` each (a ``Conv`` + ``Split`` there is
  one the toolkit separates into such Convs itself, a rewrite that costs build time; graphs v3);
* the embedding lookups are made 4-D before their sum (the toolkit's form; it would insert the Reshapes itself);
* layer norms are ``LayerNormalization`` over the channel axis (in the encoder between a Transpose pair, which the
  toolkit folds into its channel norm);
* the attention scale ``head_dim ** -0.5`` is folded into the query projection and ``sqrt(dim)`` into the embedding
  table; attention is MatMul, Add (mask), Softmax, MatMul, the pattern the toolkit fuses into one attention kernel;
* keys and values, cached and cross, are stored transposed, NCHW ``(rows, heads * head_dim, 1, length)``: the
  toolkit's attention kernel reads them that way, so no Transpose runs per step; the encoder's key/value projection
  gives them without a Reshape, and a step's new key/value (rows, heads * head_dim, 1, 1) is written into its slot
  by broadcasting.

Input/output names and shapes are listed by :func:`encoder_io` / :func:`decoder_io`; :func:`graph_meta` adds what
the host needs to drive them (the JSON sidecar next to each ``.onnx`` is that, plus provenance). The host treats
caches as opaque buffers of the listed shapes (zeros at the start, rows reordered by hypothesis, fed back);
``tests/test_export.py`` checks both graphs against the model's own encoder and incremental decoding.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hat.export import SIDECAR_FORMAT
from hat.export.runtime import MASK_VALUE
from hat.models.transformer import SuperTransformer
from hat.vocab import BOS, EOS, UNK

def _io(name: str, dtype: str, shape, doc: str) -> Dict[str, object]:
    return {"name": name, "dtype": dtype, "shape": [int(s) for s in shape], "doc": doc}


def cross_len(model: SuperTransformer, layer: int, src_len: int) -> int:
    """Encoder positions decoder layer ``layer`` attends to (HAT's arbitrary ende attention concatenates the last
    k+1 encoder layers along time)."""
    return model.decoder.ende_layers(layer) * src_len


def layer_shapes(model: SuperTransformer) -> List[Dict[str, int]]:
    """Per decoder layer: self-attn heads/head dim, ende-attn heads/head dim, number of encoder layers attended."""
    out = []
    for i in range(model.decoder.sample_layers):
        layer = model.decoder.layers[i]
        out.append({
            "self_heads": layer.self_attn.heads,
            "self_head_dim": layer.self_attn.qkv_dim // layer.self_attn.heads,
            "cross_heads": layer.encoder_attn.heads,
            "cross_head_dim": layer.encoder_attn.qkv_dim // layer.encoder_attn.heads,
            "cross_states": model.decoder.ende_layers(i),
        })
    return out


def encoder_io(model: SuperTransformer, batch: int, src_len: int) -> Tuple[List[dict], List[dict]]:
    inputs = [
        _io("src_tokens", "int64", (batch, src_len), "source token ids ending with EOS, right-padded with pad"),
        _io("src_positions", "int64", (batch, src_len), "padding_idx+1+i at the i-th real token, padding_idx at pads"),
        _io("src_mask", "float32", (batch, src_len), f"additive: 0 at real tokens, {MASK_VALUE} at pads"),
    ]
    outputs = []
    for i, s in enumerate(layer_shapes(model)):
        shape = (batch, s["cross_heads"] * s["cross_head_dim"], 1, cross_len(model, i, src_len))
        outputs.append(_io(f"cross_k_{i}", "float32", shape, f"decoder layer {i} ende-attention keys, transposed"))
        outputs.append(_io(f"cross_v_{i}", "float32", shape, f"decoder layer {i} ende-attention values, transposed"))
    return inputs, outputs


def decoder_io(model: SuperTransformer, rows: int, src_len: int, max_len: int, batch: int = 1
               ) -> Tuple[List[dict], List[dict]]:
    """Rows are hypotheses, sentence-major (row = sentence * beam + k); all rows are at the same step. Keys and values
    are transposed, NCHW with the heads' channels: (rows, heads * head_dim, 1, slots or source positions)."""
    inputs = [
        _io("prev_token", "int64", (rows, 1), "last token of each hypothesis (EOS at the first step)"),
        _io("position", "int64", (1, 1), "padding_idx+1+step (all rows); also selects the cache slot written"),
        _io("self_mask", "float32", (1, max_len), f"additive: 0 at cache slots 0..step, {MASK_VALUE} after"),
        _io("src_mask", "float32", (batch, src_len), f"additive, per sentence: 0 at real tokens, {MASK_VALUE} at pads"),
    ]
    outputs = [_io("logits", "float32", (rows, model.opt.tgt_vocab), "next-token logits (log_softmax on the host)")]
    for i, s in enumerate(layer_shapes(model)):
        self_shape = (rows, s["self_heads"] * s["self_head_dim"], 1, max_len)
        cross_shape = (rows, s["cross_heads"] * s["cross_head_dim"], 1, cross_len(model, i, src_len))
        inputs.append(_io(f"self_k_{i}", "float32", self_shape,
                          f"layer {i} self-attention key cache (transposed; zeros in the slots not yet written)"))
        inputs.append(_io(f"self_v_{i}", "float32", self_shape,
                          f"layer {i} self-attention value cache (transposed; zeros in the slots not yet written)"))
        inputs.append(_io(f"cross_k_{i}", "float32", cross_shape, "the encoder graph's, repeated per hypothesis"))
        inputs.append(_io(f"cross_v_{i}", "float32", cross_shape, "the encoder graph's, repeated per hypothesis"))
        outputs.append(_io(f"new_self_k_{i}", "float32", self_shape, f"layer {i} key cache with slot step written"))
        outputs.append(_io(f"new_self_v_{i}", "float32", self_shape, f"layer {i} value cache with slot step written"))
    return inputs, outputs


def graph_meta(model: SuperTransformer, part: str, s) -> dict:
    """What the host needs to drive a graph: inputs/outputs, shapes, special tokens, layer shapes, SubConfig.
    ``s`` is an :class:`hat.export.onnx.ExportSettings` (batch_size, beam, rows, src_len, tgt_len, lenpen)."""
    cfg = model.sample_config
    ins, outs = encoder_io(model, s.batch_size, s.src_len) if part == "enc" else decoder_io(
        model, s.rows, s.src_len, s.tgt_len, s.batch_size)
    pad = model.opt.padding_idx
    return {
        "format": SIDECAR_FORMAT,
        "part": part,
        "inputs": ins,
        "outputs": outs,
        "shapes": {"batch_size": s.batch_size, "beam": s.beam, "rows": s.rows if part == "dec" else s.batch_size,
                   "src_len": s.src_len, "tgt_len": s.tgt_len},
        "tokens": {"bos": BOS, "pad": pad, "eos": EOS, "unk": UNK, "src_vocab": model.opt.src_vocab,
                   "tgt_vocab": model.opt.tgt_vocab},
        "mask_value": MASK_VALUE,
        "position_offset": pad + 1,
        "layers": layer_shapes(model),
        "lenpen": s.lenpen,
        "config_key": cfg.key(),
        "sub_config": cfg.to_hat_dict(),
        "features": cfg.features(),
    }


def sidecar_io_only(model: SuperTransformer, s) -> Tuple[dict, dict]:
    """(encoder, decoder) :func:`graph_meta` without exporting: what :class:`hat.export.decode.GraphRunner` needs."""
    return graph_meta(model, "enc", s), graph_meta(model, "dec", s)


# ---- building blocks: weights copied from the model, in the exported layouts -----------------------------------------
def _position_table(positions_module, dim: int, length: int) -> torch.Tensor:
    """The sinusoidal table cut to the rows a sequence of ``length`` can use (pad row + positions pad+1..pad+length):
    the same values, without shipping max-positions rows in every graph."""
    rows = positions_module.padding_idx + 1 + length
    return positions_module.table(dim, torch.device("cpu"), torch.get_default_dtype())[:rows].clone()


def _scaled_table(stack, dim: int) -> torch.Tensor:
    """The stack's token embedding at ``dim`` columns with fairseq's ``sqrt(dim)`` scale folded in (the same products
    the model computes after its lookup)."""
    table = stack.embed_tokens.sliced_weight(dim).detach()
    if stack.opt.no_scale_embedding:
        return table.clone()
    return math.sqrt(dim) * table


def _param(t: Optional[torch.Tensor]) -> Optional[nn.Parameter]:
    """A weight of an exported graph: a parameter (exported as a named initializer), never trained."""
    return None if t is None else nn.Parameter(t, requires_grad=False)


class _Conv1x1(nn.Module):
    """Linear layers as ONE 1x1 convolution over the channel axis of (N, C, H, W): their weights stacked along the
    outputs in the given order (a Split after it gives each layer's output)."""

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]]):
        super().__init__()
        w = torch.cat([t.detach() for t in weights], 0)
        self.register_parameter("weight", _param(w[:, :, None, None].clone()))
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else torch.zeros(t.shape[0], dtype=t.dtype)
                              for t, b in zip(weights, biases)])
        self.register_parameter("bias", _param(bias))

    @classmethod
    def of(cls, *linears, scales: Optional[Sequence[float]] = None) -> "_Conv1x1":
        """From ``ElasticLinear`` layers (their sampled slices); ``scales`` multiply each layer's weight and bias."""
        weights, biases = [], []
        for lin, scale in zip(linears, scales or [1.0] * len(linears)):
            w, b = lin.sliced_weight().detach(), lin.sliced_bias()
            b = None if b is None else b.detach()
            if scale != 1.0:
                w, b = w * scale, (None if b is None else b * scale)
            weights.append(w)
            biases.append(b)
        return cls(weights, biases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class _ChannelNorm(nn.Module):
    """A model's LayerNorm over the channel axis of (N, C, 1, W): one node over (C, 1, 1) when W is 1 (``step``: the
    decoder step), else between a Transpose pair (the encoder)."""

    def __init__(self, norm, dim: int, step: bool):
        super().__init__()
        self.eps, self.step = norm.eps, step
        self.shape = (dim, 1, 1) if step else (dim,)
        self.register_parameter("weight", _param(norm.weight[:dim].detach().reshape(self.shape).clone()))
        self.register_parameter("bias", _param(norm.bias[:dim].detach().reshape(self.shape).clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step:
            return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)
        y = F.layer_norm(x.permute(0, 3, 2, 1), self.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 2, 1)


def _residual(x: torch.Tensor, norm: nn.Module, fn, pre: bool) -> torch.Tensor:
    """One residual block as the model's layers run it: pre-norm ``x + fn(norm(x))``, post-norm ``norm(x + fn(x))``."""
    x = x + fn(norm(x) if pre else x)
    return x if pre else norm(x)


def _attention(q: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + mask) v`` with the scale already in ``q`` (N, M, T, hd) and keys/values transposed
    (N, M, hd, L): MatMul, Add, Softmax, MatMul (and the Transpose of the values, which rknn-toolkit2 folds into its
    attention kernel). Returns (N, M, T, hd)."""
    p = torch.softmax(torch.matmul(q, k_t) + mask, dim=-1)
    return torch.matmul(p, v_t.transpose(2, 3))


def _query_scale(attn) -> float:
    return float(attn.qkv_dim // attn.heads) ** -0.5


class _EncoderLayer(nn.Module):
    def __init__(self, layer, dim: int, src_len: int):
        super().__init__()
        attn = layer.self_attn
        self.heads, self.head_dim, self.src_len = attn.heads, attn.qkv_dim // attn.heads, src_len
        self.qkv = _Conv1x1.of(attn.q_proj, attn.k_proj, attn.v_proj, scales=(_query_scale(attn), 1.0, 1.0))
        self.out = _Conv1x1.of(attn.out_proj)
        self.fc1, self.fc2 = _Conv1x1.of(layer.fc1), _Conv1x1.of(layer.fc2)
        self.norm1 = _ChannelNorm(layer.self_attn_layer_norm, dim, step=False)
        self.norm2 = _ChannelNorm(layer.final_layer_norm, dim, step=False)
        self.pre = layer.normalize_before

    def _attend(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = self.src_len
        q_t, k_t, v_t = self.qkv(h).reshape(-1, 3 * self.heads, self.head_dim, s).split(self.heads, dim=1)
        o = _attention(q_t.transpose(2, 3), k_t, v_t, mask)  # (B, H, S, hd)
        return self.out(o.transpose(2, 3).reshape(-1, self.heads * self.head_dim, 1, s))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = _residual(x, self.norm1, lambda h: self._attend(h, mask), self.pre)
        return _residual(x, self.norm2, lambda h: self.fc2(F.relu(self.fc1(h))), self.pre)


class EncoderGraph(nn.Module):
    """(src_tokens, src_positions, src_mask) -> cross_k_0, cross_v_0, cross_k_1, ... (see :func:`encoder_io`)."""

    def __init__(self, model: SuperTransformer, src_len: int):
        super().__init__()
        enc, dec = model.encoder, model.decoder
        self.dim = d = enc.sample_dim
        self.src_len = src_len
        self.keep_states = enc.keep_states
        self.register_parameter("embed", _param(_scaled_table(enc, d)))
        self.register_parameter("positions", _param(_position_table(enc.embed_positions, d, src_len)))
        self.layers = nn.ModuleList(_EncoderLayer(enc.layers[i], d, src_len) for i in range(enc.sample_layers))
        self.final_norm = _ChannelNorm(enc.layer_norm, d, step=False) if enc.layer_norm is not None else None
        cross = [dec.layers[i].encoder_attn for i in range(dec.sample_layers)]
        self.cross_k = nn.ModuleList(_Conv1x1.of(a.k_proj) for a in cross)
        self.cross_v = nn.ModuleList(_Conv1x1.of(a.v_proj) for a in cross)
        self.ende = [dec.ende_layers(i) for i in range(dec.sample_layers)]

    def forward(self, src_tokens: torch.Tensor, src_positions: torch.Tensor, src_mask: torch.Tensor):
        # each lookup made 4-D before the sum, (B, S, 1, C), then channels first: the form rknn-toolkit2 rewrites it to
        shape = (-1, self.src_len, 1, self.dim)
        x = (F.embedding(src_tokens, self.embed).reshape(shape)
             + F.embedding(src_positions, self.positions).reshape(shape))
        x = x.permute(0, 3, 2, 1)  # (B, C, 1, S)
        mask = src_mask.reshape(-1, 1, 1, self.src_len)
        states: List[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x = layer(x, mask)
            if i >= len(self.layers) - self.keep_states:
                states.append(x)
        if self.final_norm is not None:
            states = [self.final_norm(t) for t in states]
        feeds: Dict[int, torch.Tensor] = {}  # HAT's arbitrary ende attention: the last k states along time
        outputs = []
        for k_proj, v_proj, k in zip(self.cross_k, self.cross_v, self.ende):
            if k not in feeds:
                feeds[k] = states[-1] if k == 1 else torch.cat([states[-1 - j] for j in range(k)], dim=3)
            outputs += [k_proj(feeds[k]), v_proj(feeds[k])]  # (B, qkv, 1, S') each
        return tuple(outputs)


def _fold(t: torch.Tensor, batch: int, head_dim: int) -> torch.Tensor:
    """Keys/values (rows, H * head_dim, 1, L) -> (batch, beam * H, head_dim, L): a sentence's hypotheses folded into
    the head axis."""
    return t.reshape(batch, -1, head_dim, t.shape[3])


class _DecoderLayer(nn.Module):
    def __init__(self, layer, dim: int, ende: int):
        super().__init__()
        sa, ca = layer.self_attn, layer.encoder_attn
        self.heads, self.head_dim = sa.heads, sa.qkv_dim // sa.heads
        self.cross_head_dim, self.cross_width = ca.qkv_dim // ca.heads, ca.qkv_dim
        self.q = _Conv1x1.of(sa.q_proj, scales=(_query_scale(sa),))
        self.k, self.v = _Conv1x1.of(sa.k_proj), _Conv1x1.of(sa.v_proj)
        self.self_out = _Conv1x1.of(sa.out_proj)
        self.cross_q = _Conv1x1.of(ca.q_proj, scales=(_query_scale(ca),))
        self.cross_out = _Conv1x1.of(ca.out_proj)
        self.fc1, self.fc2 = _Conv1x1.of(layer.fc1), _Conv1x1.of(layer.fc2)
        self.norm1 = _ChannelNorm(layer.self_attn_layer_norm, dim, step=True)
        self.norm2 = _ChannelNorm(layer.encoder_attn_layer_norm, dim, step=True)
        self.norm3 = _ChannelNorm(layer.final_layer_norm, dim, step=True)
        self.pre = layer.normalize_before
        self.ende = ende

    def forward(self, x, k_cache, v_cache, cross_k, cross_v, write, self_mask, cross_mask, batch: int):
        caches: List[torch.Tensor] = []

        def self_attn(h):
            q, k, v = self.q(h), self.k(h), self.v(h)  # (rows, H*hd, 1, 1) each
            caches.append(k_cache + k * write)  # slot ``step`` (zeros until now) written, the others kept
            caches.append(v_cache + v * write)
            hd = self.head_dim
            o = _attention(q.reshape(batch, -1, 1, hd), _fold(caches[0], batch, hd), _fold(caches[1], batch, hd),
                           self_mask)
            return self.self_out(o.reshape(-1, self.heads * hd, 1, 1))

        def cross_attn(h):
            q = self.cross_q(h).reshape(batch, -1, 1, self.cross_head_dim)
            hd = self.cross_head_dim
            o = _attention(q, _fold(cross_k, batch, hd), _fold(cross_v, batch, hd), cross_mask)
            return self.cross_out(o.reshape(-1, self.cross_width, 1, 1))

        x = _residual(x, self.norm1, self_attn, self.pre)
        x = _residual(x, self.norm2, cross_attn, self.pre)
        x = _residual(x, self.norm3, lambda h: self.fc2(F.relu(self.fc1(h))), self.pre)
        return x, caches[0], caches[1]


class DecoderStepGraph(nn.Module):
    """One incremental decoder step over fixed-size caches (see :func:`decoder_io` for the argument order).

    Attention runs with the hypotheses of a sentence folded into the head axis, (batch, beam * heads, ., head_dim),
    so that Softmax and the attention MatMuls see batch = sentences (1 in the usual config: the RK3588 NPU wants
    batch 1 there), and one (1, max_len) self mask / one (batch, src_len) source mask broadcasts over all of them."""

    def __init__(self, model: SuperTransformer, max_len: int, batch: int = 1):
        super().__init__()
        dec = model.decoder
        self.dim = d = dec.sample_dim
        self.max_len, self.batch = max_len, batch
        pad = model.opt.padding_idx
        self.register_parameter("embed", _param(_scaled_table(dec, d)))
        self.register_parameter("positions", _param(_position_table(dec.embed_positions, d, max_len)))
        write = torch.zeros(pad + 1 + max_len, max_len)
        for slot in range(max_len):
            write[pad + 1 + slot, slot] = 1.0
        self.register_parameter("write_table", _param(write))  # position -> one-hot cache slot
        self.layers = nn.ModuleList(_DecoderLayer(dec.layers[i], d, dec.ende_layers(i))
                                    for i in range(dec.sample_layers))
        self.final_norm = _ChannelNorm(dec.layer_norm, d, step=True) if dec.layer_norm is not None else None
        if dec.output_projection is None:  # shared embeddings: the (unscaled) table is the output projection
            self.head = _Conv1x1([dec.embed_tokens.sliced_weight(d)], [None])
        else:
            self.head = _Conv1x1.of(dec.output_projection)
        self.vocab = self.head.weight.shape[0]

    def forward(self, prev_token, position, self_mask, src_mask, *caches):
        b, slots = self.batch, self.max_len
        # each lookup made 4-D before the sum, (rows, d, 1, 1) + (1, d, 1, 1): the form rknn-toolkit2 rewrites it to
        x = (F.embedding(prev_token, self.embed).reshape(-1, self.dim, 1, 1)
             + F.embedding(position, self.positions).reshape(1, self.dim, 1, 1))
        write = F.embedding(position, self.write_table).reshape(1, 1, 1, slots)  # one-hot at the slot written
        smask = self_mask.reshape(1, 1, 1, slots)
        base = src_mask.reshape(b, 1, 1, -1)
        cross_masks: Dict[int, torch.Tensor] = {}
        new_caches = []
        for i, layer in enumerate(self.layers):
            k_cache, v_cache, ck, cv = caches[4 * i : 4 * i + 4]
            if layer.ende not in cross_masks:
                cross_masks[layer.ende] = base if layer.ende == 1 else torch.cat([base] * layer.ende, dim=3)
            x, k_all, v_all = layer(x, k_cache, v_cache, ck, cv, write, smask, cross_masks[layer.ende], b)
            new_caches += [k_all, v_all]
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (self.head(x).reshape(-1, self.vocab), *new_caches)
