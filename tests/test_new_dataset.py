"""README "A new dataset", done literally: the embedded corpus' En-Fr side, a copy of configs/demo.de-en with its data
path changed, one SuperTransformer update through train.py."""
import os
import re
import shutil

import pytest

from conftest import ROOT, run_script

pytestmark = pytest.mark.slow


def test_new_language_pair(tmp_path):
    pytest.importorskip("fairseq")
    from hat.data.prepare import prepare

    data = prepare(pair="en-fr", dest=str(tmp_path / "data-bin" / "demo.en-fr"), vocab_size=2000, quiet=True)
    assert (data / "dict.en.txt").is_file() and (data / "dict.fr.txt").is_file()

    # 1. copy the demo task's configs, 2. point them at the new data (and their own checkpoint folder)
    cfg = tmp_path / "configs" / "demo.en-fr"
    shutil.copytree(os.path.join(ROOT, "configs", "demo.de-en"), cfg)
    for path in cfg.rglob("*.yml"):
        text = path.read_text()
        text = re.sub(r"(?m)^data: .*$", f"data: {data}", text)
        text = re.sub(r"(?m)^save-dir: .*$", f"save-dir: {tmp_path / 'checkpoints' / 'demo.en-fr'}", text)
        path.write_text(text)
    space = cfg / "supertransformer" / "space0.yml"
    assert f"data: {data}" in space.read_text()

    # 3. train: one update, tiny dims given as flags (every YAML key is a flag; flags win)
    tiny = ["--encoder-embed-dim", "64", "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
            "--decoder-ffn-embed-dim", "128", "--qkv-dim", "64",
            "--encoder-embed-choice", "64", "32", "--decoder-embed-choice", "64", "32",
            "--encoder-ffn-embed-dim-choice", "128", "64", "--decoder-ffn-embed-dim-choice", "128", "64",
            "--qkv-dim-choice", "64", "32"]
    r = run_script("train.py", f"--configs={space}", "--max-update", "1", "--max-tokens", "512",
                   "--log-interval", "1", "--seed", "3", "--disable-validation", *tiny, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    log = r.stdout + r.stderr
    assert "num_updates 1" in log or "num_updates=1" in log or "done training" in log, log[-2000:]
    assert (tmp_path / "checkpoints" / "demo.en-fr" / "checkpoint_last.pt").is_file()
