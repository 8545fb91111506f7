#!/bin/bash
# Issue 14 item 4 on one H200, in one call (benchmarks/README.md, "SuperTransformer vs dense training throughput"):
#  1. bench: benchmarks/supernet_throughput.py on the WMT'14 En-De space at 4,096 target tokens, bf16 autocast, fused
#     Adam on every side: SuperTransformer (sampled) vs the dense model of the same shape, eager and torch.compile'd,
#     and the SuperTransformer of an earlier commit (build/supernet_before, when carried) on the same weights;
#  2. e2e: fairseq end to end, one GPU, --max-tokens 4096, --fp16, a fixed number of updates each: train.py on the
#     wmt14.en-de SuperTransformer config (one SubTransformer sampled per update) vs fairseq-train --arch transformer
#     at the SuperTransformer's shape, on synthetic data with a 32k joined vocabulary (made here when not carried);
#     fairseq's logged words/s side by side;
#  3. the benchmark on the demo space (eager); 4. the compiled dense model, for as many configs as time allows.
# Run from the repository root; writes 7 files to $OUT (run.log, bench_*.json, e2e.json, e2e_{supernet,dense}.log).
#   bash tools/device/supernet_throughput.sh [all|PART,PART,...] [UPDATES]   (parts: probe wmt demo e2e compiled data)
# Carry .whl (fairseq's built wheel and its needs, or its sdists), and to save device time data-bin/synth32k.en-de and
# build/supernet_before
# (made here by `bash tools/device/supernet_throughput.sh data` and
# `git archive COMMIT hat/modules hat/models | tar -x -C build/supernet_before`).
set -uo pipefail
MODE=${1:-all}
UPDATES=${2:-160}
OUT=${OUT:-/tmp/hat-out}; mkdir -p "$OUT"
DATA=${DATA:-data-bin/synth32k.en-de}
BEFORE=${BEFORE:-build/supernet_before}
BUDGET=${BUDGET:-320}  # seconds for the whole script; later parts are skipped past it
T0=$(date +%s)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1
unset CUDA_HOME
left() { echo $((BUDGET - ($(date +%s) - T0))); }
filt() { grep --line-buffered -v -e "Warning" -e "^  " -e "deprecat" -e "^See https" -e "^DEBUG"; }

fairseq_fast() {  # fairseq importable in seconds: a wheel built earlier (tools/device/setup_fairseq.sh leaves one), or
  # the sdist's Python tree plus the one Cython module that translation training needs
  [ -z "${FAIRSEQ_FROM_SDIST:-}" ] && python3 -c "import fairseq" 2>/dev/null && return 0
  local src=/tmp/fairseq_src
  mkdir -p "$src" /tmp/site
  if [ -z "${FAIRSEQ_FROM_SDIST:-}" ] && ls .whl/fairseq_fixed-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    python3 -c "import fairseq, torch; print('fairseq', fairseq.__version__, 'torch', torch.__version__)"
    return
  fi
  tar xzf .whl/fairseq_fixed-*.tar.gz -C "$src" --strip-components=1 || return 1
  tar xzf .whl/antlr4-python3-runtime-*.tar.gz -C /tmp && cp -r /tmp/antlr4-python3-runtime-*/src/antlr4 /tmp/site/ \
    || return 1
  # shellcheck disable=SC2046
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    $(ls .whl/*.whl | grep -v -e fairseq_fixed -e antlr4) || return 1
  (cd "$src" && python3 - <<'EOF'
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ext = Extension("fairseq.data.data_utils_fast", ["fairseq/data/data_utils_fast.pyx"], language="c++",
                include_dirs=[numpy.get_include()], extra_compile_args=["-std=c++11", "-O2"])
setup(name="fairseq_data_utils_fast", ext_modules=cythonize([ext], quiet=True),
      script_args=["build_ext", "--inplace", "-q"])
EOF
  ) >/dev/null || return 1
  export PYTHONPATH=/tmp/site:$src:$PWD${PYTHONPATH:+:$PYTHONPATH}
  python3 -c "import fairseq, torch; print('fairseq', fairseq.__version__, 'torch', torch.__version__)"
}

make_data() {  # synthetic parallel corpus: Zipf tokens over a 32k vocabulary, WMT-like sentence lengths
  [ -f "$DATA/dict.en.txt" ] && return 0
  local raw=/tmp/synth_raw
  mkdir -p "$raw"
  python3 - "$raw" <<'EOF'
import sys
import numpy as np

out, rng, types = sys.argv[1], np.random.default_rng(1), 32760
p = 1.0 / (np.arange(types) + 10.0)
p /= p.sum()
for split, n in (("train", 40000), ("valid", 500)):
    src_len = np.clip(np.rint(rng.lognormal(np.log(25), 0.55, n)), 2, 250).astype(int)
    tgt_len = np.clip(np.rint(src_len * rng.uniform(0.9, 1.25, n)), 2, 250).astype(int)
    for lang, lens in (("en", src_len), ("de", tgt_len)):
        ids = rng.choice(types, size=int(lens.sum()), p=p)
        with open(f"{out}/{split}.{lang}", "w") as f:
            pos = 0
            for k in lens:
                f.write(" ".join(f"w{i}" for i in ids[pos:pos + k]) + "\n")
                pos += k
EOF
  python3 -m fairseq_cli.preprocess --source-lang en --target-lang de --trainpref "$raw/train" \
    --validpref "$raw/valid" --destdir "$DATA" --joined-dictionary --workers 8 2>&1 | filt | tail -3
}

bench() {  # bench NAME SPACE VOCAB TIMEOUT ROUNDS [FLAGS...]: one run of the benchmark, figures in $OUT/NAME.json
  local name=$1 space=$2 vocab=$3 limit=$4 rounds=$5
  shift 5
  echo "== benchmark $name (limit ${limit} s)"
  # BENCH_FLAGS: extra flags, e.g. --no-cudnn-sdpa (the dense model off cuDNN attention too)
  # shellcheck disable=SC2086
  timeout "$limit" python3 benchmarks/supernet_throughput.py --space "$space" --device "${DEVICE:-cuda}" --bf16 \
    --vocab "$vocab" --tokens "${TOKENS:-4096}" --configs 4 --rounds "$rounds" --steps 10 --json "$OUT/$name.json" \
    ${BENCH_FLAGS:-} "$@" 2>&1 | grep -v "warnings.warn"
}

e2e() {
  fairseq_fast || { echo "fairseq setup failed"; return 1; }
  make_data || { echo "data failed"; return 1; }
  # shellcheck disable=SC2206
  local common=(--max-tokens "${MAX_TOKENS:-4096}" --update-freq 1 --max-update "$UPDATES" ${FP16---fp16} --no-save
                --disable-validation --log-interval "${LOG_INTERVAL:-20}" --log-format simple --seed 1 --num-workers 1)
  echo "== train.py SuperTransformer (wmt14.en-de space0, sampling on)"
  timeout "${E2E_LIMIT:-120}" python3 train.py --configs=configs/wmt14.en-de/supertransformer/space0.yml \
    --data "$DATA" --save-dir /tmp/ck_super "${common[@]}" 2>&1 | filt > "$OUT/e2e_supernet.log"
  tail -4 "$OUT/e2e_supernet.log"
  echo "== fairseq-train --arch transformer (640/3072, 6+6 layers, 8 heads, shared embeddings)," \
    "cuDNN SDPA ${DENSE_CUDNN_SDPA:-0}"
  # DENSE_CUDNN_SDPA=0 (default): the dense run without SDPA's cuDNN backend too, as hat.modules.elastic.attention
  timeout "${E2E_LIMIT:-120}" python3 -c "import sys, torch
torch.backends.cuda.enable_cudnn_sdp(${DENSE_CUDNN_SDPA:-0} == 1)
from fairseq_cli.train import cli_main; sys.argv[0] = 'fairseq-train'; cli_main()" \
    "$DATA" --task translation --arch transformer --share-all-embeddings \
    --encoder-embed-dim 640 --decoder-embed-dim 640 --encoder-ffn-embed-dim 3072 --decoder-ffn-embed-dim 3072 \
    --encoder-layers 6 --decoder-layers 6 --encoder-attention-heads 8 --decoder-attention-heads 8 \
    --dropout 0.3 --attention-dropout 0.1 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --optimizer adam --adam-betas "(0.9, 0.98)" --clip-norm 0.0 --weight-decay 0.0 --lr 0.001 \
    --lr-scheduler inverse_sqrt --warmup-updates 10000 --warmup-init-lr 1e-7 --ddp-backend legacy_ddp \
    --save-dir /tmp/ck_dense "${common[@]}" 2>&1 | filt > "$OUT/e2e_dense.log"
  tail -4 "$OUT/e2e_dense.log"
  python3 - "$OUT" <<'EOF'
import json, re, statistics, sys

out, res = sys.argv[1], {}
for name in ("supernet", "dense"):
    text = open(f"{out}/e2e_{name}.log").read()
    inner = [float(a or b) for a, b in re.findall(
        r"\| train_inner \|.*?wps=([\d.]+)|epoch \d+:\s+\d+ / \d+ .*?wps=([\d.]+)", text)]
    epoch = [float(a or b) for a, b in re.findall(r"\| train \|.*?wps[= ]([\d.]+)|epoch \d+ \|.*?wps ([\d.]+)", text)]
    res[name] = {"train_inner_wps": inner, "wps_median_after_first": statistics.median(inner[1:]) if len(inner) > 1
                 else None, "epoch_wps": epoch,
                 "num_updates": (re.findall(r"num_updates=(\d+)", text) or [None])[-1]}
for name, r in res.items():
    print(f"{name}: wps (median of train_inner logs after the first) {r['wps_median_after_first']}, "
          f"per log {r['train_inner_wps']}, epoch summary {r['epoch_wps']}, updates {r['num_updates']}")
s, d = res["supernet"]["wps_median_after_first"], res["dense"]["wps_median_after_first"]
if s and d:
    print(f"train.py supernet / fairseq-train transformer words/s: {s / d:.3f}")
json.dump(res, open(f"{out}/e2e.json", "w"), indent=1)
EOF
}

probe() {  # which SDPA backend this torch picks for the model's calls, and what a new problem shape costs
  python3 - <<'EOF'
import time

import torch
import torch.nn.functional as F

print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), "cudnn sdp on",
      torch.backends.cuda.cudnn_sdp_enabled(), torch.cuda.get_device_name())
names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def qkv(t, s, dtype, grad=False, b=128, h=8, d=64):
    mk = lambda n: torch.randn(b, h, n, d, device="cuda", dtype=dtype, requires_grad=grad)
    return mk(t), mk(s), mk(s), torch.zeros(b, 1, 1, s, device="cuda", dtype=dtype)


for dtype in (torch.bfloat16, torch.float16):
    q, k, v, m = qkv(30, 28, dtype)
    print(dtype, "masked:", names.get(torch._fused_sdp_choice(q, k, v, m), "?"), "causal:",
          names.get(torch._fused_sdp_choice(q, q, q, None, 0.0, True), "?"))


def per_call(lengths, cudnn, dtype=torch.float16):
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    times = []
    for n in lengths:
        q, k, v, m = qkv(n, n + 3, dtype, grad=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, attn_mask=m).sum().backward()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    torch.backends.cuda.enable_cudnn_sdp(True)
    return sum(times[1:]) / (len(times) - 1)


per_call([8, 8], False)
for cudnn in (True, False):
    new = per_call(range(20 + 40 * cudnn, 32 + 40 * cudnn), cudnn)
    same = per_call([50] * 12, cudnn)
    print(f"fp16 masked attention fwd+bwd, cuDNN SDPA {'on' if cudnn else 'off'}: {new:.1f} ms per call at a new "
          f"shape, {same:.2f} ms at a repeated shape")
EOF
}

WMT=${WMT:-configs/wmt14.en-de/supertransformer/space0.yml}
DEMO=${DEMO:-configs/demo.de-en/supertransformer/space0.yml}
BEFORE_FLAGS=()
[ -d "$BEFORE/hat" ] && BEFORE_FLAGS=(--before "$BEFORE")
stamp() { echo "== $(( $(date +%s) - T0 )) s elapsed, $(left) s left"; }
run_part() {
  case "$1" in
    probe) probe ;;
    # 1. eager: supernet vs dense (and the earlier commit's supernet), WMT'14 space, 4 configs
    wmt) bench bench_wmt_4096 "$WMT" 32768 "${WMT_LIMIT:-120}" "${ROUNDS:-5}" "${BEFORE_FLAGS[@]}" ;;
    # 2. the same on the demo space (small, launch-bound)
    demo) bench bench_demo_4096 "$DEMO" 8000 60 "${ROUNDS:-5}" "${BEFORE_FLAGS[@]}" ;;
    # 3. fairseq end to end
    e2e) [ "$(left)" -gt 60 ] && e2e ;;
    # 4. compiled dense next to eager dense and the supernet, for as many configs as the time left allows
    compiled) [ "$(left)" -gt 60 ] && bench bench_wmt_4096_compiled "$WMT" 32768 $(( $(left) - 5 )) 3 --compile ;;
    data) fairseq_fast && make_data ;;
  esac
  stamp
}
[ "$MODE" = all ] && MODE=probe,wmt,demo,e2e,compiled
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv
  for part in ${MODE//,/ }; do run_part "$part"; done
} 2>&1 | tee -a "$OUT/run.log"
