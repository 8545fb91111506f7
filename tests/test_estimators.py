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
