"""The two static-shape graphs that are exported: the encoder and ONE incremental decoder step.

Both wrap a standalone (extracted) :class:`~hat.models.transformer.SuperTransformer` and reuse its modules (weights,
projections, layer norms, attention kernels); they only change how tensors are fed, so that every shape is fixed and
nothing the RK3588 NPU lacks (CumSum, Range, Trilu, TopK, Neg) is needed:

* positions and the padding mask are inputs, computed by the host from the token ids (see ``hat.export.decode``);
  the sinusoidal table is a constant cut to the rows the static length can use;
* masks are additive float tensors: ``0.0`` where attending is allowed, :data:`MASK_VALUE` elsewhere (finite, so that
  fp16 on the NPU never meets ``inf - inf``);
* the encoder graph also projects the encoder-decoder attention keys/values of every decoder layer (fairseq computes
  them once at the first step and keeps them in its ``static_kv`` cache), so a decoder step only reads them;
* the self-attention cache of a decoder layer is a fixed buffer of ``max_len`` slots (B, heads, max_len, head_dim):
  the step writes its new key/value into slot ``position - padding_idx - 1`` (a one-hot row gathered from a constant
  table, then a multiply-add: no Scatter, no Slice) and attends over the slots the ``self_mask`` input marks valid.

Input/output names and shapes are listed by :func:`encoder_io` / :func:`decoder_io`; :func:`graph_meta` adds what
the host needs to drive them (the JSON sidecar next to each ``.onnx`` is that, plus provenance). The layers
themselves are the model's: :meth:`TransformerEncoder.run_layers` and :meth:`DecoderLayer.blocks`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

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
        shape = (batch, s["cross_heads"], cross_len(model, i, src_len), s["cross_head_dim"])
        outputs.append(_io(f"cross_k_{i}", "float32", shape, f"decoder layer {i} ende-attention keys"))
        outputs.append(_io(f"cross_v_{i}", "float32", shape, f"decoder layer {i} ende-attention values"))
    return inputs, outputs


def decoder_io(model: SuperTransformer, rows: int, src_len: int, max_len: int, batch: int = 1
               ) -> Tuple[List[dict], List[dict]]:
    """Rows are hypotheses, sentence-major (row = sentence * beam + k); all rows are at the same step."""
    inputs = [
        _io("prev_token", "int64", (rows, 1), "last token of each hypothesis (EOS at the first step)"),
        _io("position", "int64", (1, 1), "padding_idx+1+step (all rows); also selects the cache slot written"),
        _io("self_mask", "float32", (1, max_len), f"additive: 0 at cache slots 0..step, {MASK_VALUE} after"),
        _io("src_mask", "float32", (batch, src_len), f"additive, per sentence: 0 at real tokens, {MASK_VALUE} at pads"),
    ]
    outputs = [_io("logits", "float32", (rows, model.opt.tgt_vocab), "next-token logits (log_softmax on the host)")]
    for i, s in enumerate(layer_shapes(model)):
        self_shape = (rows, s["self_heads"], max_len, s["self_head_dim"])
        cross_shape = (rows, s["cross_heads"], cross_len(model, i, src_len), s["cross_head_dim"])
        inputs.append(_io(f"self_k_{i}", "float32", self_shape, f"layer {i} self-attention key cache"))
        inputs.append(_io(f"self_v_{i}", "float32", self_shape, f"layer {i} self-attention value cache"))
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


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def _position_table(positions_module, dim: int, length: int) -> torch.Tensor:
    """The sinusoidal table cut to the rows a sequence of ``length`` can use (pad row + positions pad+1..pad+length):
    the same values, without shipping max-positions rows in every graph."""
    rows = positions_module.padding_idx + 1 + length
    return positions_module.table(dim, torch.device("cpu"), torch.get_default_dtype())[:rows].clone()


class EncoderGraph(nn.Module):
    """(src_tokens, src_positions, src_mask) -> cross_k_0, cross_v_0, cross_k_1, ... (see :func:`encoder_io`)."""

    def __init__(self, model: SuperTransformer, src_len: int):
        super().__init__()
        self.model = model
        enc = model.encoder
        self.register_buffer("positions", _position_table(enc.embed_positions, enc.sample_dim, src_len),
                             persistent=False)

    def forward(self, src_tokens: torch.Tensor, src_positions: torch.Tensor, src_mask: torch.Tensor):
        enc, dec = self.model.encoder, self.model.decoder
        x = enc.scaled_embedding(src_tokens) + F.embedding(src_positions, self.positions)
        states = enc.run_layers(x, src_mask[:, None, None, :])
        outputs = []
        for i in range(dec.sample_layers):
            key, value = dec.layers[i].encoder_attn.project_kv(dec.encoder_feed(states, i))
            outputs += [key, value]
        return tuple(outputs)


class DecoderStepGraph(nn.Module):
    """One incremental decoder step over fixed-size caches (see :func:`decoder_io` for the argument order).

    Attention runs with the hypotheses of a sentence folded into the head axis, (batch, beam * heads, ., head_dim),
    so that Softmax and the attention MatMuls see batch = sentences (1 in the usual config: the RK3588 NPU wants
    batch 1 there), and one (1, max_len) self mask / one (batch, src_len) source mask broadcasts over all of them."""

    def __init__(self, model: SuperTransformer, max_len: int, batch: int = 1):
        super().__init__()
        self.model = model
        self.max_len = max_len
        self.batch = batch
        pad = model.opt.padding_idx
        dec = model.decoder
        self.register_buffer("positions", _position_table(dec.embed_positions, dec.sample_dim, max_len),
                             persistent=False)
        write = torch.zeros(pad + 1 + max_len, max_len)
        for slot in range(max_len):
            write[pad + 1 + slot, slot] = 1.0
        self.register_buffer("write_table", write, persistent=False)  # position -> one-hot cache slot

    def _attend(self, q, k, v, mask):
        """q (rows, H, 1, hd), k/v (rows, H, L, hd) -> (rows, 1, H * hd), computed per sentence."""
        rows, heads, _, hd = q.shape
        b = self.batch
        out = F.scaled_dot_product_attention(
            q.reshape(b, -1, 1, hd), k.reshape(b, -1, k.shape[2], hd), v.reshape(b, -1, v.shape[2], hd),
            attn_mask=mask,
        )
        return _merge_heads(out.reshape(rows, heads, 1, hd))

    def _self_attn(self, layer, h, k_cache, v_cache, write, self_mask):
        attn = layer.self_attn
        q = _split_heads(attn.q_proj(h), attn.heads)
        k_new, v_new = attn.project_kv(h)  # (rows, H, 1, hd)
        keep = 1.0 - write
        k_all = k_cache * keep + k_new * write
        v_all = v_cache * keep + v_new * write
        return attn.out_proj(self._attend(q, k_all, v_all, self_mask)), k_all, v_all

    def _cross_attn(self, layer, h, k, v, mask):
        attn = layer.encoder_attn
        q = _split_heads(attn.q_proj(h), attn.heads)
        return attn.out_proj(self._attend(q, k, v, mask))

    def forward(self, prev_token, position, self_mask, src_mask, *caches):
        dec = self.model.decoder
        x = dec.scaled_embedding(prev_token) + F.embedding(position, self.positions)  # (rows,1,d)+(1,1,d)
        rows = prev_token.shape[0]
        write = F.embedding(position, self.write_table).reshape(1, 1, self.max_len, 1)
        smask = self_mask.reshape(1, 1, 1, self.max_len)
        base = src_mask.reshape(self.batch, 1, 1, src_mask.shape[1])
        cross_masks: Dict[int, torch.Tensor] = {}
        new_caches = []
        for i in range(dec.sample_layers):
            layer = dec.layers[i]
            k_cache, v_cache, ck, cv = caches[4 * i : 4 * i + 4]
            k = dec.ende_layers(i)
            if k not in cross_masks:
                cross_masks[k] = base if k == 1 else torch.cat([base] * k, dim=3)
            saved = {}

            def self_fn(h):
                out, saved["k"], saved["v"] = self._self_attn(layer, h, k_cache, v_cache, write, smask)
                return out

            x = layer.blocks(x, self_fn, lambda h: self._cross_attn(layer, h, ck, cv, cross_masks[k]))
            new_caches += [saved["k"], saved["v"]]
        logits = dec.head(x).reshape(rows, -1)
        return (logits, *new_caches)
