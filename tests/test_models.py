import os
import random

import pytest
import torch

from hat.config import load_yaml
from hat.models import ModelOptions, SuperTransformer, count_parameters, sampled_parameter_count
from hat.space import SearchSpace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = SearchSpace.from_dict(load_yaml(os.path.join(ROOT, "configs/demo.de-en/supertransformer/space0.yml")))
V = 97


def expected_params(cfg, vocab, share_all):
    """Parameter count of a SubTransformer from its config alone (the formula, not the model)."""
    e, d, q = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.qkv_dim
    attn = lambda emb, kv: emb * q + q + 2 * (kv * q + q) + q * emb + emb  # q, k, v, out projections
    ln = lambda n: 2 * n
    enc = sum(attn(e, e) + ln(e) + (e * f + f) + (f * e + e) + ln(e) for f in cfg.encoder_ffn_embed_dim)
    dec = sum(attn(d, d) + attn(d, e) + 3 * ln(d) + (d * f + f) + (f * d + d) for f in cfg.decoder_ffn_embed_dim)
    emb = vocab * max(e, d) if share_all else vocab * e + vocab * d + vocab * d  # + output projection
    return enc + dec + emb


def _inputs():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, V, (3, 9), generator=g)
    src[0, :3] = 1  # left padding, as fairseq batches sources
    tgt = torch.randint(4, V, (3, 6), generator=g)
    return src, tgt


@pytest.mark.parametrize("share_all", [True, False])
def test_extracted_subtransformer_equals_supernet(share_all):
    torch.manual_seed(0)
    sup = SuperTransformer(SPACE.super_config(), ModelOptions(V, V, share_all_embeddings=share_all)).eval()
    src, tgt = _inputs()
    rng = random.Random(1)
    for cfg in [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(6)]:
        sup.set_sample_config(cfg)
        sub = sup.extract()
        with torch.no_grad():
            torch.testing.assert_close(sub(src, tgt), sup(src, tgt), atol=1e-5, rtol=1e-5)
        n = count_parameters(sub)
        assert n == expected_params(cfg, V, share_all)
        assert n == sampled_parameter_count(sup, cfg)
        assert n <= count_parameters(sup)
        # the sub's state dict holds only the sampled slices, at the sampled shapes
        assert sub.state_dict()["encoder.layers.0.fc1.weight"].shape == (cfg.encoder_ffn_embed_dim[0], cfg.encoder_embed_dim)
        assert sub.state_dict()["decoder.layers.0.self_attn.q_proj.weight"].shape == (cfg.qkv_dim, cfg.decoder_embed_dim)
        assert len(sub.decoder.layers) == cfg.decoder_layer_num


def test_extracted_weights_are_copies():
    sup = SuperTransformer(SPACE.super_config(), ModelOptions(V, V))
    sub = sup.extract(SPACE.smallest())
    with torch.no_grad():
        sub.encoder.layers[0].fc1.weight.zero_()
    assert sup.encoder.layers[0].fc1.weight.abs().sum() > 0


def test_arbitrary_ende_attention_changes_output():
    torch.manual_seed(0)
    sup = SuperTransformer(SPACE.super_config(), ModelOptions(V, V)).eval()
    src, tgt = _inputs()
    cfg = SPACE.largest().replace(decoder_arbitrary_ende_attn=(-1, -1, -1))
    a = sup.set_sample_config(cfg)(src, tgt)
    b = sup.set_sample_config(cfg.replace(decoder_arbitrary_ende_attn=(1, -1, -1)))(src, tgt)
    assert not torch.allclose(a, b)


def test_incremental_decoding_equals_full_decoding():
    torch.manual_seed(0)
    sup = SuperTransformer(SPACE.super_config(), ModelOptions(V, V, share_all_embeddings=True)).eval()
    sub = sup.extract(SPACE.sample(random.Random(5)))
    src, tgt = _inputs()
    with torch.no_grad():
        full = sub(src, tgt)
        enc = sub.encoder(src)
        cache = {}
        steps = [sub.decoder(tgt[:, : t + 1], enc, cache=cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_config_that_does_not_fit_is_refused():
    sub = SuperTransformer(SPACE.smallest(), ModelOptions(V, V))
    with pytest.raises(ValueError, match="decoder-layer-num-subtransformer value 3 exceeds 1"):
        sub.set_sample_config(SPACE.largest())


def test_model_and_space_fit_checks_are_one_definition():
    """SuperTransformer.check_fits (ValueError) and SearchSpace.fits (ConfigError) both report
    SubConfig.fit_problems."""
    from hat.errors import ConfigError

    sup = SuperTransformer(SPACE.super_config(), ModelOptions(V, V))
    big = SPACE.largest().replace(qkv_dim=SPACE.super_config().qkv_dim * 2, encoder_ffn_embed_dim=(10**5,) * 6)
    problems = big.fit_problems(SPACE.super_config())
    assert len(problems) >= 2 and any("qkv-dim-subtransformer" in p for p in problems)
    assert any("encoder-ffn-embed-dim-all-subtransformer[0]" in p for p in problems)
    with pytest.raises(ValueError) as model_err:
        sup.check_fits(big)
    with pytest.raises(ConfigError) as space_err:
        SPACE.fits(big)
    for p in problems:
        assert p in str(model_err.value) and p in str(space_err.value)
    assert SPACE.largest().fit_problems(SPACE.super_config()) == []
    sup.check_fits(SPACE.largest())


def test_encoder_keeps_the_states_the_decoder_reads():
    cfg = SPACE.largest().replace(encoder_layer_num=3, decoder_layer_num=2, decoder_arbitrary_ende_attn=(2, -1))
    model = SuperTransformer(SPACE.super_config(), ModelOptions(V, V)).eval().set_sample_config(cfg)
    assert cfg.ende_layers == [3, 1] and cfg.encoder_states == 3 == model.encoder.keep_states
    src = torch.randint(4, V, (2, 7))
    assert len(model.encoder(src)["states"]) == 3
    assert [model.decoder.ende_layers(i) for i in range(2)] == [3, 1]
    bad = cfg.replace(encoder_layer_num=2, decoder_arbitrary_ende_attn=(2, -1))
    with pytest.raises(ValueError, match="decoder-arbitrary-ende-attn 2 needs 3 encoder layers"):
        model.check_fits(bad)


def test_half_precision_model_runs_and_matches_fp32():
    """fairseq --fp16 casts the model to half: positions, masks and tables must follow the model's dtype."""
    torch.manual_seed(0)
    sup = SuperTransformer(SPACE.super_config(), ModelOptions(V, V, share_all_embeddings=True)).eval()
    src, tgt = _inputs()
    with torch.no_grad():
        ref = sup(src, tgt)
        half = sup.to(torch.bfloat16)(src, tgt)  # bf16 runs on CPU; fp16 takes the same code path
    assert half.dtype == torch.bfloat16
    assert (half.float() - ref).abs().max() < 0.1 * ref.abs().max()
