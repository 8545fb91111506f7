"""python -m hat.paper_table: HAT's published columns are labelled published:HAT and hold HAT's figures; --predictor
fills predicted(ms) inside the predictor's search space (n/a with the reason outside it); --latency-csv fills
measured(ms) for the architectures the CSV holds; a bad file is one line and exit 2, with nothing printed before it."""
import os
import random
import re

import pytest

from hat import paper_table as T
from hat.config import load_yaml
from hat.latency.dataset import DatasetWriter, HAT_FEATURES, TARGET_COLUMNS
from hat.latency.protocol import LATENCY_COLUMNS, Protocol
from hat.space import SearchSpace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "iwslt14.de-en"  # five rows, the smallest table


def _latency(cfg):
    """A made-up latency (ms) that grows with the architecture's size, so the predictor has something to learn."""
    return {LATENCY_COLUMNS[0]: 1 + T.flops(cfg, 10) / 2e8, LATENCY_COLUMNS[1]: 2 + cfg.decoder_layer_num,
            LATENCY_COLUMNS[2]: 0.0, LATENCY_COLUMNS[3]: 0.0}


def _write(path, rows, backend, protocol):
    with DatasetWriter(str(path)) as w:
        for cfg, lat, source in rows:
            w.add(cfg, lat, {}, backend, source, protocol)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A predictor trained (briefly) on a space that holds every IWSLT row but one decoder depth, and a measured CSV
    holding one of the rows; backends named apart so that each column's label can be traced to its file."""
    from hat.predictor import TrainParams, read_dataset, train

    tmp = tmp_path_factory.mktemp("paper_table")
    archs = {os.path.basename(p)[:-4]: T.load_arch(p) for p in T.arch_files(TASK)}
    space = SearchSpace.from_dict(load_yaml(os.path.join(ROOT, "configs", TASK, "supertransformer", "space1.yml")))
    excluded = next(iter(archs.values())).decoder_layer_num
    choices = dict(space.choices, **{"decoder-layer-num-choice": [n for n in space.choices["decoder-layer-num-choice"]
                                                                  if n != excluded]})
    sub = SearchSpace(choices=choices, super_dims=dict(space.super_dims), source="test subspace")
    rng = random.Random(0)
    proto_a = Protocol(repeats=3).at("alpha", "1.0", machine="test machine")
    train_csv = _write(tmp / "alpha.csv", [(c, _latency(c), "measured:alpha") for c in
                                           (sub.sample(rng) for _ in range(14))], "alpha", proto_a)
    predictor, _ = train(read_dataset(train_csv, sub), sub,
                         TrainParams(train_steps=40, ensemble=2, hidden_dim=16, eval_every=20))
    ckpt = predictor.save(str(tmp / "alpha.pt"))
    measured_name = list(archs)[-1]
    proto_b = Protocol(repeats=3).at("beta", "2.0", machine="test machine")
    meas = {LATENCY_COLUMNS[0]: 3.0, LATENCY_COLUMNS[1]: 4.5, LATENCY_COLUMNS[2]: 0.1, LATENCY_COLUMNS[3]: 0.1}
    meas_csv = _write(tmp / "beta.csv", [(archs[measured_name], meas, "measured:beta"),
                                         (sub.sample(rng), _latency(sub.sample(rng)), "measured:beta")],
                      "beta", proto_b)
    return dict(tmp=tmp, archs=archs, excluded=excluded, predictor=predictor, ckpt=ckpt, csv=meas_csv,
                measured_name=measured_name, measured_ms=7.5, space=sub)


def _run(capsys, argv):
    from hat.stages.paper_table import main

    assert main(argv) == 0
    return capsys.readouterr().out


def _table(out):
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("name "))
    labels = re.findall(r"\[[^\]]*\]", lines[head + 1])
    body = {ln.split()[0]: ln.split() for ln in lines if ln.startswith("HAT_")}
    return labels, body, lines


def test_published_columns_are_labelled_and_hold_hats_figures(capsys):
    labels, body, lines = _table(_run(capsys, ["--task", TASK]))
    assert labels == ["[counted]", "[published:HAT]", "[analytic]", "[published:HAT]", "[published:HAT]",
                      "[published:HAT]", "[published:HAT]", "[no --predictor]", "[no --latency-csv]"]
    assert len(body) == 5
    for name, cells in body.items():
        pub, hn = T.PUBLISHED[name], T.parse_name(name)
        # the published:HAT columns (2, 4, 5, 6, 7) are HAT's README and name; ours (1, 3) are counted here
        assert cells[2] == f"{pub[0]:.2f}" and cells[4] == f"{pub[1]:.2f}"
        assert cells[5] == hn.latency and cells[6] == f"{hn.bleu:.1f}" and cells[7] == f"{pub[3]:.1f}"
        assert cells[8:] == ["n/a", "n/a"]
    assert any(ln.startswith("published:HAT = HAT's README") for ln in lines)


def test_markdown_header_carries_the_same_labels():
    table = T.rows(TASK)
    head, rule, *body = T.render(table, markdown=True, predicted_label="predicted:x").splitlines()
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert cells[5:9] == ["latency [published:HAT]", "BLEU [published:HAT]", "sacreBLEU [published:HAT]",
                          "predicted(ms) [predicted:x]"]
    assert len(body) == len(table) and all(b.count("|") == head.count("|") for b in body)


def test_predictor_and_latency_csv_fill_their_columns(setup, capsys):
    labels, body, lines = _table(_run(capsys, ["--task", TASK, "--predictor", setup["ckpt"],
                                               "--latency-csv", setup["csv"]]))
    assert labels[-2:] == ["[predicted:alpha]", "[measured:beta]"]
    inside = outside = 0
    for name, cells in body.items():
        cfg = setup["archs"][name]
        if cfg.decoder_layer_num == setup["excluded"]:
            outside += 1
            assert cells[8] == "n/a"
            note = next(ln for ln in lines if ln.startswith("predicted(ms) n/a") and name in ln)
            assert "outside the predictor's search space" in note and "decoder-layer-num" in note
        else:
            inside += 1
            assert cells[8] == f"{setup['predictor'].predict_config(cfg):.1f}"
        if name == setup["measured_name"]:
            assert cells[9] == f"{setup['measured_ms']:.1f}"
        else:
            assert cells[9] == "n/a"
            assert any(ln.startswith("measured(ms) n/a, not among the 2 rows") and name in ln for ln in lines)
    assert inside and outside
    assert any(ln.startswith("predicted:alpha = latency predictor") and "alpha 1.0 on test machine" in ln
               for ln in lines)
    assert any(ln.startswith("measured:beta = ") and "beta 2.0 on test machine" in ln for ln in lines)


def test_predictor_without_a_space_refuses_features_beyond_its_training_data(setup):
    from hat.predictor import TrainParams, read_dataset, train

    low = min(c.decoder_layer_num for c in setup["archs"].values())
    shallow = SearchSpace(choices=dict(setup["space"].choices, **{"decoder-layer-num-choice": [low]}),
                          super_dims=dict(setup["space"].super_dims), source="shallow decoders")
    rng = random.Random(1)
    seen = [shallow.sample(rng) for _ in range(12)]
    csv_path = _write(setup["tmp"] / "shallow.csv", [(c, _latency(c), "measured:alpha") for c in seen], "alpha",
                      Protocol(repeats=3).at("alpha", "1.0", machine="test machine"))
    pred, _ = train(read_dataset(csv_path), None, TrainParams(train_steps=20, ensemble=1, hidden_dim=8))  # no space
    col = T.PredictedLatency(pred.save(str(setup["tmp"] / "nospace.pt")))
    deep = next(c for c in setup["archs"].values() if c.decoder_layer_num > low)
    ms, why = col(deep)
    assert ms is None and why.startswith("beyond the predictor's training data") and "decoder_layer_num" in why
    ms, why = col(seen[0])
    assert why is None and ms == pytest.approx(pred.predict_config(seen[0]))
    assert "no search space recorded" in col.describe()


def _bad_files(tmp):
    garbage = tmp / "garbage.csv"
    garbage.write_bytes(b"\x00\xff\xfe\x80 not text" * 20)
    hat_csv = tmp / "hat_layout.csv"
    hat_csv.write_text(",".join(HAT_FEATURES + TARGET_COLUMNS) + "\n" + ",".join(["1"] * 12) + "\n")
    text = tmp / "not_a_checkpoint.pt"
    text.write_text("hello\n")
    return garbage, hat_csv, text


def _mixed(tmp, setup):
    cfgs = list(setup["archs"].values())
    proto = Protocol(repeats=3).at("beta", "2.0", machine="test machine")
    return _write(tmp / "mixed.csv", [(cfgs[0], _latency(cfgs[0]), "measured:beta"),
                                      (cfgs[1], _latency(cfgs[1]), "measured:gamma")], "beta", proto)


@pytest.mark.parametrize("case", ["predictor missing", "predictor not a checkpoint", "csv missing", "csv garbage",
                                  "csv of HAT's layout", "csv mixing sources", "csv as predictor"])
def test_bad_files_are_one_line_and_exit_2(case, setup, tmp_path, capsys):
    from hat.cli import run
    from hat.stages.paper_table import main

    garbage, hat_csv, text = _bad_files(tmp_path)
    argv, needle = {
        "predictor missing": (["--predictor", str(tmp_path / "nope.pt")], "not found"),
        "predictor not a checkpoint": (["--predictor", str(text)], "latency predictor"),
        "csv as predictor": (["--predictor", setup["csv"]], "latency predictor"),
        "csv missing": (["--latency-csv", str(tmp_path / "nope.csv")], "not found"),
        "csv garbage": (["--latency-csv", str(garbage)], "garbage.csv"),
        "csv of HAT's layout": (["--latency-csv", str(hat_csv)], "latency_dataset.py"),
        "csv mixing sources": (["--latency-csv", _mixed(tmp_path, setup)], "mixes"),
    }[case]
    with pytest.raises(SystemExit) as e:
        run(lambda: main(["--task", TASK] + argv))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_outside_a_checkout_the_missing_configs_are_one_line(tmp_path, monkeypatch, capsys):
    from hat.cli import run
    from hat.stages.paper_table import main

    monkeypatch.setattr(T, "ROOT", str(tmp_path))  # as installed from a wheel: no configs/ beside the package
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run(lambda: main([]))
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and "checkout" in err and len(err.strip().splitlines()) == 1
