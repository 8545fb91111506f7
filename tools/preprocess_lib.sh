# Shared by configs/<task>/preprocess.sh (sourced after the script sets NAME, src, tgt, URLS, TOOLS): environment,
# the helpers (url, die, fetch, unpack, tok, lower, sgm, clean), the checks that run before anything is written
# (network, tools), a temporary work folder ($WORK with $tmp and $prep) removed on exit, and the steps several tasks
# share (tokenize_corpora, bpe, binarize_with_hat_dict, into_place).
set -euo pipefail
WORKERS="${1:-$(nproc 2>/dev/null || echo 4)}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
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

tokenize_corpora() {  # $ORIG/<each of $CORPORA>.<lang> -> $tmp/train.tags.$lang.tok.<lang> (Moses normalize + tokenize -a)
    echo "pre-processing train data..." >&2
    local l f
    for l in $src $tgt; do
        rm -f "$tmp/train.tags.$lang.tok.$l"
        for f in "${CORPORA[@]}"; do
            sacremoses -q -l $l -j "$WORKERS" normalize -c tokenize -a < "$ORIG/$f.$l" >> "$tmp/train.tags.$lang.tok.$l"
        done
    done
    echo "pre-processing valid/test data..." >&2
    for l in $src $tgt; do
        if [ "$l" == "$src" ]; then make_dev_test $l src; else make_dev_test $l ref; fi  # the task's own
    done
}
bpe() {  # OUT_PREFIX: learn $BPE_TOKENS joint merges on $tmp/train.$src + .$tgt ($prep/code), apply to train/valid/test
    echo "learning BPE ($BPE_TOKENS merges) on train.$src + train.$tgt..." >&2
    cat "$tmp/train.$src" "$tmp/train.$tgt" | subword-nmt learn-bpe -s $BPE_TOKENS > "$prep/code"
    local l f
    for l in $src $tgt; do
        for f in train valid test; do
            subword-nmt apply-bpe -c "$prep/code" < "$tmp/$f.$l" > "$1$f.$l"
        done
    done
}
binarize_with_hat_dict() {  # $tmp/bpe.* -> cleaned $prep/* -> $WORK/bin with HAT's dictionary ($DICT_URL, $THRESHOLD)
    clean "$tmp/bpe.train" "$prep/train" 1 250
    clean "$tmp/bpe.valid" "$prep/valid" 1 250
    local l
    for l in $src $tgt; do cp "$tmp/bpe.test.$l" "$prep/test.$l"; done
    # HAT binarizes with its own dictionary "to get the same preprocessed data"
    fetch "$DICT_URL"
    echo "binarizing..." >&2
    fairseq-preprocess --source-lang $src --target-lang $tgt \
        --trainpref "$prep/train" --validpref "$prep/valid" --testpref "$prep/test" \
        --destdir "$WORK/bin" --thresholdtgt $THRESHOLD --thresholdsrc $THRESHOLD --joined-dictionary \
        --tgtdict "$ORIG/$(basename "${DICT_URL%%\?*}")" --workers "$WORKERS"
}
into_place() {  # tokenized text (for BLEU on tokenized references) and the binarized data the configs read
    rm -rf "$TEXT/tokenized"
    mv "$prep" "$TEXT/tokenized"
    mkdir -p "$(dirname "$BIN")"
    mv "$WORK/bin" "$BIN"
    echo "done: $BIN" >&2
}
