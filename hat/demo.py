"""The main job on the embedded demo task: data -> SuperTransformer -> SubTransformer -> BLEU.

    python -m hat.demo [--task-dir configs/demo.de-en] [--sub demo_small] [--retrain]

Each stage runs the same top-level script a user would run, and leaves a ``.done`` stamp next to its checkpoints,
so a rerun skips finished stages (an interrupted training resumes from fairseq's checkpoint_last.pt).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from hat.config import load_yaml
from hat.errors import HatError

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: List[str], what: str) -> str:
    print(f"\n==> {what}\n    {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: List[str] = []
    for line in proc.stdout:
        sys.stdout.write(line)
        tail = (tail + [line])[-50:]
    if proc.wait() != 0:
        raise HatError(f"{what} failed (exit {proc.returncode}); see the output above")
    return "".join(tail)


def _stage(save_dir: Path, cmd: List[str], what: str, retrain: bool) -> None:
    stamp = save_dir / ".done"
    if stamp.exists() and not retrain:
        print(f"\n==> {what}: done before ({stamp}), skipped", flush=True)
        return
    t0 = time.time()
    _run(cmd, what)
    save_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"command": cmd, "seconds": round(time.time() - t0, 1)}) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hat.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--task-dir", default="configs/demo.de-en")
    ap.add_argument("--space", default="space0", help="supertransformer/<space>.yml")
    ap.add_argument("--sub", default="demo_small", help="subtransformer/<sub>.yml")
    ap.add_argument("--retrain", action="store_true", help="train again even where a stage finished before")
    ap.add_argument("--vocab-size", type=int, default=8000)
    args = ap.parse_args(argv)
    py = sys.executable
    task = Path(args.task_dir)
    space_yml = task / "supertransformer" / f"{args.space}.yml"
    sub_yml = task / "subtransformer" / f"{args.sub}.yml"
    common_yml = task / "subtransformer" / "common.yml"
    for p in (space_yml, sub_yml, common_yml):
        if not (ROOT / p).is_file():
            raise HatError(f"config not found: {p}")
    data = load_yaml(str(ROOT / space_yml)).get("data", "data-bin/demo.de-en")
    pair = "de-en" if "de-en" in str(data) else "en-fr"

    from hat.data.prepare import prepare

    print("==> data: embedded corpus -> sentencepiece BPE -> fairseq binarized", flush=True)
    prepare(pair=pair, dest=ROOT / data, vocab_size=args.vocab_size)

    super_dir = ROOT / load_yaml(str(ROOT / space_yml)).get("save-dir", f"checkpoints/{task.name}/supertransformer")
    _stage(super_dir, [py, "train.py", f"--configs={space_yml}"], "SuperTransformer training", args.retrain)

    sub_dir = Path("checkpoints") / task.name / "subtransformer" / args.sub
    _stage(
        ROOT / sub_dir,
        [py, "train.py", f"--configs={sub_yml}", f"--sub-configs={common_yml}", "--save-dir", str(sub_dir)],
        f"SubTransformer {args.sub} training",
        args.retrain,
    )
    results = Path("results") / task.name
    out = _run(
        [py, "generate.py", f"--configs={sub_yml}", f"--sub-configs={common_yml}",
         "--path", str(sub_dir / "checkpoint_best.pt"), "--gen-subset", "test",
         "--results-path", str(results / f"{args.sub}.test.hyp")],
        f"BLEU of SubTransformer {args.sub} on the test split",
    )
    bleu = [line for line in out.splitlines() if line.startswith("BLEU")]
    print("\n==> summary")
    print(f"SuperTransformer checkpoints: {super_dir.relative_to(ROOT)}")
    print(f"SubTransformer {args.sub}: {sub_dir}/checkpoint_best.pt")
    print(bleu[-1] if bleu else "no BLEU line found")
    return 0


if __name__ == "__main__":
    from hat.cli import run

    run(main)
