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
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tools/preprocess_lib.sh"  # checks, helpers, $WORK

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

bpe "$prep/"

echo "binarizing..." >&2
fairseq-preprocess --source-lang $src --target-lang $tgt \
    --trainpref "$prep/train" --validpref "$prep/valid" --testpref "$prep/test" \
    --destdir "$WORK/bin" --workers "$WORKERS"

into_place
