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
set -euo pipefail
WORKERS="${1:-$(nproc 2>/dev/null || echo 4)}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PATH="$(dirname "$PY"):$PATH"          # the venv's sacremoses, subword-nmt, fairseq-preprocess
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DATA="${HAT_DATA_DIR:-data}"
TEXT="$DATA/text/$NAME"
BIN="$DATA/binary/$NAME"
ORIG="$TEXT/orig"

# where a file is fetched from: its URL, or <$HAT_DATA_URL_BASE>/<file name> (a mirror)
url() { if [ -n "${HAT_DATA_URL_BASE:-}" ]; then local f="${1%%\?*}"; echo "${HAT_DATA_URL_BASE%/}/${f##*/}"; else echo "$1"; fi; }
die() { echo "error: $*" >&2; exit 2; }
fetch() {  # URL -> $ORIG/<file name> (resumable, atomic; skipped when already there)
    "$PY" -m hat.download --url "$(url "$1")" --dest "$ORIG" || exit 2
}
unpack() {  # archive in $ORIG, unpacked once into $ORIG
    local f="$ORIG/$1" mark="$ORIG/.$1.unpacked"
    [ -e "$mark" ] && return 0
    echo "unpacking $1" >&2
    case "$1" in
        *.tgz|*.tar.gz) tar -xzf "$f" -C "$ORIG" ;;
        *.tar) tar -xf "$f" -C "$ORIG" ;;
        *.zip) "$PY" -m zipfile -e "$f" "$ORIG" ;;
        *.gz) gunzip -kf "$f" ;;
    esac
    touch "$mark"
}
tok() {  # LANG [extra sacremoses tokenize flags]: stdin -> Moses-tokenized stdout
    local l="$1"; shift
    sacremoses -q -l "$l" -j "$WORKERS" tokenize "$@"
}
lower() {  # Unicode lowercasing (Moses lowercase.perl)
    "$PY" -c 'import sys
for line in sys.stdin: sys.stdout.write(line.lower())'
}
sgm() {  # text of the <seg> lines of an SGML test set (as HAT's scripts)
    grep '<seg id' "$1" | sed -e 's/<seg id="[0-9]*">\s*//g' -e 's/\s*<\/seg>\s*//g' -e "s/\’/\'/g"
}
clean() {  # IN_PREFIX OUT_PREFIX MIN MAX: Moses clean-corpus-n.perl -ratio 1.5 on $src/$tgt
    paste "$1.$src" "$1.$tgt" | awk -F'\t' -v min="$3" -v max="$4" 'NF == 2 {
        ns = split($1, a, " "); nt = split($2, b, " ");
        if (ns >= min && nt >= min && ns <= max && nt <= max && ns <= 1.5 * nt && nt <= 1.5 * ns) print }' > "$2.pairs"
    cut -f1 "$2.pairs" > "$2.$src"
    cut -f2 "$2.pairs" > "$2.$tgt"
    rm -f "$2.pairs"
}

if [ -e "$BIN" ]; then echo "$BIN already exists: nothing to do (remove it to preprocess again)" >&2; exit 0; fi
# before anything is written: the network (5 s), then the tools
checks=(); for u in "${URLS[@]}"; do checks+=("$(url "$u")"); done
[ ${#checks[@]} -eq 0 ] || "$PY" -m hat.download --check "${checks[@]}" || exit 2
for t in "${TOOLS[@]}"; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found: pip install sacremoses subword-nmt gdown (fairseq-preprocess comes with fairseq)"
done

mkdir -p "$ORIG"
WORK="$(mktemp -d "$TEXT/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
tmp="$WORK/tmp"; prep="$WORK/tokenized"; mkdir -p "$tmp" "$prep"

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

# into place: tokenized text (for BLEU on tokenized references) and the binarized data the configs read
rm -rf "$TEXT/tokenized"
mv "$prep" "$TEXT/tokenized"
mkdir -p "$(dirname "$BIN")"
mv "$WORK/bin" "$BIN"
echo "done: $BIN" >&2
