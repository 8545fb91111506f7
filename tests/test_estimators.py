"""The latency estimators of hat.latency.protocol on hand-made per-call times."""
import pytest

from hat.errors import ConfigError
from hat.latency.protocol import Protocol, estimate_calls, stats

# runs[r][s]: call s of timed run r (a decoder's steps; step 0 carries the cache reset)
RUNS = [[3.0, 1.0, 2.0, 1.2],
        [2.5, 1.5, 0.8, 1.1],
        [2.9, 0.9, 1.4, 3.0]]


def test_step_min_costs_every_later_step_at_the_fastest_of_all_of_them():
    # first step: fastest of its own runs (2.5); the 3 later steps each at the fastest later call anywhere (0.8)
    assert estimate_calls(RUNS, "step-min") == pytest.approx(2.5 + 3 * 0.8)
    # call-min keeps each step's own minimum: 2.5 + 0.9 + 0.8 + 1.1
    assert estimate_calls(RUNS, "call-min") == pytest.approx(2.5 + 0.9 + 0.8 + 1.1)
    assert estimate_calls(RUNS, "step-min") < estimate_calls(RUNS, "call-min")
    # one call per run (an encoder): the fastest run
    assert estimate_calls([[r[0]] for r in RUNS], "step-min") == pytest.approx(2.5)


def test_step_min_through_the_protocol_needs_per_call_times():
    p = Protocol(estimator="step-min", tgt_len=4, backend="onnxruntime")
    totals = [sum(r) for r in RUNS]
    value, _ = stats(totals, p, calls=RUNS)
    assert value == pytest.approx(2.5 + 3 * 0.8)
    with pytest.raises(ConfigError, match="per-call"):
        stats(totals, p, calls=None)


def test_step_min_is_refused_where_decoder_steps_grow():
    with pytest.raises(ConfigError, match="step-min needs decoder steps of one shape"):
        Protocol(estimator="step-min", backend="cpu")
    with pytest.raises(ConfigError, match="step-min needs decoder steps of one shape"):
        Protocol(estimator="step-min", backend="gpu")
    for backend in ("onnxruntime", "npu", "npu-adb", ""):
        assert Protocol(estimator="step-min", backend=backend).estimator == "step-min"


def test_step_min_is_another_protocol_than_call_min():
    a = Protocol(estimator="step-min", backend="onnxruntime")
    b = Protocol(estimator="call-min", backend="onnxruntime")
    assert "estimator" in (a.mismatch(b) or "")


# ---- passes: the timed runs in interleaved passes (measure_block) -------------------------------------------------
class OrderBackend:
    """Records what it is asked to do, in order; each call advances a clock by the handle's own cost (ms)."""

    name, source = "order", "measured:order-log"

    def __init__(self, cost):
        self.cost, self.log, self.now = cost, [], 0.0

    def load(self, cfg):
        self.log.append(("load", cfg))
        return cfg

    def unload(self, h):
        self.log.append(("unload", h))

    def encoder(self, h):
        self.log.append(("enc", h))
        self.now += self.cost[h]

    def start_decoding(self, h):
        pass

    def decoder_step(self, h, step):
        self.now += self.cost[h] / 10

    def memory(self, h):
        return {}

    def timer(self):
        return lambda: self.now


def test_passes_interleave_the_configs_of_a_block_and_pool_their_runs():
    from hat.latency.protocol import measure_block

    b = OrderBackend({"A": 2.0, "B": 3.0})
    p = Protocol(tgt_len=2, warmup=1, repeats=4, passes=2)
    ma, mb = measure_block(b, ["A", "B"], p)
    # both loaded first; pass 1: A (1 warm-up + 2 timed), B (1 + 2); pass 2 the same; then both unloaded
    assert b.log == ([("load", "A"), ("load", "B")] + [("enc", "A")] * 3 + [("enc", "B")] * 3
                     + [("enc", "A")] * 3 + [("enc", "B")] * 3 + [("unload", "A"), ("unload", "B")])
    assert len(ma.encoder_ms) == 4 and len(ma.step_ms) == 4 and ma.encoder_ms == pytest.approx([2.0] * 4)
    assert mb.encoder_ms == pytest.approx([3.0] * 4) and mb.decoder_ms == pytest.approx([0.6] * 4)


def test_one_pass_measures_each_config_alone_as_before():
    from hat.latency.protocol import measure_block

    b = OrderBackend({"A": 2.0, "B": 3.0})
    measure_block(b, ["A", "B"], Protocol(tgt_len=2, warmup=1, repeats=2))
    assert b.log == ([("load", "A")] + [("enc", "A")] * 3 + [("unload", "A"), ("load", "B")] + [("enc", "B")] * 3
                     + [("unload", "B")])


def test_passes_are_part_of_the_protocol_and_bounds_checked():
    a = Protocol(repeats=200, passes=4, backend="onnxruntime")
    assert "passes 4 vs 1" in (a.mismatch(Protocol(repeats=200, backend="onnxruntime")) or "")
    assert "200 timed runs in 4 interleaved passes" in a.describe()
    legacy = a.to_dict()
    del legacy["passes"]  # rows and checkpoints written before the field: one pass
    assert Protocol.from_dict(legacy).passes == 1
    for bad in (0, 3):
        with pytest.raises(ConfigError, match="passes must be >= 1 and divide the timed runs"):
            Protocol(repeats=200, passes=bad)
    with pytest.raises(ConfigError, match="board runner measures one model at a time"):
        Protocol(repeats=200, passes=4, backend="npu")


class CountingBackend(OrderBackend):
    """The encoder's n-th call takes n ms: which runs a measurement kept tells which passes they came from."""

    def __init__(self):
        super().__init__({})
        self.n = 0

    def encoder(self, h):
        self.log.append(("enc", h))
        self.n += 1
        self.now += self.n

    def decoder_step(self, h, step):
        pass


def test_fewer_configs_than_the_block_keep_their_passes_as_far_apart_as_a_full_block():
    from hat.latency.protocol import measure_block

    b = CountingBackend()
    # one config, protocol block 3: 3 interleaved groups of 2 passes (1 run each); the measurement is group 0,
    # i.e. passes 1 and 4 (encoder calls 1 and 4), 3 passes apart as with 3 configs in a block
    (m,) = measure_block(b, ["A"], Protocol(tgt_len=1, warmup=0, repeats=2, passes=2, block=3))
    assert m.encoder_ms == pytest.approx([1.0, 4.0]) and len(b.log) == 2 + 6
    b = CountingBackend()
    ma, mb = measure_block(b, ["A", "B"], Protocol(tgt_len=1, warmup=0, repeats=2, passes=2, block=3))
    # two configs: ceil(3 / 2) = 2 groups; passes A1 B2 | A3 B4 | A5 B6 | A7 B8 -> A keeps 1 and 5, B 2 and 6
    assert ma.encoder_ms == pytest.approx([1.0, 5.0]) and mb.encoder_ms == pytest.approx([2.0, 6.0])
    b = CountingBackend()  # a full block: no extra groups
    ms = measure_block(b, ["A", "B", "C"], Protocol(tgt_len=1, warmup=0, repeats=2, passes=2, block=3))
    assert [m.encoder_ms for m in ms] == [pytest.approx([1.0, 4.0]), pytest.approx([2.0, 5.0]),
                                          pytest.approx([3.0, 6.0])]
    with pytest.raises(ConfigError, match="block must be >= 1"):
        Protocol(repeats=2, passes=2, block=0)
    assert "blocks of 3" in Protocol(repeats=2, passes=2, block=3).describe()
