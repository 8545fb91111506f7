#!/usr/bin/env bash
# iwslt14.de-en: IWSLT'14 De-En as HAT's configs/iwslt14.de-en/preprocess.sh (after fairseq's
# prepare-iwslt14.sh): TED train/valid split 1 in 23, test = dev2010 + tst2010-2012 + TEDX.dev2012; Moses
# tokenization (sacremoses) + lowercasing, length 1..175 ratio 1.5, joint BPE 10k (subword-nmt), separate dictionaries.
#
#   bash configs/iwslt14.de-en/preprocess.sh [WORKERS]
#
# Writes $HAT_DATA_DIR/text/$NAME/orig (downloads), .../tokenized (BPE text) and $HAT_DATA_DIR/binary/$NAME, the
# 'data:' of this task's configs (HAT_DATA_DIR defaults to data). Before anything is written it checks the network
# (5 s) and the tools (sacremoses, subword-nmt, fairseq-preprocess: pip install sacremoses subword-nmt). Downloads
# resume (<file>.part); everything else is built in a temporary folder and moved into place at the end, so a failed
# run leaves no half-built tokenized/ or binary/ folder. $HAT_DATA_URL_BASE fetches every file from
# <base>/<file name> instead (a mirror). The already-binarized result is also downloadable: get_preprocessed.sh.
# HAT's URL (WIT3) may be gone; fairseq's copy of the same archive:
#   HAT_DATA_URL_BASE=http://dl.fbaipublicfiles.com/fairseq/data/iwslt14 bash configs/iwslt14.de-en/preprocess.sh
NAME=iwslt14_de_en
src=de; tgt=en; lang=de-en
BPE_TOKENS=10000
URLS=("https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz")
TOOLS=(sacremoses subword-nmt fairseq-preprocess)
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
"$PY" -m hat.download --check "${checks[@]}" || exit 2
for t in "${TOOLS[@]}"; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found: pip install sacremoses subword-nmt gdown (fairseq-preprocess comes with fairseq)"
done

mkdir -p "$ORIG"
WORK="$(mktemp -d "$TEXT/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
tmp="$WORK/tmp"; prep="$WORK/tokenized"; mkdir -p "$tmp" "$prep"

fetch "${URLS[0]}"
unpack de-en.tgz

echo "pre-processing train data..." >&2
for l in $src $tgt; do
    grep -v '<url>' "$ORIG/$lang/train.tags.$lang.$l" | grep -v '<talkid>' | grep -v '<keywords>' | \
        sed -e 's/<title>//g' -e 's/<\/title>//g' -e 's/<description>//g' -e 's/<\/description>//g' | \
        tok $l > "$tmp/train.tags.$lang.tok.$l"
done
clean "$tmp/train.tags.$lang.tok" "$tmp/train.tags.$lang.clean" 1 175
for l in $src $tgt; do
    lower < "$tmp/train.tags.$lang.clean.$l" > "$tmp/train.tags.$lang.$l"
done

echo "pre-processing valid/test data..." >&2
for l in $src $tgt; do
    for o in "$ORIG/$lang"/IWSLT14.TED*.$l.xml; do
        f="$(basename "$o")"
        sgm "$o" | tok $l | lower > "$tmp/${f%.*}"
    done
done

echo "creating train, valid, test..." >&2
for l in $src $tgt; do
    awk '{if (NR%23 == 0)  print $0; }' "$tmp/train.tags.$lang.$l" > "$tmp/valid.$l"
    awk '{if (NR%23 != 0)  print $0; }' "$tmp/train.tags.$lang.$l" > "$tmp/train.$l"
    cat "$tmp/IWSLT14.TED.dev2010.$lang.$l" "$tmp/IWSLT14.TEDX.dev2012.$lang.$l" "$tmp/IWSLT14.TED.tst2010.$lang.$l" \
        "$tmp/IWSLT14.TED.tst2011.$lang.$l" "$tmp/IWSLT14.TED.tst2012.$lang.$l" > "$tmp/test.$l"
done

echo "learning BPE ($BPE_TOKENS merges) on train.$src + train.$tgt..." >&2
cat "$tmp/train.$src" "$tmp/train.$tgt" | subword-nmt learn-bpe -s $BPE_TOKENS > "$prep/code"
for l in $src $tgt; do
    for f in train valid test; do
        subword-nmt apply-bpe -c "$prep/code" < "$tmp/$f.$l" > "$prep/$f.$l"
    done
done

echo "binarizing..." >&2
fairseq-preprocess --source-lang $src --target-lang $tgt \
    --trainpref "$prep/train" --validpref "$prep/valid" --testpref "$prep/test" \
    --destdir "$WORK/bin" --workers "$WORKERS"

# into place: tokenized text (for BLEU on tokenized references) and the binarized data the configs read
rm -rf "$TEXT/tokenized"
mv "$prep" "$TEXT/tokenized"
mkdir -p "$(dirname "$BIN")"
mv "$WORK/bin" "$BIN"
echo "done: $BIN" >&2
