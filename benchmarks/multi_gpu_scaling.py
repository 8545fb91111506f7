#!/usr/bin/env python
"""SuperTransformer training on 1 GPU and on N GPUs (fairseq distributed, NCCL), measured in one run.

Runs train.py twice with the same config and per-GPU batch: once on one GPU, once with --distributed-world-size N
(fairseq spawns one process per GPU). Prints words/s of each, the N-GPU/1-GPU ratio, and checks from the per-rank
sample log (HAT_LOG_SAMPLES=1) that every rank trained the same SubTransformer at every update.

    python benchmarks/multi_gpu_scaling.py --configs=configs/demo.de-en/supertransformer/space0.yml --gpus 2
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(configs, gpus, updates, extra, log_path):
    env = dict(os.environ, HAT_LOG_SAMPLES="1", PYTHONUNBUFFERED="1")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    save = tempfile.mkdtemp(prefix=f"hat-{gpus}gpu-")
    cmd = [sys.executable, "train.py", f"--configs={configs}", "--max-update", str(updates), "--log-format", "json",
           "--log-interval", "10", "--save-dir", save, "--no-save", "--disable-validation",
           "--distributed-world-size", str(gpus), "--ddp-backend", "legacy_ddp"] + extra
    with open(log_path, "w") as log:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    text = open(log_path).read()
    if r.returncode != 0:
        sys.exit(f"{gpus}-GPU run failed (exit {r.returncode}), see {log_path}:\n{text[-3000:]}")
    wps = []
    for line in text.splitlines():
        if "train_inner" in line and "{" in line:
            row = json.loads(line[line.index("{"):])
            if int(row["num_updates"]) > updates // 4:  # skip start-up
                wps.append(float(row["wps"]))
    samples = collections.defaultdict(dict)
    for m in re.finditer(r"hat-sample rank=(\d+) update=(\d+) config=(\w+)", text):
        samples[int(m.group(2))][int(m.group(1))] = m.group(3)
    return sum(wps) / max(len(wps), 1), samples


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="configs/demo.de-en/supertransformer/space0.yml")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--out", default=".")
    ap.add_argument("extra", nargs="*", help="more train.py flags (e.g. --fp16)")
    a = ap.parse_args()
    one, s1 = run(a.configs, 1, a.updates, a.extra, os.path.join(a.out, "train_1gpu.log"))
    many, sn = run(a.configs, a.gpus, a.updates, a.extra, os.path.join(a.out, f"train_{a.gpus}gpu.log"))
    agree = all(len(set(r.values())) == 1 and len(r) == a.gpus for r in sn.values())
    same_as_1gpu = all(sn[u].get(0) == s1[u].get(0) for u in sn if u in s1)
    print(f"1 GPU: {one:,.0f} words/s; {a.gpus} GPUs: {many:,.0f} words/s; ratio {many / one:.2f} "
          f"[measured:cuda, fairseq train_inner wps, {a.updates} updates, extra {' '.join(a.extra) or '-'}]")
    print(f"every rank sampled the same SubTransformer at each of {len(sn)} updates: {agree}; "
          f"same sequence as the 1-GPU run: {same_as_1gpu}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
