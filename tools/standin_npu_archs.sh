#!/usr/bin/env bash
# Stand-ins for the architecture files that only a search with RK3588 board measurements can produce:
#   configs/<task>/subtransformer/<task>_npu@200ms.yml        (evo_search/<task>_npu.yml, trained with common.yml)
#   configs/<task>/subtransformer/<task>_npu_test0@200ms.yml  (evo_search/<task>_npu_test0.yml: qkv 64, common64.yml)
# for the four paper tasks, made by the same chain as the RK3588 fork's README (latency_dataset.py ->
# latency_predictor.py -> evo_search.py) with what this machine has instead of what it lacks:
#   * latency: backend cpu (torch eager on this machine's CPU, one thread, pinned, 1 warm-up + 4 timed runs, the
#     sum of each call's fastest run) instead of the board; $N SubTransformers sampled from latency_dataset/npu.yml's
#     space (WMT's three tasks share one space), a stand-in vocabulary size (the tasks' dictionaries are not here).
#     On a machine shared with other jobs these timings are noisy: the header quotes the predictor's test metrics;
#   * fitness: validation loss with weights inherited from a SuperTransformer of the task's space trained for $UPDATES
#     updates on the embedded demo corpus (data-bin/demo.de-en, `make data`) instead of the task's WMT/IWSLT data;
#   * budget: latency <= the first quartile of the stand-in dataset's latencies [predicted, cpu] (the file names'
#     200 ms is the board budget; a CPU is another machine), memory <= the evo_search YAML's value [memory model].
# Each file gets a header that says all of this and how to make the real one on a board. Keeps the small stand-in
# datasets and predictors (latency_dataset/standin_*); SuperTransformers, search states and plots go to $WORK.
# A file there that is not a stand-in (a board search wrote it) is left as it is.
#   bash tools/standin_npu_archs.sh            (about 15 CPU-minutes on 2 cores)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${WORK:-/tmp/hat-standin}
N=${N:-28}               # stand-in latency dataset size per space
UPDATES=${UPDATES:-20}   # SuperTransformer updates on the demo corpus
DATA=data-bin/demo.de-en
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
mkdir -p "$WORK" latency_dataset
[ -f "$DATA/dict.en.txt" ] || { echo "error: $DATA not found: run make data first" >&2; exit 2; }
run() {  # run a command and keep it, verbatim, in $LOG for the headers
  echo "$*" >> "$LOG"
  "$@"
}

# ---- one stand-in chain per space: latency dataset, predictor, SuperTransformer ------------------------------------
standin() {  # NAME TASK SPACE VOCAB
  local name=$1 task=$2 space=$3 vocab=$4
  local csv=latency_dataset/standin_${name}_cpu.csv pt=latency_dataset/standin_${name}_cpu.pt
  local LOG="$WORK/$name.commands"
  : > "$LOG"
  run $PY latency_dataset.py --configs=configs/$task/latency_dataset/npu.yml --latency-backend cpu \
    --lat-vocab-size "$vocab" --lat-dataset-path "$csv" --lat-dataset-size "$N" --latiter 4 --lat-warmup 1 \
    --lat-threads 1 --lat-pin
  run $PY latency_predictor.py --configs=configs/$task/latency_predictor/npu.yml --lat-dataset-path "$csv" \
    --ckpt-path "$pt" | tee "$WORK/$name.predictor.log"
  local train=($PY train.py --configs=configs/$task/supertransformer/$space.yml --data $DATA
    --qkv-dim-choice 512 256 64 --max-update "$UPDATES" --update-freq 1 --max-tokens 512 --warmup-updates 5
    --save-dir "$WORK/$name" --no-epoch-checkpoints --disable-validation --no-save-optimizer-state --log-interval 5)
  if [ -f "$WORK/$name/checkpoint_last.pt" ]; then echo "${train[*]}" >> "$LOG"; else run "${train[@]}"; fi
}

quartile() {  # first quartile of a stand-in dataset's latencies (encoder + decoder), ms
  $PY - "$1" <<'EOF'
import csv, sys
import numpy as np
rows = list(csv.DictReader(open(sys.argv[1])))
print(round(float(np.percentile([float(r["latency_mean_encoder"]) + float(r["latency_mean_decoder"]) for r in rows], 25))))
EOF
}

search() {  # NAME TASK SHORT SPACE VOCAB VARIANT [SAME: the short name of a task whose search this one repeats]
  local name=$1 task=$2 short=$3 space=$4 vocab=$5 variant=$6 same=${7:-}
  local csv=latency_dataset/standin_${name}_cpu.csv pt=latency_dataset/standin_${name}_cpu.pt
  local out=configs/$task/subtransformer/${short}_${variant}@200ms.yml lat
  lat=$(quartile "$csv")
  local LOG="$WORK/$short.$variant.commands"
  local cmd=($PY evo_search.py --configs=configs/$task/supertransformer/$space.yml
    --evo-configs=configs/$task/evo_search/${short}_${variant}.yml
    --ckpt-path "$pt" --restore-file "$WORK/$name/checkpoint_last.pt" --data $DATA --lat-vocab-size "$vocab"
    --latency-constraint "$lat" --evo-iter 4 --population-size 16 --parent-size 4 --mutation-size 6
    --crossover-size 6 --valid-cnt-max 1 --max-tokens-valid 256 --latency-source predictor
    --write-config-path "$WORK/$short.$variant.yml"
    --candidates-path "$WORK/$short.$variant.candidates.csv" --plot-path "$WORK/$short.$variant.pareto.png"
    --state-path "$WORK/$short.$variant.search_state.json")
  : > "$LOG"
  if [ -n "$same" ]; then  # the same space, SuperTransformer, predictor, data and budget: the same computation
    echo "${cmd[*]}" >> "$LOG"
    cp "$WORK/$same.$variant.yml" "$WORK/$short.$variant.yml"
  else
    run "${cmd[@]}"
  fi
  $PY - "$WORK/$short.$variant.yml" "$out" "$task" "$short" "$variant" "$csv" "$pt" "$lat" "$vocab" \
    "$UPDATES" "$WORK/$name.commands" "$LOG" "$WORK/$name.predictor.log" "$same" <<'EOF'
import csv
import re
import sys
import textwrap

from hat.config import load_yaml
from hat.io import write_text
from hat.latency.protocol import Protocol

found, out, task, short, variant, csv_path, pt, lat, vocab, updates, log, search_log, pred_log, same = sys.argv[1:]
rows = list(csv.DictReader(open(csv_path)))
proto = Protocol.from_json(rows[0]["protocol"])
evo = load_yaml(f"configs/{task}/evo_search/{short}_{variant}.yml")
metrics = next((l.split() for l in open(pred_log) if l.startswith("| predicted:mlp")), None)
quality = (f"(on its test split: MRE {metrics[4]} %, {metrics[5]} % within +-10 %, Spearman {metrics[6]}, "
           f"predicted:mlp vs {metrics[2]})" if metrics else "")
qkv = " with the qkv dim fixed at 64" if variant.endswith("test0") else ""
chain = open(log).read().splitlines()
space_yml = re.search(r"--configs=(\S+)", chain[0]).group(1)  # the latency dataset's YAML (its space)
lines = [
    "STAND-IN, NOT AN RK3588 RESULT: re-run the chain on a board to replace this file (README, 'Paper tasks').",
    f"Made by tools/standin_npu_archs.sh with the chain of the RK3588 fork's README (latency_dataset.py -> "
    f"latency_predictor.py -> evo_search.py{qkv}), with a stand-in for each part this machine lacks:",
    f"latency: the cpu backend (torch eager on this machine's CPU, shared with other jobs) instead of the board, "
    f"source measured:{proto.backend}, protocol {proto.describe()}; {len(rows)} SubTransformers sampled from the "
    f"space of {space_yml} with vocabulary {vocab} (a stand-in: the task's dictionary is "
    f"not here) -> {csv_path}; predictor {pt} {quality}; the winner's latency is predicted, not re-measured (as on "
    f"the board route).",
    f"budget: latency <= {lat} ms [predicted, stand-in cpu predictor], the first quartile of that dataset's "
    f"latencies (the 200 ms of the file name is the board budget of evo_search/{short}_{variant}.yml; no figure in "
    f"this file is an NPU latency); memory <= {evo['memory-constraint']:g} MB at {evo['memory-precision']} "
    f"[memory model], as in that YAML.",
    f"fitness: validation loss with weights inherited from a SuperTransformer of this space trained for {updates} "
    f"updates on the embedded demo corpus (data-bin/demo.de-en: the task's data is not here), over 1 batch of 256 "
    f"tokens; a search of 4 x 16 candidates, not HAT's 30 x 125. The choice is a stand-in too.",
]
if same:
    lines.append(f"The search was run once, for {same}: this task's space, SuperTransformer, predictor, data and "
                 f"budget are the same, so its own command (last below, not run) computes the same.")
lines.append("commands (from the repository root):")
head = []
for l in lines[:-1]:
    head += textwrap.wrap(l, 116, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False,
                          break_long_words=False)
head.append("# " + lines[-1])
cmds = chain + open(search_log).read().splitlines()
head += ["#   " + re.sub(r"^\S*python3?\s", "python ", c) for c in cmds]
try:
    with open(out) as f:
        first = f.readline()
except FileNotFoundError:
    first = "# STAND-IN"
if not first.startswith("# STAND-IN"):
    print(f"| {out} is not a stand-in (a search on board measurements wrote it?): left as it is")
else:
    write_text(out, "\n".join(head) + "\n" + open(found).read())
    print(f"| wrote {out}")
EOF
}

SPACES=${SPACES:-"wmt iwslt"}
for s in $SPACES; do
  case $s in
    wmt) standin wmt wmt14.en-de space0 32768
         for v in npu npu_test0; do
           search wmt wmt14.en-de wmt14ende space0 32768 $v
           search wmt wmt14.en-fr wmt14enfr space0 32768 $v wmt14ende
           search wmt wmt19.en-de wmt19ende space0 32768 $v wmt14ende
         done ;;
    iwslt) standin iwslt iwslt14.de-en space1 8848
           for v in npu npu_test0; do search iwslt iwslt14.de-en iwslt14deen space1 8848 $v; done ;;
  esac
done
