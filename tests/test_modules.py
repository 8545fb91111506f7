import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hat.modules.elastic import (
    ElasticEmbedding,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticMultiheadAttention,
    ElasticSinusoidalPositions,
    sinusoidal_table,
)

torch.manual_seed(0)


def test_linear_equals_dense_built_from_slice():
    m = ElasticLinear(16, 24)
    m.set_sample_config(10, 7)
    dense = nn.Linear(10, 7)
    with torch.no_grad():
        dense.weight.copy_(m.weight[:7, :10])
        dense.bias.copy_(m.bias[:7])
    x = torch.randn(3, 5, 10)
    torch.testing.assert_close(m(x), dense(x))
    with pytest.raises(ValueError):
        m.set_sample_config(17, 7)


def test_embedding_and_layernorm_equal_dense():
    e = ElasticEmbedding(50, 32, padding_idx=1)
    e.set_sample_config(20)
    dense = nn.Embedding(50, 20, padding_idx=1)
    with torch.no_grad():
        dense.weight.copy_(e.weight[:, :20])
    tok = torch.randint(0, 50, (4, 6))
    torch.testing.assert_close(e(tok), dense(tok))
    torch.testing.assert_close(e(tok, 12), dense(tok)[..., :12])  # a shared table sliced per call

    ln = ElasticLayerNorm(32)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    ln.set_sample_config(20)
    dln = nn.LayerNorm(20)
    with torch.no_grad():
        dln.weight.copy_(ln.weight[:20])
        dln.bias.copy_(ln.bias[:20])
    x = torch.randn(2, 3, 20)
    torch.testing.assert_close(ln(x), dln(x))


def test_attention_equals_torch_mha_when_qkv_equals_embed():
    m = ElasticMultiheadAttention(32, 32, 32).eval()
    m.set_sample_config(24, 24, 24, 4)
    ref = nn.MultiheadAttention(24, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([p.weight[:24, :24] for p in (m.q_proj, m.k_proj, m.v_proj)]))
        ref.in_proj_bias.copy_(torch.cat([p.bias[:24] for p in (m.q_proj, m.k_proj, m.v_proj)]))
        ref.out_proj.weight.copy_(m.out_proj.weight[:24, :24])
        ref.out_proj.bias.copy_(m.out_proj.bias[:24])
    q, kv = torch.randn(2, 5, 24), torch.randn(2, 7, 24)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, :2] = True
    mask = torch.zeros(2, 1, 1, 7).masked_fill(pad[:, None, None, :], float("-inf"))
    ours = m(q, kv, attn_mask=mask)
    theirs, _ = ref(q, kv, kv, key_padding_mask=pad)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_attention_elastic_qkv_dim_equals_dense_reference():
    """qkv dim smaller than the embed dim: Q, K, V each take their first qkv rows; head dim = qkv / heads."""
    m = ElasticMultiheadAttention(48, 40, 64).eval()
    emb, kv_emb, qkv, heads = 32, 24, 16, 2
    m.set_sample_config(emb, kv_emb, qkv, heads)
    x, mem = torch.randn(3, 4, emb), torch.randn(3, 6, kv_emb)
    Wq, bq = m.q_proj.weight[:qkv, :emb], m.q_proj.bias[:qkv]
    Wk, bk = m.k_proj.weight[:qkv, :kv_emb], m.k_proj.bias[:qkv]
    Wv, bv = m.v_proj.weight[:qkv, :kv_emb], m.v_proj.bias[:qkv]
    Wo, bo = m.out_proj.weight[:emb, :qkv], m.out_proj.bias[:emb]
    hd = qkv // heads
    q = (x @ Wq.T + bq).view(3, 4, heads, hd).transpose(1, 2)
    k = (mem @ Wk.T + bk).view(3, 6, heads, hd).transpose(1, 2)
    v = (mem @ Wv.T + bv).view(3, 6, heads, hd).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    ref = (att @ v).transpose(1, 2).reshape(3, 4, qkv) @ Wo.T + bo
    torch.testing.assert_close(m(x, mem), ref, atol=1e-5, rtol=1e-5)
    assert m.q_proj.sliced_weight().shape == (qkv, emb)


def test_incremental_self_attention_matches_full():
    m = ElasticMultiheadAttention(16, 16, 16).eval()
    m.set_sample_config(16, 16, 8, 2)
    x = torch.randn(2, 5, 16)
    causal = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    full = m(x, attn_mask=causal)
    cache = {}
    steps = [m(x[:, t : t + 1], cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def _fairseq_positions(tokens, pad):
    mask = tokens.ne(pad).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + pad


@pytest.mark.parametrize("left_pad", [True, False])
def test_positions_without_cumsum_match_fairseq_for_padded_input(left_pad):
    pad = 1
    tokens = torch.randint(4, 30, (4, 9))
    for row, n in enumerate([0, 3, 5, 8]):
        if left_pad:
            tokens[row, :n] = pad
        else:
            tokens[row, 9 - n :] = pad
    pos = ElasticSinusoidalPositions(64, pad)
    assert torch.equal(pos.positions(tokens), _fairseq_positions(tokens, pad))
    emb = pos(tokens, 10)
    assert emb.shape == (4, 9, 10)
    assert torch.all(emb[tokens.eq(pad)] == 0), "pads get the zero row"


def test_sinusoidal_table_matches_fairseq():
    fairseq = pytest.importorskip("fairseq.modules.sinusoidal_positional_embedding")
    for dim in (16, 12, 7):
        ours = sinusoidal_table(40, dim, 1)
        theirs = fairseq.SinusoidalPositionalEmbedding.get_embedding(40, dim, 1)
        torch.testing.assert_close(ours, theirs)


def test_position_module_graph_has_no_cumsum():
    pos = ElasticSinusoidalPositions(16, 1)
    tokens = torch.randint(2, 9, (1, 6))
    traced = torch.jit.trace(lambda t: pos(t, 8), (tokens,), check_trace=False)
    ops = {n.kind() for n in traced.graph.nodes()}
    assert not any("cumsum" in o or "arange" in o or "triu" in o or "tril" in o for o in ops), ops
