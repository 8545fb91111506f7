"""Weight-shared SuperTransformer (encoder-decoder) and standalone SubTransformers.

A model is built at the shape of a :class:`~hat.space.SubConfig` (for the SuperTransformer: the space's super dims).
``set_sample_config`` picks a smaller architecture inside it; ``extract`` returns a new model built at the sampled
shape holding copies of exactly the sampled weight slices, so a SubTransformer is the same class at its own size.
Tensors are batch-first. Only torch is imported.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from hat.modules.elastic import (
    ElasticEmbedding,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticMultiheadAttention,
    ElasticSinusoidalPositions,
)
from hat.space import SubConfig, ende_layers


@dataclass
class ModelOptions:
    """Everything about the model that is not an architecture gene."""

    src_vocab: int
    tgt_vocab: int
    padding_idx: int = 1
    share_all_embeddings: bool = False
    share_decoder_input_output_embed: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_normalize_before: bool = False
    decoder_normalize_before: bool = False
    no_scale_embedding: bool = False
    max_source_positions: int = 256
    max_target_positions: int = 256
    # width of the sinusoidal table whose first columns give the positions at any sampled width: 0 = the sampled
    # width's own table (this project's models); HAT's models use the SuperTransformer's embed dim (hat.hat_layout)
    encoder_position_table_dim: int = 0
    decoder_position_table_dim: int = 0

    def to_dict(self):
        return dataclasses.asdict(self)


def _additive_pad(blocked: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """bool 'may not attend' mask (e.g. the padding mask) -> additive float mask (0 / -inf).

    The mask is the first columns of a buffer whose rows are a multiple of 16 long: SDPA's memory-efficient kernel
    wants aligned rows and would otherwise pad a copy of the mask in every attention call."""
    dtype = dtype or torch.get_default_dtype()
    s = blocked.size(-1)
    buf = torch.zeros(blocked.shape[:-1] + (-(-s // 16) * 16,), dtype=dtype, device=blocked.device)
    return buf[..., :s].masked_fill_(blocked, float("-inf"))


def _attention_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's on ``x``'s device when autocast is on there, else ``x``'s. A mask
    made in it is not cast again by every attention call (0 and -inf are exact in every float dtype)."""
    device = x.device.type
    try:
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    except RuntimeError:  # a device type autocast does not know (meta)
        pass
    return x.dtype


class EncoderLayer(nn.Module):
    def __init__(self, embed: int, ffn: int, qkv: int, opt: ModelOptions):
        super().__init__()
        self.self_attn = ElasticMultiheadAttention(embed, embed, qkv, opt.attention_dropout)
        self.self_attn_layer_norm = ElasticLayerNorm(embed)
        self.fc1 = ElasticLinear(embed, ffn)
        self.fc2 = ElasticLinear(ffn, embed)
        self.final_layer_norm = ElasticLayerNorm(embed)
        self.dropout, self.activation_dropout = opt.dropout, opt.activation_dropout
        self.normalize_before = opt.encoder_normalize_before
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.constant_(fc.bias, 0.0)

    def set_sample_config(self, embed: int, ffn: int, heads: int, qkv: int):
        self.self_attn.set_sample_config(embed, embed, qkv, heads)
        self.self_attn_layer_norm.set_sample_config(embed)
        self.fc1.set_sample_config(embed, ffn)
        self.fc2.set_sample_config(ffn, embed)
        self.final_layer_norm.set_sample_config(embed)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x = F.dropout(self.self_attn(x, attn_mask=attn_mask), self.dropout, self.training)
        x = residual + x
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)
        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        x = residual + F.dropout(self.fc2(x), self.dropout, self.training)
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x


class DecoderLayer(nn.Module):
    def __init__(self, embed: int, enc_embed: int, ffn: int, qkv: int, opt: ModelOptions):
        super().__init__()
        self.self_attn = ElasticMultiheadAttention(embed, embed, qkv, opt.attention_dropout)
        self.self_attn_layer_norm = ElasticLayerNorm(embed)
        self.encoder_attn = ElasticMultiheadAttention(embed, enc_embed, qkv, opt.attention_dropout)
        self.encoder_attn_layer_norm = ElasticLayerNorm(embed)
        self.fc1 = ElasticLinear(embed, ffn)
        self.fc2 = ElasticLinear(ffn, embed)
        self.final_layer_norm = ElasticLayerNorm(embed)
        self.dropout, self.activation_dropout = opt.dropout, opt.activation_dropout
        self.normalize_before = opt.decoder_normalize_before
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.constant_(fc.bias, 0.0)

    def set_sample_config(self, embed: int, enc_embed: int, ffn: int, heads: int, ende_heads: int, qkv: int):
        self.self_attn.set_sample_config(embed, embed, qkv, heads)
        self.encoder_attn.set_sample_config(embed, enc_embed, qkv, ende_heads)
        for ln in (self.self_attn_layer_norm, self.encoder_attn_layer_norm, self.final_layer_norm):
            ln.set_sample_config(embed)
        self.fc1.set_sample_config(embed, ffn)
        self.fc2.set_sample_config(ffn, embed)

    def _block(self, x, ln, fn):
        residual = x
        if self.normalize_before:
            x = ln(x)
        x = residual + F.dropout(fn(x), self.dropout, self.training)
        return x if self.normalize_before else ln(x)

    def _ffn(self, h):
        return self.fc2(F.dropout(F.relu(self.fc1(h)), self.activation_dropout, self.training))

    def blocks(self, x, self_attn: Callable[[torch.Tensor], torch.Tensor],
               encoder_attn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The layer's three residual blocks (self-attention, encoder-decoder attention, FFN) with the two attentions
        given as functions of the block input: :meth:`forward` passes this layer's attention modules with dict caches,
        the exported decoder step (``hat.export.graphs``) passes fixed-size-cache versions of them."""
        x = self._block(x, self.self_attn_layer_norm, self_attn)
        x = self._block(x, self.encoder_attn_layer_norm, encoder_attn)
        return self._block(x, self.final_layer_norm, self._ffn)

    def forward(self, x, self_mask, enc, enc_mask, cache: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
                causal: bool = False):
        """``causal`` with no ``self_mask``: causal self-attention over the whole ``x`` (training, scoring)."""
        self_cache = enc_cache = None
        if cache is not None:
            self_cache = cache.setdefault("self", {})
            enc_cache = cache.setdefault("ende", {})
        return self.blocks(
            x,
            lambda h: self.self_attn(h, attn_mask=self_mask, cache=self_cache, is_causal=causal),
            lambda h: self.encoder_attn(h, enc, attn_mask=enc_mask, cache=enc_cache, static_kv=True),
        )


class _Stack(nn.Module):
    """What the encoder and decoder share: token embedding at the sampled width, scaled as fairseq does."""

    opt: ModelOptions
    embed_tokens: ElasticEmbedding
    sample_dim: int

    def scaled_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """``sqrt(dim) * embed(tokens)`` at the sampled dim (unscaled with ``no_scale_embedding``); positions are
        added by the caller (the model computes them, the exported graphs take them as inputs)."""
        d = self.sample_dim
        scale = 1.0 if self.opt.no_scale_embedding else math.sqrt(d)
        return scale * self.embed_tokens(tokens, d)


class TransformerEncoder(_Stack):
    def __init__(self, cfg: SubConfig, opt: ModelOptions, embed_tokens: ElasticEmbedding):
        super().__init__()
        self.opt = opt
        self.embed_tokens = embed_tokens
        self.embed_positions = ElasticSinusoidalPositions(opt.max_source_positions, opt.padding_idx,
                                                          opt.encoder_position_table_dim)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim[i], cfg.qkv_dim, opt)
            for i in range(cfg.encoder_layer_num)
        )
        self.layer_norm = ElasticLayerNorm(cfg.encoder_embed_dim) if opt.encoder_normalize_before else None
        self.sample_dim, self.sample_layers = cfg.encoder_embed_dim, cfg.encoder_layer_num
        self.keep_states = 1

    def set_sample_config(self, cfg: SubConfig):
        self.sample_dim, self.sample_layers = cfg.encoder_embed_dim, cfg.encoder_layer_num
        for i in range(cfg.encoder_layer_num):
            self.layers[i].set_sample_config(
                cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim[i], cfg.encoder_self_attention_heads[i], cfg.qkv_dim
            )
        if self.layer_norm is not None:
            self.layer_norm.set_sample_config(cfg.encoder_embed_dim)
        self.keep_states = cfg.encoder_states

    def forward(self, src_tokens: torch.Tensor, positions: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """Returns ``states`` (outputs of the last ``keep_states`` sampled layers, last one last, each (B, S, C))
        and ``padding_mask`` (B, S), True at pads."""
        emb = self.scaled_embedding(src_tokens)
        x = emb + self.embed_positions(src_tokens, self.sample_dim, positions, dtype=emb.dtype)
        x = F.dropout(x, self.opt.dropout, self.training)
        padding_mask = src_tokens.eq(self.opt.padding_idx)
        attn_mask = _additive_pad(padding_mask[:, None, None, :], _attention_dtype(x))
        return {"states": self.run_layers(x, attn_mask), "padding_mask": padding_mask}

    def run_layers(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """The sampled layers over the embedded source ``x`` (B, S, C) with an additive ``attn_mask`` broadcastable
        to (B, 1, S, S): the outputs of the last ``keep_states`` layers, last one last, each through the final layer
        norm (pre-norm models). Shared by :meth:`forward` and the exported encoder graph."""
        states: List[torch.Tensor] = []
        for i in range(self.sample_layers):
            x = self.layers[i](x, attn_mask)
            if i >= self.sample_layers - self.keep_states:
                states.append(x)
        if self.layer_norm is not None:
            states = [self.layer_norm(s) for s in states]
        return states


class TransformerDecoder(_Stack):
    def __init__(self, cfg: SubConfig, opt: ModelOptions, embed_tokens: ElasticEmbedding):
        super().__init__()
        self.opt = opt
        self.embed_tokens = embed_tokens
        self.embed_positions = ElasticSinusoidalPositions(opt.max_target_positions, opt.padding_idx,
                                                          opt.decoder_position_table_dim)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.decoder_embed_dim, cfg.encoder_embed_dim, cfg.decoder_ffn_embed_dim[i], cfg.qkv_dim, opt)
            for i in range(cfg.decoder_layer_num)
        )
        self.layer_norm = ElasticLayerNorm(cfg.decoder_embed_dim) if opt.decoder_normalize_before else None
        if opt.share_decoder_input_output_embed or opt.share_all_embeddings:
            self.output_projection = None
        else:
            self.output_projection = ElasticLinear(cfg.decoder_embed_dim, opt.tgt_vocab, bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0, std=cfg.decoder_embed_dim**-0.5)
        self.sample_dim, self.sample_layers = cfg.decoder_embed_dim, cfg.decoder_layer_num
        self.arbitrary_ende_attn = tuple(cfg.decoder_arbitrary_ende_attn)

    def set_sample_config(self, cfg: SubConfig):
        self.sample_dim, self.sample_layers = cfg.decoder_embed_dim, cfg.decoder_layer_num
        self.arbitrary_ende_attn = tuple(cfg.decoder_arbitrary_ende_attn)
        for i in range(cfg.decoder_layer_num):
            self.layers[i].set_sample_config(
                cfg.decoder_embed_dim,
                cfg.encoder_embed_dim,
                cfg.decoder_ffn_embed_dim[i],
                cfg.decoder_self_attention_heads[i],
                cfg.decoder_ende_attention_heads[i],
                cfg.qkv_dim,
            )
        if self.layer_norm is not None:
            self.layer_norm.set_sample_config(cfg.decoder_embed_dim)
        if self.output_projection is not None:
            self.output_projection.set_sample_config(cfg.decoder_embed_dim, self.opt.tgt_vocab)

    def output_layer(self, x: torch.Tensor) -> torch.Tensor:
        if self.output_projection is None:
            return F.linear(x, self.embed_tokens.sliced_weight(self.sample_dim))
        return self.output_projection(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final layer norm (pre-norm models), then the output projection to the vocabulary."""
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.output_layer(x)

    def ende_layers(self, layer: int) -> int:
        """Encoder layers decoder layer ``layer`` attends to (:func:`hat.space.ende_layers`)."""
        return ende_layers(self.arbitrary_ende_attn[layer])

    def encoder_feed(self, states: List[torch.Tensor], layer: int) -> torch.Tensor:
        """HAT's arbitrary encoder-decoder attention: -1 attends to the last encoder layer, k to the last k+1
        layers (their outputs concatenated along time, last layer first). Shared with the exported encoder graph."""
        k = self.ende_layers(layer)
        return states[-1] if k == 1 else torch.cat([states[-1 - j] for j in range(k)], dim=1)

    def encoder_inputs(self, enc: Dict[str, object], layer: int):
        """(keys/values input, padding mask) of decoder layer ``layer``'s encoder-decoder attention."""
        k = self.ende_layers(layer)
        pad = enc["padding_mask"]
        return self.encoder_feed(enc["states"], layer), (pad if k == 1 else torch.cat([pad] * k, dim=1))

    def forward(
        self,
        prev_tokens: torch.Tensor,
        enc: Dict[str, object],
        cache: Optional[Dict[int, Dict]] = None,
        positions: Optional[torch.Tensor] = None,
        features_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V). With ``cache`` (a dict filled across calls), ``prev_tokens`` is the whole prefix and only
        its last position is computed."""
        if positions is None:
            positions = self.embed_positions.positions(prev_tokens)
        if cache is not None:
            prev_tokens, positions = prev_tokens[:, -1:], positions[:, -1:]
        emb = self.scaled_embedding(prev_tokens)
        x = emb + self.embed_positions(prev_tokens, self.sample_dim, positions, dtype=emb.dtype)
        x = F.dropout(x, self.opt.dropout, self.training)
        masks = {}
        dtype = _attention_dtype(x)
        for i in range(self.sample_layers):
            k = self.ende_layers(i)
            if k not in masks:
                feed, pad = self.encoder_inputs(enc, i)
                masks[k] = (feed, _additive_pad(pad[:, None, None, :], dtype))
            feed, enc_mask = masks[k]
            layer_cache = None if cache is None else cache.setdefault(i, {})
            # the whole prefix: causal self-attention (SDPA's own causal kernels, no mask tensor)
            x = self.layers[i](x, None, feed, enc_mask, layer_cache, causal=cache is None)
        if features_only:
            return x if self.layer_norm is None else self.layer_norm(x)
        return self.head(x)


class SuperTransformer(nn.Module):
    """Encoder-decoder Transformer built at ``cfg``'s shape; any config that fits can be sampled inside it."""

    def __init__(self, cfg: SubConfig, opt: ModelOptions):
        super().__init__()
        self.config, self.opt = cfg, opt
        if opt.share_all_embeddings:
            if opt.src_vocab != opt.tgt_vocab:
                raise ValueError("--share-all-embeddings requires a joined dictionary")
            shared = ElasticEmbedding(
                opt.src_vocab, max(cfg.encoder_embed_dim, cfg.decoder_embed_dim), opt.padding_idx
            )
            enc_emb = dec_emb = shared
        else:
            enc_emb = ElasticEmbedding(opt.src_vocab, cfg.encoder_embed_dim, opt.padding_idx)
            dec_emb = ElasticEmbedding(opt.tgt_vocab, cfg.decoder_embed_dim, opt.padding_idx)
        self.encoder = TransformerEncoder(cfg, opt, enc_emb)
        self.decoder = TransformerDecoder(cfg, opt, dec_emb)
        self.sample_config: SubConfig = cfg
        self.set_sample_config(cfg)

    def set_sample_config(self, cfg: SubConfig) -> "SuperTransformer":
        self.check_fits(cfg)
        self.sample_config = cfg
        self.encoder.set_sample_config(cfg)
        self.decoder.set_sample_config(cfg)
        return self

    def set_position_table_dims(self, encoder: int, decoder: int) -> "SuperTransformer":
        """Positions from the first columns of sinusoidal tables of these widths (0: the sampled width's own table;
        see :class:`ModelOptions`); models extracted later inherit them."""
        self.opt = dataclasses.replace(self.opt, encoder_position_table_dim=int(encoder or 0),
                                       decoder_position_table_dim=int(decoder or 0))
        for stack, dim in ((self.encoder, encoder), (self.decoder, decoder)):
            stack.opt = self.opt
            stack.embed_positions.set_table_dim(dim)
        return self

    def check_fits(self, cfg: SubConfig):
        """Raise ValueError listing every reason ``cfg`` cannot be sampled in this model: :meth:`SubConfig.fit_problems`
        against the shape the model was built at."""
        problems = cfg.fit_problems(self.config)
        if problems:
            raise ValueError("SubTransformer does not fit the model: " + "; ".join(problems))

    def forward(self, src_tokens: torch.Tensor, prev_output_tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(prev_output_tokens, self.encoder(src_tokens))

    # -- SubTransformers ----------------------------------------------------------------------------------------
    def extract(self, cfg: Optional[SubConfig] = None) -> "SuperTransformer":
        """A standalone model at ``cfg``'s shape (default: the sampled config) with copies of its weight slices."""
        cfg = self.sample_config if cfg is None else cfg
        self.check_fits(cfg)
        sub = SuperTransformer(cfg, self.opt)
        src = self.state_dict()
        state = {}
        for name, t in sub.state_dict().items():
            state[name] = src[name][tuple(slice(0, n) for n in t.shape)].clone()
        sub.load_state_dict(state)
        return sub.train(self.training)


def count_parameters(model: nn.Module, include_embeddings: bool = True) -> int:
    """Distinct parameters (a shared embedding counts once)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if not include_embeddings and "embed_tokens" in name:
            continue
        total += p.numel()
    return total


def sampled_parameter_count(model: SuperTransformer, cfg: Optional[SubConfig] = None) -> int:
    """Parameters the sampled SubTransformer uses, without building it."""
    with torch.device("meta"):
        sub = SuperTransformer(cfg or model.sample_config, model.opt)
    return count_parameters(sub)
