"""Fault injection for evo_search.py (issue 15, items 3, 4 and 9): a resume with changed inputs, a torn state, an
evo-iter below the saved iteration, a SuperTransformer from another search space. Each is refused in one line
(``error: ...``, exit code 2) before anything is overwritten; a resumed search keeps every candidate evaluated before
the interruption. End to end on real parts: tiny SuperTransformers trained by train.py."""
import csv
import os
import shutil

import pytest

from conftest import FIXTURES, run_script, train_tiny_super

TINY = os.path.join(FIXTURES, "tiny_space.yml")
EVO = os.path.join(FIXTURES, "tiny_evo.yml")

# another search space (wider embed, 3 encoder layers), as a SuperTransformer trained elsewhere would have
OTHER_SPACE = {"encoder-embed-dim": 96, "decoder-embed-dim": 96, "encoder-layers": 3,
               "encoder-embed-choice": [96, 48], "decoder-embed-choice": [96, 48], "encoder-layer-num-choice": [3, 2]}

pytestmark = pytest.mark.slow


def _yaml(path, base, drop=(), **over):
    from hat.config import load_yaml

    import yaml

    d = {k: v for k, v in load_yaml(base).items() if k not in drop}
    d.update(over)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def parts(demo_data, tmp_path_factory):
    """Two SuperTransformers of the tiny space (different weights), one of another space, and an evo YAML with the
    memory constraint only (no latency predictor is needed for these faults)."""
    d = tmp_path_factory.mktemp("faults_search")
    a = train_tiny_super(demo_data, d / "a", updates=2)
    b = train_tiny_super(demo_data, d / "b", updates=3)
    other_yaml = _yaml(d / "other_space.yml", TINY, **OTHER_SPACE)
    r = run_script("train.py", f"--configs={other_yaml}", "--data", demo_data, "--max-update", "2", "--save-dir",
                   str(d / "other"), "--no-epoch-checkpoints")
    assert r.returncode == 0, r.stderr[-2000:]
    evo = _yaml(d / "evo.yml", EVO, drop=("latency-constraint",), **{"latency-source": "predictor"})
    return {"dir": d, "data": demo_data, "a": a, "b": b, "other": str(d / "other" / "checkpoint_last.pt"),
            "other_yaml": other_yaml, "evo": evo}


def _search(p, out, *extra, restore=None, space=TINY):
    return run_script("evo_search.py", f"--configs={space}", f"--evo-configs={p['evo']}", "--data", p["data"],
                      "--restore-file", restore or p["a"], "--write-config-path", str(out), *extra)


def _outputs(out):
    """Every file the search writes next to the winner's YAML, with its bytes."""
    return {f: open(os.path.join(out.parent, f), "rb").read() for f in sorted(os.listdir(out.parent))}


def _refused(r, *says):
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.stderr.strip() == errors[0], r.stderr[-3000:]  # nothing else: no warning, no log line
    for s in says:
        assert s in errors[0], errors[0]
    return errors[0]


def test_resume_with_changed_inputs_torn_state_or_lower_evo_iter_is_refused_and_nothing_overwritten(parts, tmp_path):
    out = tmp_path / "run" / "best.yml"
    r = _search(parts, out)
    assert r.returncode == 0, r.stderr[-3000:]
    state = out.parent / "best.search_state.json"
    before = _outputs(out)
    assert set(before) == {"best.yml", "best.candidates.csv", "best.pareto.png", "best.search_state.json"}

    # another SuperTransformer of the same space: its losses must not be mixed with the saved ones
    line = _refused(_search(parts, out, restore=parts["b"]), f"{state} belongs to a search with other settings",
                    f"restore-file {os.path.abspath(parts['a'])} (sha256 ", f"-> {os.path.abspath(parts['b'])}",
                    "delete it", "state-path")
    assert _outputs(out) == before, line
    _refused(_search(parts, out, "--valid-cnt-max", "1"), "valid-cnt-max 2 -> 1")
    assert _outputs(out) == before
    # evo-iter lowered below the saved iteration ("resuming the search at iteration 3 of 1")
    _refused(_search(parts, out, "--evo-iter", "1"), "already at iteration 2, past evo-iter 1", "pass evo-iter 2")
    assert _outputs(out) == before

    # the same SuperTransformer copied elsewhere: the same content, the search is taken as it is
    moved = tmp_path / "moved.pt"
    shutil.copy(parts["a"], moved)
    r = _search(parts, out, restore=str(moved))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is complete (2 of 2 iterations)" in r.stdout and "resuming" not in r.stdout
    assert _outputs(out)["best.yml"] == before["best.yml"]
    assert _outputs(out)["best.candidates.csv"] == before["best.candidates.csv"]

    # a state cut short (a kill during a copy, a full disk elsewhere): one line, the state left for the user
    torn = before["best.search_state.json"][: len(before["best.search_state.json"]) // 2]
    state.write_bytes(torn)
    _refused(_search(parts, out), f"{state}: not a readable search state", "cut short or damaged", "delete it")
    assert state.read_bytes() == torn and _outputs(out)["best.yml"] == before["best.yml"]


def test_resumed_search_outputs_hold_every_candidate(parts, tmp_path):
    """Interrupted after 1 of 2 iterations and resumed: the candidates CSV is the uninterrupted run's."""
    out = tmp_path / "resumed" / "best.yml"
    r = _search(parts, out, "--evo-iter", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    first = {row["key"] for row in csv.DictReader(open(out.parent / "best.candidates.csv"))}
    r = _search(parts, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming the search at iteration 2 of 2" in r.stdout, r.stdout[-2000:]
    full = tmp_path / "full" / "best.yml"
    assert _search(parts, full).returncode == 0
    resumed_rows = list(csv.DictReader(open(out.parent / "best.candidates.csv")))
    full_rows = list(csv.DictReader(open(full.parent / "best.candidates.csv")))
    assert first <= {row["key"] for row in resumed_rows}
    assert resumed_rows == full_rows
    assert out.read_text() == full.read_text()


def test_supertransformer_of_another_space_is_refused_both_ways(parts, tmp_path):
    # a SuperTransformer wider than the YAML's space: it never trained the YAML's embed dims / layer counts
    out = tmp_path / "wide" / "best.yml"
    line = _refused(_search(parts, out, restore=parts["other"]),
                    f"{parts['other']} was trained on another search space",
                    "encoder-embed-choice [32, 64] not in its [48, 96]", "decoder-embed-choice [32, 64] not in its")
    assert "encoder-layer-num-choice" not in line  # 2 encoder layers were trained there
    assert not out.exists() and not (out.parent / "best.search_state.json").exists()
    # the YAML's space wider than the SuperTransformer (was a ValueError traceback)
    out = tmp_path / "narrow" / "best.yml"
    _refused(_search(parts, out, space=parts["other_yaml"]), f"{parts['a']} was trained on another search space",
             "encoder-layer-num-choice [3] not in its [2]")
    assert not out.exists() and not (out.parent / "best.search_state.json").exists()
