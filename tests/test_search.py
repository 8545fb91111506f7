import json
import os

import pytest

from conftest import ROOT
from hat.config import load_yaml
from hat.errors import HatError
from hat.search import Constraint, EvoParams, Evolution, GeneCodec, pareto_front
from hat.space import SearchSpace

SPACE = SearchSpace.from_dict(load_yaml(os.path.join(ROOT, "configs/demo.de-en/supertransformer/space0.yml")))


def size(cfg):
    """A stand-in cost that grows with the architecture (weight count of the layers, in millions, by formula)."""
    e, d, q = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.qkv_dim
    enc = sum(4 * e * q + 2 * e * f for f in cfg.encoder_ffn_embed_dim)
    dec = sum(4 * d * q + 2 * d * q + 2 * e * q + 2 * d * f for f in cfg.decoder_ffn_embed_dim)
    return (enc + dec) / 1e6


def fake_latency(cfg):
    return 1.0 * cfg.decoder_layer_num + 0.3 * cfg.encoder_layer_num + cfg.qkv_dim / 192.0


def fitness(cfgs):
    # bigger models get lower 'loss', deterministic
    return [10.0 - size(c) - 0.01 * sum(c.decoder_arbitrary_ende_attn) for c in cfgs]


def small_params(**kw):
    p = dict(evo_iter=4, population_size=20, parent_size=4, mutation_size=8, crossover_size=8, mutation_prob=0.3, seed=3)
    p.update(kw)
    return EvoParams(**p)


def evo(lat=None, mem=None, state=None, **kw):
    cons = [Constraint("latency", lat, fake_latency, "ms", "predicted"), Constraint("memory", mem, size, "MB", "model")]
    return Evolution(SPACE, fitness, cons, small_params(**kw), state_path=state, log=lambda s: None)


def test_gene_codec_round_trip_and_qkv_is_a_gene():
    codec = GeneCodec(SPACE)
    import random

    rng = random.Random(0)
    qkvs = set()
    for _ in range(50):
        cfg = codec.decode(codec.random(rng))
        SPACE.validate(cfg)
        qkvs.add(cfg.qkv_dim)
    assert qkvs == set(SPACE.choices["qkv-dim-choice"])


def test_every_admitted_candidate_meets_both_constraints():
    e = evo(lat=3.5, mem=2.0)
    best = e.run()
    assert e.evaluated
    for c in e.evaluated.values():
        assert fake_latency(c.config) <= 3.5 and size(c.config) <= 2.0
    assert best.loss == min(c.loss for c in e.evaluated.values() if c.config.key() == best.config.key())


def test_tight_memory_constraint_changes_the_winner():
    loose = evo(lat=3.5, mem=None).run()
    tight_limit = size(loose.config) * 0.7
    tight = evo(lat=3.5, mem=tight_limit).run()
    assert tight.config != loose.config
    assert size(tight.config) <= tight_limit < size(loose.config)


def test_infeasible_budget_stops_with_smallest_values():
    with pytest.raises(HatError, match=r"infeasible constraints.*latency <= 0.1 ms.*smallest the space allows is latency"):
        evo(lat=0.1, mem=2.0).run()


def test_same_seed_same_result_and_resume_equals_uninterrupted(tmp_path):
    a = evo(lat=3.5, mem=2.0).run()
    b = evo(lat=3.5, mem=2.0).run()
    assert a.config == b.config and a.loss == b.loss
    state = str(tmp_path / "state.json")
    evo(lat=3.5, mem=2.0, state=state, evo_iter=2).run()  # 'interrupted' after 2 of 4 iterations
    assert json.load(open(state))["iteration"] == 2
    resumed = evo(lat=3.5, mem=2.0, state=state).run()
    full = evo(lat=3.5, mem=2.0, state=str(tmp_path / "other.json")).run()
    assert resumed.config == full.config and resumed.loss == full.loss == a.loss
    with pytest.raises(Exception, match="other settings"):
        evo(lat=3.0, mem=2.0, state=state).run()


def test_pareto_front():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2.5, 3)]
    assert sorted(pareto_front(pts)) == [0, 1, 3]
