#!/usr/bin/env bash
# wmt14.en-de: HAT's WMT'14 En-De task = Google's WMT'16 En-De archive (train: WMT'16, valid: newstest2013,
# test: newstest2014), already Moses-tokenized, cleaned and BPE-encoded (32k joint merges) by Google's
# scripts, as HAT's configs/wmt14.en-de/preprocess.sh; this script downloads it from Google Drive (gdown) and
# binarizes it with fairseq-preprocess (joined dictionary, 32768 words per side). Tokenization and BPE are already in
# the archive, so only gdown and fairseq-preprocess are needed. A local copy: bash configs/wmt14.en-de/preprocess.sh
# [WORKERS] [ARCHIVE].
#
#   bash configs/wmt14.en-de/preprocess.sh [WORKERS]
#
# Writes $HAT_DATA_DIR/text/$NAME/orig (downloads), .../tokenized (BPE text) and $HAT_DATA_DIR/binary/$NAME, the
# 'data:' of this task's configs (HAT_DATA_DIR defaults to data). Before anything is written it checks the network
# (5 s) and the tools (gdown, fairseq-preprocess). Downloads
# resume (<file>.part); everything else is built in a temporary folder and moved into place at the end, so a failed
# run leaves no half-built tokenized/ or binary/ folder. $HAT_DATA_URL_BASE fetches every file from
# <base>/<file name> instead (a mirror). The already-binarized result is also downloadable: get_preprocessed.sh.
NAME=wmt16_en_de
src=en; tgt=de
GDRIVE_URL="https://drive.google.com/uc?export=download&id=0B_bZck-ksdkpM25jRUN2X2UxMm8"
ARCHIVE="${2:-}"
if [ -n "$ARCHIVE" ]; then URLS=(); TOOLS=(fairseq-preprocess); else URLS=("$GDRIVE_URL"); TOOLS=(fairseq-preprocess); fi
[ -n "${HAT_DATA_URL_BASE:-}" ] && URLS=("${HAT_DATA_URL_BASE%/}/wmt16_en_de.tar.gz")
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tools/preprocess_lib.sh"  # checks, helpers, $WORK

if [ -z "$ARCHIVE" ]; then
    # the registry's wmt16_en_de_google: Google Drive through gdown, or <$HAT_DATA_URL_BASE>/wmt16_en_de.tar.gz
    "$PY" "$ROOT/download_model.py" --model-name wmt16_en_de_google --dest "$ORIG" || exit 2
    ARCHIVE="$ORIG/wmt16_en_de.tar.gz"
fi
tar -xzf "$ARCHIVE" -C "$prep"

echo "binarizing..." >&2
fairseq-preprocess --source-lang $src --target-lang $tgt \
    --trainpref "$prep/train.tok.clean.bpe.32000" --validpref "$prep/newstest2013.tok.bpe.32000" \
    --testpref "$prep/newstest2014.tok.bpe.32000" --destdir "$WORK/bin" \
    --nwordssrc 32768 --nwordstgt 32768 --joined-dictionary --workers "$WORKERS"

into_place
