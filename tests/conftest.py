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
