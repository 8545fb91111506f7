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


def evo(lat=None, mem=None, state=None, inputs=None, **kw):
    cons = [Constraint("latency", lat, fake_latency, "ms", "predicted"), Constraint("memory", mem, size, "MB", "model")]
    return Evolution(SPACE, fitness, cons, small_params(**kw), state_path=state, log=lambda s: None, inputs=inputs)


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


# -- resume: nothing mixed, nothing lost, no traceback (issue 15) ----------------------------------------------------
def _saved(tmp_path, **kw):
    """A search 'interrupted' after 2 of 4 iterations, its state path and bytes."""
    state = str(tmp_path / "state.json")
    evo(lat=3.5, mem=2.0, state=state, evo_iter=2, inputs=kw.pop("inputs", INPUTS), **kw).run()
    return state, open(state, "rb").read()


INPUTS = {"restore-file": {"path": "/a/super.pt", "size": 10, "sha256": "aa" * 32}, "valid-cnt-max": 2}


def evo_inputs(inputs=INPUTS, **kw):
    kw.setdefault("lat", 3.5)
    kw.setdefault("mem", 2.0)
    cons = [Constraint("latency", kw.pop("lat"), kw.pop("latency", fake_latency), "ms", "predicted"),
            Constraint("memory", kw.pop("mem"), size, "MB", "model")]
    state, fit, log = kw.pop("state", None), kw.pop("fitness", fitness), kw.pop("log", lambda s: None)
    return Evolution(SPACE, fit, cons, small_params(**kw), state_path=state, log=log, inputs=inputs)



@pytest.mark.parametrize("changed, says", [
    ({"restore-file": {"path": "/b/super.pt", "size": 10, "sha256": "bb" * 32}}, "restore-file /a/super.pt (sha256 aaaa"),
    ({"valid-cnt-max": 3}, "valid-cnt-max 2 -> 3"),
    ({"data": "/other"}, "data (not recorded) -> '/other'"),
])
def test_resume_with_other_inputs_is_refused_naming_the_input(tmp_path, changed, says):
    state, before = _saved(tmp_path)
    calls = []
    e = evo_inputs(inputs=dict(INPUTS, **changed), state=state, fitness=lambda c: calls.append(c) or fitness(c))
    with pytest.raises(HatError) as err:
        e.run()
    msg = str(err.value)
    assert says in msg and "delete it" in msg and "state-path" in msg and "\n" not in msg
    assert not calls and open(state, "rb").read() == before


def test_resume_of_a_moved_checkpoint_with_the_same_content_goes_on(tmp_path):
    state, _ = _saved(tmp_path)
    moved = dict(INPUTS, **{"restore-file": dict(INPUTS["restore-file"], path="/elsewhere/super.pt")})
    full = evo_inputs(state=str(tmp_path / "full.json")).run()
    assert evo_inputs(inputs=moved, state=state).run().config == full.config


@pytest.mark.parametrize("kw, says", [
    ({"population_size": 21, "mutation_size": 9}, "population-size 20 -> 21"),
    ({"seed": 4}, "seed 3 -> 4"),
    ({"lat": 3.0}, "latency-constraint 3.5 -> 3.0"),
    ({"latency": lambda c: fake_latency(c) * 0.5}, "other constraint values (latency of"),
])
def test_resume_with_other_settings_or_constraint_values_is_refused(tmp_path, kw, says):
    state, before = _saved(tmp_path)
    with pytest.raises(HatError, match="delete it") as err:
        evo_inputs(state=state, **kw).run()
    assert says in str(err.value), str(err.value)
    assert open(state, "rb").read() == before


@pytest.mark.parametrize("damage", ["cut", "empty", "not_json", "list", "old", "short_gene", "bad_gene", "no_loss"])
def test_torn_or_damaged_state_is_one_line_never_a_traceback(tmp_path, damage):
    state, before = _saved(tmp_path)
    s = json.loads(before)
    text = {
        "cut": before[: len(before) // 2].decode(),
        "empty": "",
        "not_json": "\x00\x01garbage",
        "list": "[1, 2]",
        "old": json.dumps({k: v for k, v in s.items() if k != "version"}),
        "short_gene": json.dumps(dict(s, population=[g[:-1] for g in s["population"]])),
        "bad_gene": json.dumps(dict(s, population=[[999] * len(g) for g in s["population"]])),
        "no_loss": json.dumps(dict(s, losses={})),
    }[damage]
    open(state, "w").write(text)
    with pytest.raises(HatError) as err:
        evo_inputs(state=state).run()
    msg = str(err.value)
    assert state in msg and "delete it" in msg and "\n" not in msg
    assert open(state).read() == text


def test_evo_iter_below_the_saved_iteration_is_refused_and_equal_takes_the_result(tmp_path):
    state, before = _saved(tmp_path)  # at iteration 2
    with pytest.raises(HatError, match=r"already at iteration 2, past evo-iter 1: pass evo-iter 2 or more"):
        evo_inputs(state=state, evo_iter=1).run()
    assert open(state, "rb").read() == before
    logs = []
    done = evo_inputs(state=state, evo_iter=2, log=logs.append).run()
    first = evo_inputs(state=str(tmp_path / "again.json"), evo_iter=2).run()
    assert done.config == first.config and done.loss == first.loss
    assert any("is complete (2 of 2 iterations)" in s for s in logs) and not any("of 2 from" in s for s in logs)


def test_resumed_search_keeps_every_candidate_evaluated_before_the_interruption(tmp_path):
    state, _ = _saved(tmp_path)
    resumed = evo_inputs(state=state)
    resumed.run()
    full = evo_inputs(state=str(tmp_path / "full.json"))
    full.run()
    assert list(resumed.evaluated) == list(full.evaluated)
    assert [(c.gene, c.loss, c.values) for c in resumed.evaluated.values()] == \
        [(c.gene, c.loss, c.values) for c in full.evaluated.values()]
    assert resumed.history == full.history


def test_a_state_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HatError, match="cannot write the search state"):
        evo_inputs(state=str(blocker / "state.json")).run()


def test_space_coverage_of_a_supertransformer():
    from hat.search import check_covers, coverage_problems

    small = SearchSpace.from_dict(load_yaml(os.path.join(ROOT, "tests/fixtures/tiny_space.yml")))
    assert coverage_problems(SPACE, SPACE) == [] and coverage_problems(small, small) == []
    with pytest.raises(HatError, match=r"x.pt was trained on another search space \(encoder-embed-choice"):
        check_covers(small, SPACE, "x.pt")
    with pytest.raises(HatError, match="was trained on another search space"):
        check_covers(SPACE, small, "x.pt")
    d = load_yaml(os.path.join(ROOT, "tests/fixtures/tiny_space.yml"))
    sub = SearchSpace.from_dict(dict(d, **{"encoder-embed-choice": [64], "decoder-layer-num-choice": [2]}))
    assert coverage_problems(sub, small) == []  # a narrower search inside the trained space is fine
