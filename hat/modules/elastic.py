"""Elastic modules: each holds its largest weights and owns the slicing for the sampled size.

Every slice is a prefix along each axis (rows ``[:out]``, columns ``[:in]``), so a standalone SubTransformer is the
same modules built at the sampled sizes, with the prefix of every tensor copied in (see ``models.extract``).
Only torch and numpy are imported here.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ElasticLinear(nn.Linear):
    """``nn.Linear`` whose sampled input/output sizes are a prefix of its weights."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__(max_in, max_out, bias=bias)
        self.sample_in, self.sample_out = max_in, max_out

    def set_sample_config(self, in_dim: int, out_dim: int):
        if in_dim > self.in_features or out_dim > self.out_features:
            raise ValueError(f"sample {in_dim}x{out_dim} exceeds {self.in_features}x{self.out_features}")
        self.sample_in, self.sample_out = in_dim, out_dim

    def sliced_weight(self) -> torch.Tensor:
        o, i = self.sample_out, self.sample_in
        if i == self.in_features:
            return self.weight if o == self.out_features else self.weight[:o]
        if o == self.out_features:
            return self.weight[:, :i]
        # both axes cut: one strided view (one autograd node: its backward writes the full-size gradient with one
        # zero fill and one copy, where two chained slices would make two of each)
        return self.weight.as_strided((o, i), self.weight.stride())

    def sliced_bias(self) -> Optional[torch.Tensor]:
        if self.bias is None or self.sample_out == self.out_features:
            return self.bias
        return self.bias[: self.sample_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sliced_weight(), self.sliced_bias())


class ElasticEmbedding(nn.Embedding):
    """Token embedding whose sampled width is a prefix of its columns; shared tables take the width per call."""

    def __init__(self, num_embeddings: int, max_dim: int, padding_idx: int):
        super().__init__(num_embeddings, max_dim, padding_idx=padding_idx)
        nn.init.normal_(self.weight, mean=0, std=max_dim**-0.5)
        with torch.no_grad():
            self.weight[padding_idx].zero_()
        self.sample_dim = max_dim

    def set_sample_config(self, dim: int):
        if dim > self.embedding_dim:
            raise ValueError(f"sample dim {dim} exceeds {self.embedding_dim}")
        self.sample_dim = dim

    def sliced_weight(self, dim: Optional[int] = None) -> torch.Tensor:
        dim = self.sample_dim if dim is None else dim
        return self.weight if dim == self.embedding_dim else self.weight[:, :dim]

    def forward(self, tokens: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
        dim = self.sample_dim if dim is None else dim
        out = F.embedding(tokens, self.weight, self.padding_idx)
        # the lookup's columns cut after the lookup (the same values): the backward scatters straight into the
        # full-width gradient instead of building a sampled-width one and copying it into a zero-filled full one
        return out if dim == self.embedding_dim else out[..., :dim]


class ElasticLayerNorm(nn.LayerNorm):
    def __init__(self, max_dim: int):
        super().__init__(max_dim)
        self.sample_dim = max_dim

    def set_sample_config(self, dim: int):
        if dim > self.normalized_shape[0]:
            raise ValueError(f"sample dim {dim} exceeds {self.normalized_shape[0]}")
        self.sample_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.sample_dim
        if d == self.normalized_shape[0]:  # no slices: no slice gradients to build
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x, (d,), self.weight[:d], self.bias[:d], self.eps)


def sinusoidal_table(num_positions: int, dim: int, padding_idx: int) -> torch.Tensor:
    """fairseq's sinusoidal table (sin half, cos half); row ``padding_idx`` is zero.

    Computed with numpy so that, inside a traced/exported graph, the table is a constant (no Range/Sin/Cos ops).
    """
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * np.float32(-scale))
    args = np.arange(num_positions, dtype=np.float32)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    if dim % 2 == 1:
        table = np.concatenate([table, np.zeros((num_positions, 1), dtype=np.float32)], axis=1)
    table[padding_idx, :] = 0
    return torch.from_numpy(table.astype(np.float32))


class ElasticSinusoidalPositions(nn.Module):
    """Sinusoidal positions for any sampled width, correct for left- or right-padded input, without CumSum.

    A token's position is ``padding_idx + 1 + (number of non-pad tokens before it)``, computed as a matrix product of
    the non-pad mask with a constant upper-triangular matrix (a buffer, so no Trilu/Range/CumSum op reaches an
    exported graph). Pads get ``padding_idx``, whose row is zero. Tables are cached per width, never trained.

    ``table_dim`` 0 (this project's models): the table of a sampled width is built at that width. ``table_dim`` W
    (HAT's models, see :mod:`hat.hat_layout`): the first columns of the table of width W, as HAT slices its
    SuperTransformer-wide table; W is then a persistent buffer ``table_dim``, so it travels with the weights.
    """

    def __init__(self, max_positions: int, padding_idx: int, table_dim: int = 0):
        super().__init__()
        self.max_positions = max_positions
        self.padding_idx = padding_idx
        self.register_buffer(
            "upper", torch.triu(torch.ones(max_positions, max_positions)), persistent=False
        )
        self._tables: Dict[Tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self.table_width = 0
        self.set_table_dim(table_dim)

    def set_table_dim(self, table_dim: int) -> None:
        """Use the first columns of the table of width ``table_dim`` (0: the sampled width's own table)."""
        table_dim = int(table_dim or 0)
        if table_dim:
            self.register_buffer("table_dim", torch.tensor(table_dim, dtype=torch.int64, device=self.upper.device))
        elif "table_dim" in self._buffers:
            del self._buffers["table_dim"]
        self.table_width = table_dim
        self._tables.clear()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if "table_dim" in self._buffers:
            self.table_width = int(self._buffers["table_dim"])
            self._tables.clear()

    def table(self, dim: int, device, dtype) -> torch.Tensor:
        key = (dim, device, dtype)
        if key not in self._tables:
            width = self.table_width or dim
            if dim > width:
                raise ValueError(f"sampled width {dim} exceeds the position table's width {width}")
            table = sinusoidal_table(self.max_positions + self.padding_idx + 1, width, self.padding_idx)
            self._tables[key] = table[:, :dim].contiguous().to(device=device, dtype=dtype)
        return self._tables[key]

    def positions(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.size(1)
        if t > self.max_positions:
            raise ValueError(f"sequence of {t} tokens exceeds max positions {self.max_positions}")
        mask = tokens.ne(self.padding_idx)
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            # eager (training): the same integers with fewer kernels; graphs keep the CumSum-free matrix product
            return torch.cumsum(mask, 1) * mask + self.padding_idx
        upper = self.upper[:t, :t].float()  # counted in fp32 even in an fp16 model (exact integers)
        counts = torch.matmul(mask.float(), upper)  # inclusive count of non-pads
        return (counts.long() * mask.long()) + self.padding_idx

    def forward(self, tokens: torch.Tensor, dim: int, positions: Optional[torch.Tensor] = None,
                dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        if positions is None:
            positions = self.positions(tokens)
        return F.embedding(positions, self.table(dim, tokens.device, dtype or torch.get_default_dtype()))


def attention(q, k, v, attn_mask: Optional[torch.Tensor], dropout_p: float, is_causal: bool) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` without its cuDNN backend on CUDA (flash, memory-efficient or math pick).

    cuDNN attention, which recent PyTorch tries first on Hopper, builds an execution graph for every new problem shape
    (0.64 s per masked forward + backward on an H200 with PyTorch 2.11, against 0.5 ms for the others: see
    benchmarks/README.md), and a SuperTransformer's shapes change with every batch (lengths) and every sampled
    SubTransformer (heads, head dim); incremental decoding grows the key length every step. The switch is
    process-wide, so it is put back right after the call."""
    if q.is_cuda and torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                  is_causal=is_causal)
        finally:
            torch.backends.cuda.enable_cudnn_sdp(True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)


class ElasticMultiheadAttention(nn.Module):
    """Multi-head attention with elastic query width, key/value width, heads and qkv dim.

    Q, K and V projections each output the first ``qkv_dim`` rows of their weights; the head dim is
    ``qkv_dim // heads``; the output projection maps ``qkv_dim`` back to the query's width. Batch-first tensors.
    """

    def __init__(self, max_embed: int, max_kv_embed: int, max_qkv: int, dropout: float = 0.0):
        super().__init__()
        self.q_proj = ElasticLinear(max_embed, max_qkv)
        self.k_proj = ElasticLinear(max_kv_embed, max_qkv)
        self.v_proj = ElasticLinear(max_kv_embed, max_qkv)
        self.out_proj = ElasticLinear(max_qkv, max_embed)
        self.dropout = dropout
        self.heads = 1
        self.qkv_dim = max_qkv
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def set_sample_config(self, embed: int, kv_embed: int, qkv_dim: int, heads: int):
        if qkv_dim % heads:
            raise ValueError(f"qkv dim {qkv_dim} not divisible by {heads} heads")
        self.q_proj.set_sample_config(embed, qkv_dim)
        self.k_proj.set_sample_config(kv_embed, qkv_dim)
        self.v_proj.set_sample_config(kv_embed, qkv_dim)
        self.out_proj.set_sample_config(qkv_dim, embed)
        self.qkv_dim, self.heads = qkv_dim, heads

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.qkv_dim // self.heads).transpose(1, 2)

    def _packed(self, x: torch.Tensor, projs: Tuple[ElasticLinear, ...]) -> Tuple[torch.Tensor, ...]:
        """Several projections of one input as one GEMM over their (sampled) weights stacked by rows: the same
        values as each projection alone, with fewer kernels forward and backward."""
        w = torch.cat([p.sliced_weight() for p in projs])
        b = torch.cat([p.sliced_bias() for p in projs])
        return F.linear(x, w, b).split(self.qkv_dim, dim=-1)

    def project_kv(self, kv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values split into heads: (B, H, S, head_dim) each."""
        k, v = self._packed(kv, (self.k_proj, self.v_proj))
        return self._split(k), self._split(v)

    def forward(
        self,
        query: torch.Tensor,
        kv: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        cache: Optional[Dict[str, torch.Tensor]] = None,
        static_kv: bool = False,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``attn_mask`` is additive (0 / -inf), broadcastable to (B, H, T, S); ``is_causal`` (no ``attn_mask``):
        position i attends to positions <= i (query and key length equal).

        ``cache`` (incremental decoding): for self-attention the new keys/values are appended to ``cache['k']``/
        ``cache['v']``; for encoder-decoder attention (``static_kv``) they are computed once and reused.
        """
        if cache is not None and static_kv and "k" in cache:
            q = self._split(self.q_proj(query))
            k, v = cache["k"], cache["v"]
        else:
            if kv is None:  # self-attention: queries, keys and values from one GEMM
                q, k, v = (self._split(t) for t in self._packed(query, (self.q_proj, self.k_proj, self.v_proj)))
            else:
                q = self._split(self.q_proj(query))
                k, v = self.project_kv(kv)
            if cache is not None:
                if not static_kv and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        out = attention(q, k, v, attn_mask, self.dropout if self.training else 0.0, is_causal and attn_mask is None)
        b, h, t, hd = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * hd))
