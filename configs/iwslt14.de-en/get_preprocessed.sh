#!/usr/bin/env bash
# HAT's preprocessed data for iwslt14.de-en (BPE-encoded and fairseq-binarized by HAT's authors), as HAT's
# configs/iwslt14.de-en/get_preprocessed.sh: into data/binary/iwslt14_de_en (the 'data:' of this task's configs).
#
#   bash configs/iwslt14.de-en/get_preprocessed.sh [DEST]      (default DEST: ${HAT_DATA_DIR:-data}/binary/iwslt14_de_en)
#
# Checks the network first (5 s); downloads to DEST's parent as <archive>.part (an interrupted run resumes), then
# unpacks into a temporary folder that is renamed to DEST only when complete. $HAT_DATA_URL_BASE fetches the archive
# from <base>/<archive name> instead (a mirror). Registry entry: HAT_data_iwslt14_de_en (hat/model_registry.json).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-${HAT_DATA_DIR:-data}/binary/iwslt14_de_en}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" "$ROOT/download_model.py" --model-name HAT_data_iwslt14_de_en --dest "$(dirname "$DEST")" --extract "$DEST"
