import random

import pytest
import torch

from conftest import ROOT
from hat import memory
from hat.config import load_yaml
from hat.errors import ConfigError
from hat.models.transformer import ModelOptions, SuperTransformer, count_parameters
from hat.space import SearchSpace

DEMO = f"{ROOT}/configs/demo.de-en/supertransformer/space0.yml"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops: one thread (on shared CPUs more threads are several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_dict(load_yaml(DEMO), source=DEMO)


def _configs(space, n, seed=0):
    rng = random.Random(seed)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n)]


OPTIONS = [
    dict(share_all_embeddings=True),
    dict(share_all_embeddings=False),
    dict(share_all_embeddings=False, share_decoder_input_output_embed=True),
    dict(share_all_embeddings=True, encoder_normalize_before=True, decoder_normalize_before=True),
]


@pytest.mark.parametrize("kw", OPTIONS, ids=["shared", "unshared", "shared-dec-io", "normalize-before"])
def test_weight_bytes_equal_parameters_of_the_built_model(space, kw):
    vocab_src, vocab_tgt = (1200, 1200) if kw.get("share_all_embeddings") else (1100, 900)
    opt = ModelOptions(vocab_src, vocab_tgt, **kw)
    for cfg in _configs(space, 6):
        with torch.device("meta"):
            model = SuperTransformer(cfg, opt)
        n = count_parameters(model)
        assert memory.parameter_count(cfg, opt) == n, cfg
        for precision, b in (("fp32", 4), ("fp16", 2), ("int8", 1)):
            assert memory.weight_bytes(cfg, opt, precision) == n * b


def test_weight_bytes_equal_an_extracted_subtransformer(space):
    """The model extract() returns (real weights, not the meta device) has exactly the counted parameters."""
    for kw in OPTIONS[:2]:
        opt = ModelOptions(300, 300, **kw)
        sup = SuperTransformer(space.super_config(), opt)
        for cfg in _configs(space, 2, seed=3):
            sub = sup.extract(cfg)
            assert memory.weight_bytes(cfg, opt, "fp16") == count_parameters(sub) * 2


def test_shared_embedding_is_counted_once(space):
    cfg = space.largest().replace(decoder_embed_dim=128)  # encoder 192, decoder 128
    v = 1000
    shared = memory.parameter_breakdown(cfg, ModelOptions(v, v, share_all_embeddings=True))
    unshared = memory.parameter_breakdown(cfg, ModelOptions(v, v, share_all_embeddings=False))
    assert shared["embeddings"] == v * 192 and shared["output_projection"] == 0
    assert unshared["embeddings"] == v * 192 + v * 128 and unshared["output_projection"] == 128 * v
    assert shared["encoder"] == unshared["encoder"] and shared["decoder"] == unshared["decoder"]


def test_kv_cache_estimate_equals_the_decoder_caches(space):
    """After tgt_len incremental steps at batch*beam hypotheses, the decoder's caches hold exactly the estimate."""
    opt = ModelOptions(64, 64, share_all_embeddings=True, dropout=0.0)
    shapes = memory.Shapes(batch=2, src_len=7, tgt_len=5, beam=3)
    rng = random.Random(5)
    cfgs = [space.largest(), space.smallest(), space.sample(rng)]
    cfgs.append(space.largest().replace(decoder_arbitrary_ende_attn=(1, -1, 1)))
    for cfg in cfgs:
        model = SuperTransformer(cfg, opt).eval()
        n = shapes.batch * shapes.beam
        src = torch.randint(4, 64, (n, shapes.src_len))
        cache = {}
        with torch.no_grad():
            enc = model.encoder(src)
            prev = torch.full((n, 1), 2, dtype=torch.long)
            for _ in range(shapes.tgt_len):
                logits = model.decoder(prev, enc, cache=cache)
                prev = torch.cat([prev, logits[:, -1:].argmax(-1)], dim=1)
        held = sum(t.numel() for layer in cache.values() for part in layer.values() for t in part.values())
        assert memory.kv_cache_elements(cfg, shapes) == held, cfg


def test_memory_mb_grows_with_shapes_and_precision(space):
    cfg, opt = space.largest(), ModelOptions(8000, 8000, share_all_embeddings=True)
    base = dict(batch=1, src_len=30, tgt_len=30, beam=4)
    m = {p: memory.memory_mb(cfg, opt, p, base) for p in ("fp32", "fp16", "int8")}
    assert m["fp32"] > m["fp16"] > m["int8"] > 0
    for key in ("batch", "src_len", "tgt_len", "beam"):
        assert memory.memory_mb(cfg, opt, "fp16", dict(base, **{key: base[key] * 2})) > m["fp16"], key
    rep = memory.memory_report(cfg, opt, "fp16", base)
    assert rep.weights_mb == memory.weight_bytes(cfg, opt, "fp16") / 2**20
    assert rep.total_mb == pytest.approx(rep.weights_mb + rep.activation_mb)
    assert rep.activation_mb == max(rep.encoder_activation_mb, rep.decoder_activation_mb)
    assert rep.kv_cache_mb < rep.decoder_activation_mb
    assert memory.memory_mb(space.smallest(), opt, "fp16", base) < m["fp16"]
    assert "weights" in rep.summary() and rep.to_dict()["shapes"] == base


def test_shapes_from_protocol_and_errors(space):
    class Protocol:  # what hat.latency passes: attributes, no batch
        src_len, tgt_len, beam = 23, 20, 5

    assert memory.Shapes.of(Protocol()) == memory.Shapes(batch=1, src_len=23, tgt_len=20, beam=5)
    cols = memory.dataset_columns(space.smallest(), ModelOptions(100, 100), Protocol())
    assert set(cols) == {"weight_mb", "activation_mb"} and all(v > 0 for v in cols.values())
    with pytest.raises(ConfigError, match="unknown precision 'bf8'"):
        memory.weight_bytes(space.smallest(), ModelOptions(100, 100), "bf8")
    with pytest.raises(ConfigError, match="beam must be >= 1"):
        memory.Shapes.of({"beam": 0})
