"""The main job's pieces and the whole chain (python -m hat.demo) on a tiny task built from the real demo corpus:
checkpoint stripping, SubTransformer training from inherited SuperTransformer weights, and the pipeline end to end
(SuperTransformer -> onnxruntime latency dataset -> predictor -> search -> both SubTransformers -> export -> latency
-> BLEU -> table and plots), rerun skipping every finished stage."""
import json
import os

import pytest
import torch
import yaml

from conftest import FIXTURES, TINY_SPACE as TINY, run_script, train_tiny_super

TINY_SUB = os.path.join(FIXTURES, "tiny_sub.yml")
TINY_COMMON = os.path.join(FIXTURES, "tiny_common.yml")


@pytest.fixture(scope="module")
def tiny_super(demo_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    return d, demo_data, train_tiny_super(demo_data, d / "super", updates=4)


def test_strip_keeps_weights_and_config_and_loads_in_fairseq(tiny_super, tmp_path):
    from hat.checkpoint import load_model
    from hat.fairseq_plugin.checkpoint import load_checkpoint, strip_checkpoint

    d, data, full = tiny_super
    out = str(tmp_path / "s.pt")
    n = strip_checkpoint(full, out, torch.float16)
    assert n == os.path.getsize(out) and n < os.path.getsize(full) / 2  # no optimizer state, half-size weights
    a, b = load_model(full), load_model(out)
    assert a.space.fingerprint() == b.space.fingerprint() and a.model.config == b.model.config
    for (k, x), (k2, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and y.dtype == torch.float32
        torch.testing.assert_close(x, y, atol=2e-3, rtol=2e-3)
    model, _task, _cfg = load_checkpoint(out, data)  # fairseq's own loader (generate.py, evo_search.py)
    assert hasattr(model, "set_sample_config")
    saved = torch.load(out, weights_only=False)
    tied = [v for k, v in saved["model"].items() if k.endswith("embed_tokens.weight")]
    assert len(tied) == 2 and tied[0].data_ptr() == tied[1].data_ptr()  # tied embeddings stored once


def test_strip_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run_script("-m", "hat.checkpoint", "strip", str(bad), str(tmp_path / "out.pt"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: cannot load checkpoint") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def _train_sub(d, data, save, *extra):
    return run_script("train.py", f"--configs={TINY_SUB}", f"--sub-configs={TINY_COMMON}", "--data", data,
                      "--save-dir", str(save), "--max-update", "1", "--lr", "1e-12", "--warmup-updates", "1",
                      "--warmup-init-lr", "1e-12", "--no-epoch-checkpoints", "--disable-validation", *extra)


def test_inherit_from_starts_the_subtransformer_at_the_supertransformers_slices(tiny_super, tmp_path):
    from hat.checkpoint import load_model

    d, data, full = tiny_super
    r = _train_sub(d, data, tmp_path / "inh", "--inherit-from", full)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _train_sub(d, data, tmp_path / "own")
    assert r.returncode == 0, r.stderr[-2000:]
    inh = load_model(str(tmp_path / "inh" / "checkpoint_last.pt"))
    own = load_model(str(tmp_path / "own" / "checkpoint_last.pt"))
    want = load_model(full).model.extract(inh.sub_config).state_dict()
    got = inh.model.state_dict()
    assert got.keys() == want.keys()
    for k in want:  # one update at lr 1e-12 moves nothing measurable
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)
    assert any(not torch.allclose(own.model.state_dict()[k], want[k]) for k in want)  # a random init differs


def test_inherit_from_a_bad_checkpoint_is_one_line_before_anything_is_written(tiny_super, tmp_path):
    d, data, _ = tiny_super
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    r = _train_sub(d, data, tmp_path / "x", "--inherit-from", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot load checkpoint")
    assert not (tmp_path / "x").exists()


def _tiny_task(root, data, super_ckpt_dir):
    """A task directory laid out as configs/demo.de-en, with the tiny space and tiny shapes."""
    t = root / "tiny.de-en"
    for sub in ("supertransformer", "subtransformer", "latency_dataset", "latency_predictor", "evo_search",
                "convert_onnx"):
        (t / sub).mkdir(parents=True)
    space = yaml.safe_load(open(TINY))
    space.update({"data": data, "save-dir": str(super_ckpt_dir), "max-update": 4})
    yaml.safe_dump(space, open(t / "supertransformer" / "space0.yml", "w"))
    common = yaml.safe_load(open(TINY_COMMON))
    common.update({"data": data, "max-len-b": 8})
    yaml.safe_dump(common, open(t / "subtransformer" / "common.yml", "w"))
    base = {k: v for k, v in yaml.safe_load(open(TINY_SUB)).items()}
    base.update({"encoder-embed-dim-subtransformer": 64, "decoder-embed-dim-subtransformer": 64,
                 "decoder-layer-num-subtransformer": 2, "decoder-ffn-embed-dim-all-subtransformer": [128, 128],
                 "decoder-self-attention-heads-all-subtransformer": [4, 4],
                 "decoder-ende-attention-heads-all-subtransformer": [4, 4],
                 "decoder-arbitrary-ende-attn-all-subtransformer": [-1, -1], "qkv-dim-subtransformer": 64})
    yaml.safe_dump(base, open(t / "subtransformer" / "baseline.yml", "w"))
    lat = {k: v for k, v in space.items() if k not in ("save-dir", "max-update")}
    lat.update({"latency-backend": "onnxruntime", "lat-dataset-size": 12, "latiter": 2, "lat-warmup": 0,
                "latsilent": True, "lat-src-len": 6, "lat-tgt-len": 4, "lat-threads": 1})  # beam: the space's
    yaml.safe_dump(lat, open(t / "latency_dataset" / "onnxruntime.yml", "w"))
    yaml.safe_dump({"space-configs": str(t / "latency_dataset" / "onnxruntime.yml"), "train-steps": 100,
                    "ensemble": 1, "hidden-dim": 16, "seed": 1},
                   open(t / "latency_predictor" / "onnxruntime.yml", "w"))
    evo = yaml.safe_load(open(os.path.join(FIXTURES, "tiny_evo.yml")))
    evo.update({"latency-constraint": None, "memory-constraint": None})
    evo = {k: v for k, v in evo.items() if v is not None}
    yaml.safe_dump(evo, open(t / "evo_search" / "demo_onnxruntime.yml", "w"))
    yaml.safe_dump({"batch-size": 1, "src-len": 8, "tgt-len": 8, "beam": 2, "lenpen": 0.6, "opset": 17,
                    "target-platform": "rk3588", "precision": "fp16", "data": data, "calib-split": "valid",
                    "calib-size": 2}, open(t / "convert_onnx" / "common.yml", "w"))
    return t


@pytest.mark.slow
def test_demo_pipeline_end_to_end_then_rerun_skips_every_stage(demo_data, tmp_path):
    task = _tiny_task(tmp_path, demo_data, tmp_path / "ckpt" / "super")
    res = tmp_path / "results"
    args = ["-m", "hat.demo", "--task-dir", str(task), "--results", str(res), "--retrain-super",
            "--checkpoints", str(tmp_path / "ckpt"), "--speedup", "1.2",
            "--measure-rounds", "2",
            "--stage-args", "search=--evo-iter 2 --population-size 6 --parent-size 2 --mutation-size 2 "
                            "--crossover-size 2 --valid-cnt-max 1",
            "--stage-args", "sub=--max-update 2 --save-interval-updates 2 --validate-interval-updates 2"]
    r = run_script(*args, timeout=1200)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    table = json.loads((res / "table.json").read_text())
    rows = {row["model"]: row for row in table["rows"]}
    assert set(rows) == {"searched", "baseline"}
    for row in rows.values():
        assert row["latency_source"] == "measured:onnxruntime" and row["latency_ms"] > 0 and row["params_M"] > 0
        assert 0 <= row["bleu"] <= 100
    rounds = table["rounds_ms"]
    assert len(rounds["searched"]) == len(rounds["baseline"]) == 2
    paired = sorted(b / s for b, s in zip(rounds["baseline"], rounds["searched"]))
    assert table["speedup"] == pytest.approx(sum(paired) / 2)  # median of the per-round ratios
    assert rows["searched"]["latency_ms"] == pytest.approx(sum(rounds["searched"]) / 2)
    # the search respected the budget the baseline set
    assert rows["searched"]["predicted_ms"] <= table["budget"]["latency_constraint"] + 1e-6
    assert rows["searched"]["memory_mb_fp16"] <= table["budget"]["memory_constraint"] + 1e-3
    md = (res / "table.md").read_text()
    assert "[measured:onnxruntime]" in md and "[predicted]" in md and "[memory model (exported graphs" in md
    assert "BLEU" in md and "budget check of the searched model: latency" in md
    # the budget check is measured, and says pass or FAIL
    check = next(line for line in md.splitlines() if line.startswith("budget check"))
    assert check.count(": pass") + check.count(": FAIL") == 2
    for png in ("latency_vs_bleu.png", "latency_predictor_scatter.png", "searched.pareto.png"):
        assert (res / png).stat().st_size > 1000, png
    assert "==> result" in r.stdout
    r2 = run_script(*args, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    skipped = r2.stdout.count("skipped")
    assert skipped >= 10, r2.stdout[-3000:]  # every stage with a stamp
    assert "==> evolutionary search\n" not in r2.stdout and "==> result" in r2.stdout


def test_demo_rejects_bad_stage_args(tmp_path):
    r = run_script("-m", "hat.demo", "--results", str(tmp_path / "r"), "--stage-args", "nosuch=--x 1")
    assert r.returncode == 2 and "error: --stage-args" in r.stderr
    assert not (tmp_path / "r").exists()


def test_child_output_keeps_progress_redraws_apart_from_lines():
    import subprocess
    import sys

    from hat.pipeline.runner import segments

    code = ("import sys\nfor i in range(3):\n    sys.stdout.write(f'bar {i}%\\r'); sys.stdout.flush()\n"
            "print('INFO:fairseq.trainer: noise'); print('| kept ü')\nsys.stdout.write('tail')")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    got = list(segments(p.stdout))
    p.wait()
    assert got == [("bar 0%", "\r"), ("bar 1%", "\r"), ("bar 2%", "\r"), ("INFO:fairseq.trainer: noise", "\n"),
                   ("| kept ü", "\n"), ("tail", "\n")]
