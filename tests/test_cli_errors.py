"""Every user-facing script, run as a user runs it, with no arguments, with a YAML holding only an unknown key and
with an unknown flag: one line on stderr naming the problem, exit code 2, no traceback, nothing written."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# (how it is run, takes --configs, runs a real job when called with no arguments)
SCRIPTS = {
    "train.py": (["train.py"], True, False),
    "evo_search.py": (["evo_search.py"], True, False),
    "latency_dataset.py": (["latency_dataset.py"], True, False),
    "latency_predictor.py": (["latency_predictor.py"], True, False),
    "convert2onnx.py": (["convert2onnx.py"], True, False),
    "convert2rknn.py": (["convert2rknn.py"], True, False),
    "generate.py": (["generate.py"], True, False),
    "download_model.py": (["download_model.py"], False, False),
    "score.py": (["score.py"], False, False),
    "hat.demo": (["-m", "hat.demo"], False, True),
    "hat.paper_table": (["-m", "hat.paper_table"], False, True),
    "hat.checkpoint": (["-m", "hat.checkpoint"], False, False),
    "hat.download": (["-m", "hat.download"], False, False),
    "hat.data.prepare": (["-m", "hat.data.prepare"], False, False),
    "hat.data.corpus": (["-m", "hat.data.corpus"], False, False),
}


def _cases(tmp: Path):
    bogus = tmp / "bogus.yml"
    bogus.write_text("bogus-key: 1\n")
    out = []
    for name, (cmd, configs, no_args_is_a_job) in SCRIPTS.items():
        if not no_args_is_a_job:
            out.append((name, "no arguments", cmd, None))
        out.append((name, "unknown flag", cmd + ["--bogus-flag", "1"], "bogus-flag"))
        if configs:
            out.append((name, "YAML with only an unknown key", cmd + [f"--configs={bogus}"], "bogus-key"))
    return out


def _run(case, cwd: Path):
    name, what, cmd, needle = case
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    cmd = [PY] + [str(ROOT / c) if c.endswith(".py") else c for c in cmd]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return case, p


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    work = tmp / "work"  # an empty working directory: nothing may be written into it
    work.mkdir()
    with ThreadPoolExecutor(max_workers=2) as ex:
        out = list(ex.map(lambda c: _run(c, work), _cases(tmp)))
    return out, work


@pytest.mark.slow
def test_every_script_answers_bad_input_with_one_line_and_exit_2(results):
    out, work = results
    bad = []
    for (name, what, cmd, needle), p in out:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        ok = (p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
              and "Traceback" not in p.stderr and (needle is None or needle in lines[0]))
        if not ok:
            bad.append(f"{name} ({what}): exit {p.returncode}, stderr {p.stderr[-600:]!r}")
    assert not bad, "\n".join(bad)
    assert sorted(os.listdir(work)) == []


@pytest.mark.slow
def test_the_cases_cover_every_top_level_script():
    tops = {p.name for p in ROOT.glob("*.py") if p.name != "setup.py"}
    assert tops <= set(SCRIPTS)
