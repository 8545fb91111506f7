import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def run_script(*args, timeout=600):
    """Run a top-level script of the repo as a user would; returns the CompletedProcess (never raises)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def demo_data():
    """The embedded De-En corpus prepared for fairseq (built once per machine, as `make data` does)."""
    pytest.importorskip("fairseq")
    from hat.data.prepare import prepare

    return str(prepare(pair="de-en", dest=os.path.join(ROOT, "data-bin", "demo.de-en"), vocab_size=8000, quiet=True))


TINY_SPACE = os.path.join(FIXTURES, "tiny_space.yml")


def train_tiny_super(data, save_dir, updates=3):
    """A tiny SuperTransformer trained by train.py for a few updates (tests/fixtures/tiny_space.yml)."""
    r = run_script("train.py", f"--configs={TINY_SPACE}", "--data", data, "--max-update", str(updates), "--save-dir",
                   str(save_dir), "--no-epoch-checkpoints")
    assert r.returncode == 0, r.stderr[-2000:]
    return os.path.join(str(save_dir), "checkpoint_last.pt")
