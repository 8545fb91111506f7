#!/usr/bin/env bash
# Creates .venv with everything the project needs (pins from DEVELOPERS.md). Idempotent: each step is skipped
# (or is a quick pip no-op) when already satisfied; the Makefile keeps a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip<26" wheel
$PIP install -q torch==2.13.0
# runtime deps of fairseq-fixed and of rknn-toolkit2, with pins that let them live in one environment
$PIP install -q -r requirements.txt
# fairseq-fixed: same `fairseq` package, py3.11 fixes; no deps (its torchaudio pin is a broken CUDA build here)
$VENV/bin/python -c "import fairseq" 2>/dev/null || \
  $PIP install -q --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
# rknn-toolkit2 declares torch<=2.4 but works beside torch 2.13 with the pins in requirements.txt
if [ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ]; then
  $VENV/bin/python -c "import rknn.api" 2>/dev/null || $PIP install -q --no-deps rknn-toolkit2==2.5.0
fi
$PIP install -q --no-deps -e .
