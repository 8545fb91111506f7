"""evo_search.py end to end on real parts: a tiny SuperTransformer trained by train.py, a latency dataset measured by
latency_dataset.py, a predictor trained on it, the memory model."""
import csv
import os

import pytest

from conftest import FIXTURES, run_script, train_tiny_super

TINY = os.path.join(FIXTURES, "tiny_space.yml")
EVO = os.path.join(FIXTURES, "tiny_evo.yml")
SUB_COMMON = os.path.join(FIXTURES, "tiny_common.yml")


@pytest.fixture(scope="module")
def parts(demo_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("evo")
    train_tiny_super(demo_data, d / "super")
    r = run_script("latency_dataset.py", f"--configs={TINY}", "--data", demo_data, "--latency-backend", "cpu",
                   "--lat-dataset-path", str(d / "lat.csv"), "--lat-dataset-size", "12", "--latiter", "5",
                   "--lat-warmup", "1", "--lat-estimator", "min", "--lat-src-len", "6", "--lat-tgt-len", "4", "--latsilent")
    assert r.returncode == 0, r.stderr[-2000:]
    from hat.config import load_yaml
    from hat.predictor import TrainParams, read_dataset, train
    from hat.space import SearchSpace

    space = SearchSpace.from_dict(load_yaml(TINY))
    pred, _ = train(read_dataset(str(d / "lat.csv"), space=space), space, TrainParams(train_steps=60, ensemble=1))
    pred.save(str(d / "pred.pt"))
    return d, demo_data


def _search(d, data, *extra):
    return run_script("evo_search.py", f"--configs={TINY}", f"--evo-configs={EVO}", "--data", data,
                      "--restore-file", str(d / "super" / "checkpoint_last.pt"), "--ckpt-path", str(d / "pred.pt"),
                      *extra)


@pytest.mark.slow
def test_search_writes_winner_candidates_and_plot_within_both_constraints(parts):
    d, data = parts
    out = d / "out" / "best.yml"
    r = _search(d, data, "--write-config-path", str(out), "--memory-constraint", "2.6", "--latency-constraint", "5000")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = [line for line in r.stdout.splitlines() if line.startswith("| best SubTransformer")]
    assert summary and "(predicted)" in summary[0] and "memory model" in summary[0]
    rows = list(csv.DictReader(open(d / "out" / "best.candidates.csv")))
    assert len(rows) >= 8
    assert all(float(row["memory_mb"]) <= 2.6 and float(row["latency_ms"]) <= 5000 for row in rows)
    assert (d / "out" / "best.pareto.png").stat().st_size > 1000
    # the winner's YAML is a SubTransformer config train.py accepts
    from hat.space import SearchSpace, SubConfig
    from hat.config import load_yaml
    from hat.fairseq_plugin.args import build_args

    cfg = SubConfig.from_hat_dict(load_yaml(str(out)))
    SearchSpace.from_dict(load_yaml(TINY)).validate(cfg)
    args = build_args([f"--configs={out}", f"--sub-configs={SUB_COMMON}", "--data", data])
    assert args.train_subtransformer and args.qkv_dim_subtransformer == cfg.qkv_dim
    assert float(rows[0]["valid_loss"]) == min(float(x["valid_loss"]) for x in rows)


@pytest.mark.slow
def test_infeasible_memory_budget_stops_before_reading_data(parts, tmp_path):
    d, data = parts
    r = run_script("evo_search.py", f"--configs={TINY}", f"--evo-configs={EVO}", "--data", data,
                   "--restore-file", str(tmp_path / "missing.pt"), "--ckpt-path", str(d / "pred.pt"),
                   "--write-config-path", str(tmp_path / "w.yml"), "--memory-constraint", "0.01")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: infeasible constraints") and "smallest the space allows" in line and "memory" in line
    assert not (tmp_path / "w.yml").exists()


def _winner(d, data, tag, lat, mem):
    from hat.config import load_yaml
    from hat.space import SubConfig

    out = d / tag / "best.yml"
    r = _search(d, data, "--write-config-path", str(out), "--latency-constraint", str(lat), "--memory-constraint",
                str(mem), "--measure-top", "30")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["key"]: row for row in csv.DictReader(open(d / tag / "best.candidates.csv"))}
    key = SubConfig.from_hat_dict(load_yaml(str(out))).key()
    return key, rows[key], rows


@pytest.mark.slow
def test_tightening_either_constraint_changes_the_winner_which_fits_both_when_measured(parts):
    """Real predictor, real memory model, re-measured winner: a tighter latency budget, and separately a tighter
    memory budget, each give another winner, and every winner's MEASURED latency and modelled memory fit."""
    d, data = parts
    w0, row0, rows0 = _winner(d, data, "loose", 1e6, 100)
    assert row0["measured_latency_source"] == "measured:cpu" and row0["fits_measured"] == "yes"
    lat0, mem0 = float(row0["latency_ms"]), float(row0["memory_mb"])  # what the search sees: predicted, modelled
    fastest = min(float(r["latency_ms"]) for r in rows0.values())
    assert fastest < lat0
    lat_cap = round((lat0 + fastest) / 2, 4)  # the loose winner is over it, the fastest candidate under it
    w1, row1, _ = _winner(d, data, "tight_latency", lat_cap, 100)
    assert w1 != w0
    assert float(row1["measured_latency_ms"]) <= lat_cap and float(row1["memory_mb"]) <= 100
    mem_cap = round(0.9 * mem0, 4)
    w2, row2, _ = _winner(d, data, "tight_memory", 1e6, mem_cap)
    assert w2 != w0
    assert float(row2["memory_mb"]) <= mem_cap and float(row2["measured_latency_ms"]) <= 1e6
    # every row says where its numbers come from
    assert {r["latency_source"] for r in rows0.values()} == {"predicted"}
    assert all(r["memory_source"].startswith("memory model") for r in rows0.values())


def test_measure_margin_makes_a_remeasured_candidate_fit_by_that_share_and_is_bounds_checked(tmp_path):
    """measure-margin: a candidate measured within the constraint by less than the margin does not fit (the search's
    candidates sit at the constraint; one that fits by less than the protocol's noise is over it when measured
    again); memory keeps its own constraint."""
    from argparse import Namespace

    from hat.stages.evo_search import _budget, measured_fits

    a = Namespace(latency_constraint=15.0, memory_constraint=9.0, measure_margin=0.0)
    assert measured_fits(14.9, 9.0, a) and measured_fits(15.0, 8.0, a) and not measured_fits(15.01, 8.0, a)
    a.measure_margin = 0.03  # 15 ms less 3 %: 14.55 ms
    assert measured_fits(14.54, 9.0, a) and not measured_fits(14.6, 9.0, a) and not measured_fits(14.0, 9.01, a)
    assert "less the 3% measure-margin: <= 14.550 ms" in _budget(a, margin=True) and "margin" not in _budget(a)
    a.latency_constraint = None
    assert measured_fits(1e9, 9.0, a)
    r = run_script("evo_search.py", f"--configs={TINY}", f"--evo-configs={EVO}", "--measure-margin", "0.7",
                   "--write-config-path", str(tmp_path / "w.yml"))
    assert r.returncode == 2 and "--measure-margin" in r.stderr and len(r.stderr.strip().splitlines()) == 1
