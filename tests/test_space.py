import os
import random
import subprocess
import sys

import pytest
import yaml

from hat.config import load_yaml
from hat.errors import ConfigError
from hat.space import CHOICE_KEYS, SUB_KEYS, SearchSpace, SubConfig, ende_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs/demo.de-en/supertransformer/space0.yml")


@pytest.fixture
def space():
    return SearchSpace.from_dict(load_yaml(DEMO), source=DEMO)


def test_samples_stay_in_choices_and_are_seeded(space):
    a = [space.sample(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = random.Random(0)
    seen_qkv = set()
    for _ in range(200):
        cfg = space.sample(rng)
        space.validate(cfg)
        assert len(cfg.encoder_ffn_embed_dim) == cfg.encoder_layer_num
        assert len(cfg.decoder_arbitrary_ende_attn) == cfg.decoder_layer_num
        seen_qkv.add(cfg.qkv_dim)
    assert seen_qkv == set(space.choices["qkv-dim-choice"]), "qkv dim is a searched gene"


def test_largest_and_smallest(space):
    big, small = space.largest(), space.smallest()
    assert big.encoder_embed_dim == 192 and small.encoder_embed_dim == 128
    assert big.decoder_layer_num == 3 and small.decoder_layer_num == 1
    assert big.qkv_dim == 192 and small.qkv_dim == 64
    assert set(small.decoder_ffn_embed_dim) == {256}


def test_update_sampling_depends_only_on_seed_and_update(space):
    ours = [space.sample_for_update(3, u).key() for u in range(20)]
    assert len(set(ours)) > 5, "different updates sample different SubTransformers"
    code = (
        "import random, sys; random.seed(12345);"
        "from hat.config import load_yaml; from hat.space import SearchSpace;"
        f"s = SearchSpace.from_dict(load_yaml({DEMO!r}));"
        "print(' '.join(s.sample_for_update(3, u).key() for u in range(20)))"
    )
    for hashseed in ("1", "2"):  # two 'ranks': separate processes, other hash seeds and global RNG state
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
        assert out.stdout.split() == ours


def test_choice_outside_super_dims_names_the_key():
    d = load_yaml(DEMO)
    d["encoder-ffn-embed-dim-choice"] = [512, 1024]
    with pytest.raises(ConfigError, match="encoder-ffn-embed-dim-choice.*1024"):
        SearchSpace.from_dict(d, source="x.yml")


def test_qkv_not_divisible_by_heads_is_rejected():
    d = load_yaml(DEMO)
    d["qkv-dim-choice"] = [192, 90]
    with pytest.raises(ConfigError, match="qkv-dim-choice 90"):
        SearchSpace.from_dict(d)


def test_sub_config_validation_names_key_and_index(space):
    cfg = space.largest().replace(decoder_ffn_embed_dim=(512, 300, 512))
    with pytest.raises(ConfigError, match=r"decoder-ffn-embed-dim-all-subtransformer\[1\]=300"):
        space.validate(cfg)
    too_big = space.largest().replace(qkv_dim=256)
    with pytest.raises(ConfigError, match="qkv-dim-subtransformer value 256 exceeds"):
        space.fits(too_big)


def test_arbitrary_ende_attention_derived_counts(space):
    assert [ende_layers(a) for a in (-1, 1, 2)] == [1, 2, 3]
    cfg = space.largest().replace(decoder_arbitrary_ende_attn=(1, -1, -1))
    assert cfg.ende_layers == [2, 1, 1] and cfg.encoder_states == 2
    assert space.smallest().replace(decoder_arbitrary_ende_attn=(-1,) * 3).encoder_states == 1
    # sampling never draws an attention that needs more encoder layers than the sample has
    for seed in range(50):
        c = space.sample(random.Random(seed))
        assert max(c.ende_layers) <= c.encoder_layer_num and not c.ende_problems()


def test_fit_checks_share_one_definition(space):
    """fits (super dims) reports every one of SubConfig.fit_problems, which include its ende_problems (what
    validate checks after the choices)."""
    short = space.largest().replace(encoder_layer_num=2, decoder_arbitrary_ende_attn=(2, -1, -1))
    assert short.ende_problems() == [
        "decoder-arbitrary-ende-attn 2 needs 3 encoder layers, encoder-layer-num-subtransformer is 2"]
    big = space.largest().replace(qkv_dim=384, decoder_ffn_embed_dim=(512, 4096, 8192))
    with pytest.raises(ConfigError) as e:
        space.fits(big, source="x.yml")
    msg = str(e.value)
    assert msg.startswith("x.yml: SubTransformer does not fit the SuperTransformer: ")
    for p in big.fit_problems(space.super_config()):
        assert p in msg
    assert "qkv-dim-subtransformer value 384 exceeds 192" in msg
    assert "decoder-ffn-embed-dim-all-subtransformer[1] value 4096 exceeds 512" in msg
    assert "decoder-ffn-embed-dim-all-subtransformer[2] value 8192 exceeds 512" in msg
    with pytest.raises(ConfigError, match="needs 3 encoder layers"):
        space.fits(short)


def test_hat_subtransformer_yaml_round_trip(tmp_path, space):
    cfg = space.sample(random.Random(3))
    d = cfg.to_hat_dict()
    assert set(d) == set(SUB_KEYS)
    p = tmp_path / "sub.yml"
    p.write_text(yaml.safe_dump(d))
    assert SubConfig.from_hat_dict(load_yaml(str(p))) == cfg
    # HAT writes per-layer lists for every super layer; the extra entries are ignored
    d2 = dict(d)
    d2["decoder-ffn-embed-dim-all-subtransformer"] = list(cfg.decoder_ffn_embed_dim) + [512] * 3
    assert SubConfig.from_hat_dict(d2) == cfg


def test_missing_sub_key_and_short_list():
    d = SearchSpace.from_dict(load_yaml(DEMO)).largest().to_hat_dict()
    del d["qkv-dim-subtransformer"]
    with pytest.raises(ConfigError, match="qkv-dim-subtransformer"):
        SubConfig.from_hat_dict(d)
    d = SearchSpace.from_dict(load_yaml(DEMO)).largest().to_hat_dict()
    d["encoder-ffn-embed-dim-all-subtransformer"] = [512]
    with pytest.raises(ConfigError, match="has 1 entries but encoder-layer-num is 3"):
        SubConfig.from_hat_dict(d)


def test_features_are_hat_ten_plus_qkv(space):
    cfg = space.largest()
    f = cfg.features()
    assert len(f) == 11
    assert f[0] == 192 and f[1] == 3 and f[2] == 512 and f[-1] == 192
    assert cfg.decoder_arbitrary_ende_attn == (1, 1, 1) and f[9] == 2.0  # two encoder layers attended, as HAT counts
    mixed = cfg.replace(decoder_arbitrary_ende_attn=(-1, 1, 2))
    assert mixed.features()[9] == pytest.approx((1 + 2 + 3) / 3)  # HAT's datasets: 1, 2 or 3 layers attended


def test_every_choice_key_is_read(space):
    assert set(space.choices) == set(CHOICE_KEYS)
