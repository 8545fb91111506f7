"""HAT's own checkpoints load (hat/hat_layout.py): state dicts with HAT's exact key names and shapes, written the way
HAT writes them, give the outputs of a reference forward pass written against HAT's layout, through every loader the
stages use (hat.checkpoint.load_model: convert2onnx / --inherit-from / the demo; load_checkpoint: generate.py and
evo_search.py; train.py --restore-file).

References are to mit-han-lab/hardware-aware-transformers (commit 70e5a27): ``ts`` =
fairseq/models/transformer_super.py, ``mha`` = fairseq/modules/multihead_attention_super.py, ``lin`` = linear_super.py,
``emb`` = embedding_super.py, ``ln`` = layer_norm.py, ``sin`` = sinusoidal_positional_embedding.py, ``cu`` =
fairseq/checkpoint_utils.py.
"""
import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

from hat.errors import CheckpointError
from hat.space import SubConfig

PAD = 1  # fairseq's Dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3


# ---- HAT's layout ---------------------------------------------------------------------------------------------------
def hat_args(**kw):
    """A Namespace as HAT's train.py saves it (its options parser + base_architecture, ts L1157-1184), including keys
    that have nothing to do with the model; ``kw`` overrides."""
    a = dict(
        arch="transformersuper_wmt_en_de", task="translation", data="data/binary/wmt16_en_de", source_lang="en",
        target_lang="de", criterion="label_smoothed_cross_entropy", label_smoothing=0.1, optimizer="adam",
        adam_betas="(0.9, 0.98)", lr=[1e-7], max_lr=0.001, lr_scheduler="cosine", update_freq=[16], max_tokens=4096,
        fp16=True, ddp_backend="no_c10d", seed=1, configs="configs/wmt14.en-de/supertransformer/space0.yml",
        max_source_positions=1024, max_target_positions=1024, left_pad_source=True, left_pad_target=False,
        dropout=0.3, attention_dropout=0.1, activation_dropout=0.0, activation_fn="relu",
        encoder_embed_path=None, decoder_embed_path=None, encoder_normalize_before=False,
        decoder_normalize_before=False, encoder_learned_pos=False, decoder_learned_pos=False,
        share_all_embeddings=True, share_decoder_input_output_embed=True, no_token_positional_embeddings=False,
        adaptive_softmax_cutoff=None, adaptive_softmax_dropout=0, adaptive_input=False, get_attn=False,
        no_decoder_final_norm=False, vocab_original_scaling=False, train_subtransformer=False,
        encoder_embed_dim=640, decoder_embed_dim=640, encoder_ffn_embed_dim=3072, decoder_ffn_embed_dim=3072,
        encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8, qkv_dim=512,
        # HAT's parser defaults (ts L138-158); a space YAML overrides them
        encoder_embed_choice=[512, 256, 128], decoder_embed_choice=[512, 256, 128],
        encoder_layer_num_choice=[7, 6, 5, 4, 3, 2], decoder_layer_num_choice=[7, 6, 5, 4, 3, 2],
        encoder_ffn_embed_dim_choice=[4096, 3072, 2048, 1024], decoder_ffn_embed_dim_choice=[4096, 3072, 2048, 1024],
        encoder_self_attention_heads_choice=[16, 8, 4, 2, 1], decoder_self_attention_heads_choice=[16, 8, 4, 2, 1],
        decoder_ende_attention_heads_choice=[16, 8, 4, 2, 1], decoder_arbitrary_ende_attn_choice=[-1, 1, 2],
        **{f"{k}_subtransformer": None for k in (
            "encoder_embed_dim", "decoder_embed_dim", "encoder_ffn_embed_dim_all", "decoder_ffn_embed_dim_all",
            "encoder_layer_num", "decoder_layer_num", "encoder_self_attention_heads_all",
            "decoder_self_attention_heads_all", "decoder_ende_attention_heads_all",
            "decoder_arbitrary_ende_attn_all")},
    )
    a.update(kw)
    a["decoder_output_dim"] = a["decoder_input_dim"] = a["decoder_embed_dim"]  # ts L1183-1184
    return argparse.Namespace(**a)


SPACE0 = dict(  # HAT's configs/wmt14.en-de/supertransformer/space0.yml
    encoder_embed_choice=[640, 512], decoder_embed_choice=[640, 512], encoder_ffn_embed_dim_choice=[3072, 2048, 1024],
    decoder_ffn_embed_dim_choice=[3072, 2048, 1024], encoder_layer_num_choice=[6],
    decoder_layer_num_choice=[6, 5, 4, 3, 2, 1], encoder_self_attention_heads_choice=[8, 4],
    decoder_self_attention_heads_choice=[8, 4], decoder_ende_attention_heads_choice=[8, 4],
    decoder_arbitrary_ende_attn_choice=[-1, 1, 2],
)


def hat_state(a, vocab: int, seed: int = 0, dtype=torch.float32):
    """HAT's ``model.state_dict()`` for args ``a``: every key and shape HAT's modules register, random weights."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 21, generator=g)  # windows at random offsets: fast, and no two tensors alike

    def rnd(*shape, std):
        n = math.prod(shape)
        off = int(torch.randint(0, pool.numel() - n + 1, (1,), generator=g))
        return pool[off:off + n].view(*shape) * std

    sd = {}
    qkv = a.qkv_dim or a.encoder_embed_dim  # mha L46-49: no qkv dim -> the query's embed dim

    def linear(name, n_in, n_out):  # LinearSuper is an nn.Linear at the super dims (lin L13-14)
        sd[f"{name}.weight"] = rnd(n_out, n_in, std=n_in ** -0.5)
        sd[f"{name}.bias"] = rnd(n_out, std=0.05)

    def layer_norm(name, d):  # LayerNormSuper is an nn.LayerNorm at the super dim (ln L20-22)
        sd[f"{name}.weight"] = 1.0 + rnd(d, std=0.1)
        sd[f"{name}.bias"] = rnd(d, std=0.1)

    def attention(name, q_dim, kv_dim):
        if q_dim == kv_dim:  # qkv_same_dim (mha L53): one fused projection (mha L69-70)
            sd[f"{name}.in_proj_weight"] = rnd(3 * qkv, q_dim, std=q_dim ** -0.5)
        else:  # mha L71-74
            sd[f"{name}.k_proj_weight"] = rnd(qkv, kv_dim, std=kv_dim ** -0.5)
            sd[f"{name}.v_proj_weight"] = rnd(qkv, kv_dim, std=kv_dim ** -0.5)
            sd[f"{name}.q_proj_weight"] = rnd(qkv, q_dim, std=q_dim ** -0.5)
        sd[f"{name}.in_proj_bias"] = rnd(3 * qkv, std=0.05)  # mha L76-77
        linear(f"{name}.out_proj", qkv, q_dim)  # mha L83: LinearSuper(qkv_dim -> embed)

    enc, dec = a.encoder_embed_dim, a.decoder_embed_dim
    emb = rnd(vocab, enc, std=enc ** -0.5)  # EmbeddingSuper (emb L33-34)
    emb[PAD] = 0
    sd["encoder.version"] = torch.Tensor([3])  # ts L298
    sd["encoder.embed_tokens.weight"] = emb  # ts L306
    sd["encoder.embed_positions._float_tensor"] = torch.FloatTensor(1)  # ts L308, sin L31 (sinusoidal: no weights)
    for i in range(a.encoder_layers):  # TransformerEncoderLayer, ts L810-824
        p = f"encoder.layers.{i}"
        attention(f"{p}.self_attn", enc, enc)
        layer_norm(f"{p}.self_attn_layer_norm", enc)
        linear(f"{p}.fc1", enc, a.encoder_ffn_embed_dim)
        linear(f"{p}.fc2", a.encoder_ffn_embed_dim, enc)
        layer_norm(f"{p}.final_layer_norm", enc)
    if a.encoder_normalize_before:
        layer_norm("encoder.layer_norm", enc)  # ts L319-320
    sd["decoder.version"] = torch.Tensor([3])  # ts L512
    if a.share_all_embeddings:
        sd["decoder.embed_tokens.weight"] = emb  # ts L240: the same module
    else:
        d_emb = rnd(vocab, dec, std=dec ** -0.5)
        d_emb[PAD] = 0
        sd["decoder.embed_tokens.weight"] = d_emb
    sd["decoder.embed_positions._float_tensor"] = torch.FloatTensor(1)  # ts L524
    for i in range(a.decoder_layers):  # TransformerDecoderLayer, ts L972-1014
        p = f"decoder.layers.{i}"
        attention(f"{p}.self_attn", dec, dec)
        layer_norm(f"{p}.self_attn_layer_norm", dec)
        attention(f"{p}.encoder_attn", dec, enc)  # super_kdim = super_vdim = encoder embed dim (ts L997-1006)
        layer_norm(f"{p}.encoder_attn_layer_norm", dec)
        linear(f"{p}.fc1", dec, a.decoder_ffn_embed_dim)
        linear(f"{p}.fc2", a.decoder_ffn_embed_dim, dec)
        layer_norm(f"{p}.final_layer_norm", dec)
    if not a.share_decoder_input_output_embed:
        sd["decoder.embed_out"] = rnd(vocab, dec, std=dec ** -0.5)  # ts L550-552
    if a.decoder_normalize_before and not a.no_decoder_final_norm:
        layer_norm("decoder.layer_norm", dec)  # ts L554-555
    return {k: (v.to(dtype) if k.endswith("weight") or k.endswith("bias") or k == "decoder.embed_out" else v)
            for k, v in sd.items()}


def save_hat_checkpoint(path, a, sd, legacy=False):
    """As HAT's save_state (cu L223-249): args, model, optimizer history, extra state, optimizer state; ``legacy``:
    in torch's pre-1.6 file format (no zip), as HAT's torch may have written it."""
    torch.save({"args": a, "model": sd,
                "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                                       "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": 4.1},
                                       "num_updates": 40000}],
                "extra_state": {"epoch": 137, "train_iterator": {"epoch": 137, "iterations_in_epoch": 0}},
                "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-7}]}}, path,
               _use_new_zipfile_serialization=not legacy)
    return str(path)


# ---- HAT's forward pass, functional, on HAT's keys -------------------------------------------------------------
def _sinusoid(num, dim):  # sin L37-53
    half = dim // 2
    e = math.log(10000) / (half - 1)
    e = torch.exp(torch.arange(half, dtype=torch.float) * -e)
    e = torch.arange(num, dtype=torch.float).unsqueeze(1) * e.unsqueeze(0)
    e = torch.cat([torch.sin(e), torch.cos(e)], dim=1).view(num, -1)
    if dim % 2 == 1:
        e = torch.cat([e, torch.zeros(num, 1)], dim=1)
    e[PAD, :] = 0
    return e


def _positions(tokens, super_dim):  # sin L75-81 with utils.make_positions (cumsum over non-pads, from PAD + 1)
    mask = tokens.ne(PAD).int()
    pos = (torch.cumsum(mask, dim=1) * mask).long() + PAD
    return _sinusoid(PAD + 1 + tokens.size(1), super_dim)[pos]


def _ln(W, name, x, d):  # LayerNormSuper.forward (ln L50-52)
    return F.layer_norm(x, (d,), W[f"{name}.weight"][:d], W[f"{name}.bias"][:d], 1e-5)


def _lin(W, name, x, d_in, d_out):  # LinearSuper: weight[:, :in][:out, :] (lin L72-82)
    return F.linear(x, W[f"{name}.weight"][:d_out, :d_in], W[f"{name}.bias"][:d_out])


def _mha(W, name, query, key, heads, q_dim, kv_dim, qkv, key_padding_mask=None, attn_mask=None):
    """MultiheadAttentionSuper.forward in eval mode (mha L156-311), T x B x C."""
    tgt_len, bsz, _ = query.shape
    b = W[f"{name}.in_proj_bias"]
    if f"{name}.in_proj_weight" in W:  # _in_proj: weight[start:end, :sample_dim] (mha L313-351)
        w = W[f"{name}.in_proj_weight"]
        wq, wk, wv = w[:qkv, :q_dim], w[qkv:2 * qkv, :kv_dim], w[2 * qkv:, :kv_dim]
    else:
        wq = W[f"{name}.q_proj_weight"][..., :q_dim]
        wk = W[f"{name}.k_proj_weight"][..., :kv_dim]
        wv = W[f"{name}.v_proj_weight"][..., :kv_dim]
    hd = qkv // heads
    q = F.linear(query, wq, b[:qkv]) * hd ** -0.5
    k = F.linear(key, wk, b[qkv:2 * qkv])
    v = F.linear(key, wv, b[2 * qkv:])
    q = q.contiguous().view(tgt_len, bsz * heads, hd).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    src_len = k.size(1)
    aw = torch.bmm(q, k.transpose(1, 2))
    if attn_mask is not None:
        aw = aw + attn_mask.unsqueeze(0)
    if key_padding_mask is not None:
        aw = aw.view(bsz, heads, tgt_len, src_len).masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        aw = aw.view(bsz * heads, tgt_len, src_len)
    aw = F.softmax(aw.float(), dim=-1)
    attn = torch.bmm(aw, v).transpose(0, 1).contiguous().view(tgt_len, bsz, qkv)
    return _lin(W, f"{name}.out_proj", attn, qkv, q_dim)  # out_proj sampled (qkv -> q embed), mha L132


def hat_forward(sd, a, cfg: SubConfig, src, prev):
    """TransformerSuperModel(src, lengths, prev) of HAT in eval mode with ``cfg`` sampled (ts L365-412, L607-725,
    L871-913, L1053-1131): logits (B, T, V)."""
    W = sd if all(v.dtype == torch.float32 for v in sd.values()) else {k: v.float() for k, v in sd.items()}
    qkv = a.qkv_dim or a.encoder_embed_dim
    e_d, d_d = cfg.encoder_embed_dim, cfg.decoder_embed_dim
    nb_e, nb_d = a.encoder_normalize_before, a.decoder_normalize_before

    def block(x, ln, fn, nb, d):  # maybe_layer_norm before / residual / after (ts L915-920)
        residual = x
        if nb:
            x = _ln(W, ln, x, d)
        x = residual + fn(x)
        return x if nb else _ln(W, ln, x, d)

    # encoder
    x = math.sqrt(e_d) * F.embedding(src, W["encoder.embed_tokens.weight"][:, :e_d], PAD)  # ts L381, L344
    x = x + _positions(src, a.encoder_embed_dim)[..., :e_d]  # the super-wide table, cut (ts L383-386)
    x = x.transpose(0, 1)
    pad = src.eq(PAD)
    pad = pad if pad.any() else None
    all_x = []
    for i in range(a.encoder_layers):  # layers past the sampled number are identities (ts L887-888)
        if i < cfg.encoder_layer_num:
            p, ffn, h = f"encoder.layers.{i}", cfg.encoder_ffn_embed_dim[i], cfg.encoder_self_attention_heads[i]
            x = block(x, f"{p}.self_attn_layer_norm",
                      lambda y: _mha(W, f"{p}.self_attn", y, y, h, e_d, e_d, qkv, key_padding_mask=pad), nb_e, e_d)
            x = block(x, f"{p}.final_layer_norm",
                      lambda y: _lin(W, f"{p}.fc2", F.relu(_lin(W, f"{p}.fc1", y, e_d, ffn)), ffn, e_d), nb_e, e_d)
        all_x.append(x)
    enc_out = _ln(W, "encoder.layer_norm", x, e_d) if nb_e else x
    # decoder
    y = math.sqrt(d_d) * F.embedding(prev, W["decoder.embed_tokens.weight"][:, :d_d], PAD)  # ts L651
    y = (y + _positions(prev, a.decoder_embed_dim)[..., :d_d]).transpose(0, 1)  # ts L636-658
    t = y.size(0)
    future = torch.triu(torch.full((t, t), float("-inf")), 1)  # buffered_future_mask (ts L733-737)
    for i in range(a.decoder_layers):
        if i >= cfg.decoder_layer_num:
            continue
        arb = cfg.decoder_arbitrary_ende_attn[i]  # ts L668-690: the last 1, 2 or 3 encoder outputs
        feed = torch.cat([enc_out] + all_x[-2:-2 - max(arb, 0):-1], dim=0)
        fmask = None if pad is None else torch.cat([pad] * (max(arb, 0) + 1), dim=1)
        p, ffn = f"decoder.layers.{i}", cfg.decoder_ffn_embed_dim[i]
        h, eh = cfg.decoder_self_attention_heads[i], cfg.decoder_ende_attention_heads[i]
        y = block(y, f"{p}.self_attn_layer_norm",
                  lambda z: _mha(W, f"{p}.self_attn", z, z, h, d_d, d_d, qkv, attn_mask=future), nb_d, d_d)
        y = block(y, f"{p}.encoder_attn_layer_norm",
                  lambda z: _mha(W, f"{p}.encoder_attn", z, feed, eh, d_d, e_d, qkv, key_padding_mask=fmask),
                  nb_d, d_d)
        y = block(y, f"{p}.final_layer_norm",
                  lambda z: _lin(W, f"{p}.fc2", F.relu(_lin(W, f"{p}.fc1", z, d_d, ffn)), ffn, d_d), nb_d, d_d)
    if nb_d:
        y = _ln(W, "decoder.layer_norm", y, d_d)  # ts L704-705
    y = y.transpose(0, 1)
    out = W["decoder.embed_tokens.weight"] if a.share_decoder_input_output_embed else W["decoder.embed_out"]
    return F.linear(y, out[:, :d_d])  # output_layer (ts L716-723)


def batch(vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (3, 9), generator=g)
    src[1, :3] = PAD  # left-padded source, as fairseq batches it
    src[2, :1] = PAD
    prev = torch.randint(4, vocab, (3, 6), generator=g)
    prev[:, 0] = 2  # </s> starts the decoder input
    return src, prev


def assert_matches(ours, ref):
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff < 1e-4, f"max abs diff {diff}"


# ---- tests ---------------------------------------------------------------------------------------------------------
WMT_SUB = SubConfig(  # inside HAT's space0, every kind of gene away from the super dims
    encoder_embed_dim=512, decoder_embed_dim=512, encoder_layer_num=6, decoder_layer_num=3,
    encoder_ffn_embed_dim=(1024, 3072, 2048, 3072, 1024, 2048), decoder_ffn_embed_dim=(3072, 1024, 2048),
    encoder_self_attention_heads=(8, 4, 8, 4, 4, 8), decoder_self_attention_heads=(4, 8, 4),
    decoder_ende_attention_heads=(8, 4, 4), decoder_arbitrary_ende_attn=(2, -1, 1), qkv_dim=512,
)


def test_wmt14_space0_supertransformer_computes_what_hat_computes(tmp_path):
    """HAT_wmt14ende_super_space0's layout (640 wide, FFN 3072, 6 + 6 layers, fused q/k/v of qkv dim 512, shared
    embeddings, fp16 weights as HAT's fp16 training saves them; vocabulary shrunk): hat.checkpoint.load_model (the
    loader of convert2onnx.py, --inherit-from and the demo) gives HAT's logits for SubTransformers of the space."""
    from hat.checkpoint import load_model

    vocab = 96
    a = hat_args(**SPACE0)
    sd = hat_state(a, vocab, dtype=torch.float16)
    path = save_hat_checkpoint(tmp_path / "HAT_wmt14ende_super_space0.pt", a, sd)
    lm = load_model(path)
    assert not lm.is_subtransformer
    assert lm.space.choices["qkv-dim-choice"] == [512] and lm.space.choices["decoder-layer-num-choice"] == [1, 2, 3,
                                                                                                           4, 5, 6]
    lm.space.validate(WMT_SUB)
    src, prev = batch(vocab)
    with torch.no_grad():
        lm.model.set_sample_config(WMT_SUB)
        assert_matches(lm.model(src, prev), hat_forward(sd, a, WMT_SUB, src, prev))


def test_extracted_subtransformer_and_its_export_graphs_keep_hats_positions(tmp_path):
    """HAT cuts its SuperTransformer-wide sinusoid to the sampled width (ts L386, L642): a SubTransformer extracted
    from a HAT SuperTransformer (what convert2onnx.py exports) computes HAT's outputs, and the exported graphs'
    position constants are those columns, not a table of the sampled width."""
    from hat.checkpoint import load_model
    from hat.export.graphs import DecoderStepGraph, EncoderGraph

    a = hat_args(**SMALL)
    sd = hat_state(a, 40)
    lm = load_model(save_hat_checkpoint(tmp_path / "hat.pt", a, sd))
    sub = lm.model.extract(SMALL_SUB).eval()
    src, prev = batch(40)
    with torch.no_grad():
        assert_matches(sub(src, prev), hat_forward(sd, a, SMALL_SUB, src, prev))
    enc = EncoderGraph(sub, src_len=7).positions
    dec = DecoderStepGraph(sub, max_len=5).positions
    torch.testing.assert_close(enc, _sinusoid(PAD + 8, 64)[:, :48])
    torch.testing.assert_close(dec, _sinusoid(PAD + 6, 64)[:, :32])


SMALL = dict(  # a small HAT SuperTransformer (fast), HAT's layout in full
    arch="transformersuper_iwslt_de_en", encoder_embed_dim=64, decoder_embed_dim=64, encoder_ffn_embed_dim=128,
    decoder_ffn_embed_dim=128, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
    decoder_attention_heads=4, qkv_dim=48, encoder_embed_choice=[64, 48], decoder_embed_choice=[64, 32],
    encoder_ffn_embed_dim_choice=[128, 64], decoder_ffn_embed_dim_choice=[128, 64], encoder_layer_num_choice=[3],
    decoder_layer_num_choice=[3, 2, 1], encoder_self_attention_heads_choice=[4, 2],
    decoder_self_attention_heads_choice=[4, 2], decoder_ende_attention_heads_choice=[4, 2],
    decoder_arbitrary_ende_attn_choice=[-1, 1, 2], source_lang="de", target_lang="en",
)
SMALL_SUB = SubConfig(
    encoder_embed_dim=48, decoder_embed_dim=32, encoder_layer_num=3, decoder_layer_num=2,
    encoder_ffn_embed_dim=(64, 128, 64), decoder_ffn_embed_dim=(128, 64), encoder_self_attention_heads=(2, 4, 4),
    decoder_self_attention_heads=(4, 2), decoder_ende_attention_heads=(2, 4), decoder_arbitrary_ende_attn=(2, 1),
    qkv_dim=48,
)


@pytest.fixture(scope="module")
def demo_vocab(demo_data):
    from hat.vocab import dict_size

    return dict_size(os.path.join(demo_data, "dict.de.txt"))


def test_hat_subtransformer_checkpoint_loads_in_generate_export_and_strip(tmp_path, demo_data, demo_vocab):
    """HAT's train.py --train-subtransformer checkpoint: the whole super-shaped model, the SubTransformer in the args'
    *_subtransformer keys (no qkv key: HAT fixes it) and HAT's parser defaults as its choice lists, in torch's old
    file format. generate.py's loader, convert2onnx.py's and the stripped file all hold that SubTransformer with HAT's
    outputs."""
    from hat.checkpoint import load_model
    from hat.export.onnx import select_model
    from hat.fairseq_plugin.checkpoint import choose_config, load_checkpoint, strip_checkpoint

    sub_keys = {k.replace("-", "_"): v for k, v in SMALL_SUB.to_hat_dict().items() if k != "qkv-dim-subtransformer"}
    space = {k: v for k, v in SMALL.items() if "choice" not in k}  # HAT's subtransformer/common.yml: no space
    a = hat_args(**space, train_subtransformer=True, **sub_keys,
                 configs="configs/iwslt14.de-en/subtransformer/HAT_x.yml")
    sd = hat_state(a, demo_vocab, seed=2)
    path = save_hat_checkpoint(tmp_path / "HAT_sub.pt", a, sd, legacy=True)
    src, prev = batch(demo_vocab)
    with torch.no_grad():
        ref = hat_forward(sd, a, SMALL_SUB, src, prev)

        model, task, saved = load_checkpoint(path, demo_data)  # generate.py
        assert model.is_subtransformer and choose_config(model, SMALL_SUB, "sub.yml") == SMALL_SUB
        assert model.core.config == SMALL_SUB  # built at the SubTransformer's own shape
        model.eval().set_sample_config(SMALL_SUB)
        assert_matches(model(src, src.ne(PAD).sum(1), prev)[0], ref)

        exported, cfg = select_model(path, SMALL_SUB, "sub.yml", log=lambda *_: None)  # convert2onnx.py
        assert cfg == SMALL_SUB
        assert_matches(exported(src, prev), ref)

        out = tmp_path / "stripped.pt"  # python -m hat.checkpoint strip: written in this project's layout
        strip_checkpoint(path, str(out))
        state = torch.load(out, map_location="cpu", weights_only=False)
        assert all(".core." in k for k in state["model"]) and state["model"]["encoder.core.embed_tokens.weight"].shape \
            == (demo_vocab, 48)  # the SubTransformer's own weights only
        assert (state["args"].task, state["args"].criterion, state["args"].label_smoothing) == (
            "translation_hat", "label_smoothed_cross_entropy", 0.1)  # fairseq's loaders set the task up from it
        lm = load_model(str(out))
        assert lm.is_subtransformer and lm.sub_config == SMALL_SUB
        assert_matches(lm.model(src, prev), ref)


def test_hat_supertransformer_with_separate_qkv_and_pre_norm_in_the_search_loader(tmp_path, demo_data, demo_vocab):
    """Encoder and decoder of different widths (HAT's separate q/k/v projections of the encoder-decoder attention),
    unshared embeddings with HAT's ``embed_out``, pre-norm layers with the final layer norms: evo_search.py's loader
    (the space it checks and the model it scores) and the fairseq model's own load_state_dict on HAT's raw state dict
    (its upgrade hook) give HAT's outputs."""
    from hat.fairseq_plugin.checkpoint import load_checkpoint
    from hat.fairseq_plugin.valid_loss import trained_space

    kw = dict(SMALL, decoder_embed_dim=48, decoder_embed_choice=[48, 32], qkv_dim=32, share_all_embeddings=False,
              share_decoder_input_output_embed=False, encoder_normalize_before=True, decoder_normalize_before=True,
              decoder_arbitrary_ende_attn_choice=[-1], encoder_layer_num_choice=[3, 2])
    a = hat_args(**kw)
    sd = hat_state(a, demo_vocab, seed=3)
    assert "decoder.layers.0.encoder_attn.q_proj_weight" in sd and "decoder.embed_out" in sd
    path = save_hat_checkpoint(tmp_path / "HAT_super.pt", a, sd)
    model, task, saved = load_checkpoint(path, demo_data)
    assert not model.is_subtransformer and saved.criterion._name == "label_smoothed_cross_entropy"
    assert trained_space(path).choices == model.space.choices
    assert model.space.choices["encoder-layer-num-choice"] == [2, 3]
    src, prev = batch(demo_vocab, seed=4)
    cfg = SubConfig(encoder_embed_dim=48, decoder_embed_dim=32, encoder_layer_num=2, decoder_layer_num=3,
                    encoder_ffn_embed_dim=(64, 128), decoder_ffn_embed_dim=(64, 128, 64),
                    encoder_self_attention_heads=(4, 2), decoder_self_attention_heads=(2, 4, 4),
                    decoder_ende_attention_heads=(4, 4, 2), decoder_arbitrary_ende_attn=(-1, -1, -1), qkv_dim=32)
    with torch.no_grad():
        ref = hat_forward(sd, a, cfg, src, prev)
        model.eval().set_sample_config(cfg)
        assert_matches(model(src, src.ne(PAD).sum(1), prev)[0], ref)
        torch.manual_seed(0)  # the same model built afresh, HAT's state dict through its load_state_dict
        fresh = task.build_model(saved.model).eval()
        fresh.load_state_dict(dict(sd), strict=True, model_cfg=saved.model)
        fresh.set_sample_config(cfg)
        assert_matches(fresh(src, src.ne(PAD).sum(1), prev)[0], ref)


def test_train_restore_file_in_hats_layout_starts_from_hats_weights(tmp_path, demo_data, demo_vocab):
    """train.py --restore-file HAT.pt (HAT's weights at the tiny space's super dims), through what train.py runs:
    its resume check converts the file into the save dir, fairseq's own checkpoint_utils.load_checkpoint fills the
    trainer's model (built from the YAML) with HAT's weights, and the checkpoint the trainer then saves keeps HAT's
    position tables (a later resume, search or export computes what HAT computes)."""
    from conftest import TINY_SPACE
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    from hat.checkpoint import load_model
    from hat.fairseq_plugin.args import build_args
    from hat.fairseq_plugin.training import check_resume_file

    a = hat_args(arch="transformersuper_wmt_en_de", encoder_embed_dim=64, decoder_embed_dim=64,
                 encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, qkv_dim=64, encoder_embed_choice=[64],
                 decoder_embed_choice=[64], encoder_ffn_embed_dim_choice=[128], decoder_ffn_embed_dim_choice=[128],
                 encoder_layer_num_choice=[2], decoder_layer_num_choice=[2], encoder_self_attention_heads_choice=[4],
                 decoder_self_attention_heads_choice=[4], decoder_ende_attention_heads_choice=[4],
                 decoder_arbitrary_ende_attn_choice=[-1, 1])
    sd = hat_state(a, demo_vocab, seed=5)
    path = save_hat_checkpoint(tmp_path / "HAT_tiny.pt", a, sd)
    save = tmp_path / "ckpt"
    args = build_args([f"--configs={TINY_SPACE}", "--data", demo_data, "--restore-file", path, "--save-dir",
                       str(save)])
    check_resume_file(args, str(save))  # what hat.fairseq_plugin.training.train checks before fairseq starts
    assert args.restore_file == str(save / "hat_HAT_tiny.pt")
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    _, epoch_itr = checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer)  # fairseq_cli.train's resume
    cfg_sub = SubConfig(encoder_embed_dim=32, decoder_embed_dim=64, encoder_layer_num=2, decoder_layer_num=2,
                        encoder_ffn_embed_dim=(64, 128), decoder_ffn_embed_dim=(128, 64),
                        encoder_self_attention_heads=(2, 4), decoder_self_attention_heads=(4, 2),
                        decoder_ende_attention_heads=(2, 4), decoder_arbitrary_ende_attn=(1, -1), qkv_dim=64)
    src, prev = batch(demo_vocab, seed=6)
    with torch.no_grad():
        ref = hat_forward(sd, a, cfg_sub, src, prev)
        model = trainer.model.eval()
        model.set_sample_config(cfg_sub)
        assert_matches(model(src, src.ne(PAD).sum(1), prev)[0], ref)
        epoch_itr.next_epoch_itr(shuffle=False)  # as fairseq_cli.train starts an epoch, then its save
        checkpoint_utils.save_checkpoint(cfg.checkpoint, trainer, epoch_itr, None)
        lm = load_model(str(save / "checkpoint_last.pt"))
        lm.model.set_sample_config(cfg_sub)
        assert_matches(lm.model(src, prev), ref)


@pytest.mark.parametrize("change, key, message", [
    (dict(encoder_learned_pos=True), "encoder.embed_positions.weight", "learned positional embeddings"),
    (dict(vocab_original_scaling=True), None, "vocab-original-scaling"),
    (dict(encoder_normalize_before=True), None, "pre-norm encoder"),
    (dict(encoder_layer_num_choice=[3, 2]), None, "fewer encoder layers"),
    (dict(), "decoder.project_out_dim.weight", "unexpected key decoder.project_out_dim.weight"),
])
def test_what_hat_computes_differently_is_refused_in_one_line(tmp_path, change, key, message):
    """A HAT checkpoint this model would not reproduce is one CheckpointError line, never a model that computes
    something else than HAT's."""
    from hat.checkpoint import load_model

    a = hat_args(**dict(SMALL, **change))
    sd = hat_state(a, 20)
    if key:
        sd[key] = torch.zeros(20, 64)
    with pytest.raises(CheckpointError) as e:
        load_model(save_hat_checkpoint(tmp_path / "bad.pt", a, sd))
    assert message in str(e.value) and "\n" not in str(e.value)
