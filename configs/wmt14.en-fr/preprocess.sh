#!/usr/bin/env bash
# wmt14.en-fr: WMT'14 En-Fr as HAT's configs/wmt14.en-fr/preprocess.sh (after fairseq's
# prepare-wmt14en2fr.sh): Europarl v7, CommonCrawl, UN, News Commentary v9, Gigaword; valid = 1 line in 1333 of
# train, test = newstest2014; Moses normalization + aggressive tokenization (sacremoses), joint BPE 40k, length
# 1..250 ratio 1.5, binarized with HAT's joined dictionary.
#
#   bash configs/wmt14.en-fr/preprocess.sh [WORKERS]
#
# Writes $HAT_DATA_DIR/text/$NAME/orig (downloads), .../tokenized (BPE text) and $HAT_DATA_DIR/binary/$NAME, the
# 'data:' of this task's configs (HAT_DATA_DIR defaults to data). Before anything is written it checks the network
# (5 s) and the tools (sacremoses, subword-nmt, fairseq-preprocess: pip install sacremoses subword-nmt). Downloads
# resume (<file>.part); everything else is built in a temporary folder and moved into place at the end, so a failed
# run leaves no half-built tokenized/ or binary/ folder. $HAT_DATA_URL_BASE fetches every file from
# <base>/<file name> instead (a mirror). The already-binarized result is also downloadable: get_preprocessed.sh.
NAME=wmt14_en_fr
src=en; tgt=fr; lang=en-fr
BPE_TOKENS=40000
THRESHOLD=0
URLS=(
    "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz"
    "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz"
    "http://statmt.org/wmt13/training-parallel-un.tgz"
    "http://statmt.org/wmt14/training-parallel-nc-v9.tgz"
    "http://statmt.org/wmt10/training-giga-fren.tar"
    "http://statmt.org/wmt14/test-full.tgz"
)
DICT_URL="https://www.dropbox.com/s/sgx2z11oo5mgube/wmt14enfr_dict.txt?dl=1"
URLS+=("$DICT_URL")
CORPORA=(
    "training/europarl-v7.fr-en"
    "commoncrawl.fr-en"
    "un/undoc.2000.fr-en"
    "training/news-commentary-v9.fr-en"
    "giga-fren.release2.fixed"
)
TOOLS=(sacremoses subword-nmt fairseq-preprocess)
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tools/preprocess_lib.sh"  # checks, helpers, $WORK

for u in "${URLS[@]:0:6}"; do
    fetch "$u"
    f="${u##*/}"; unpack "$f"
done
for l in en fr; do unpack giga-fren.release2.fixed.$l.gz; done

make_dev_test() {  # LANG src|ref
    sgm "$ORIG/test-full/newstest2014-fren-$2.$1.sgm" | tok $1 -a > "$tmp/test.$1"
}

tokenize_corpora  # train from $CORPORA, valid/test through make_dev_test

echo "splitting train and valid..." >&2
for l in $src $tgt; do
    awk '{if (NR%1333 == 0)  print $0; }' "$tmp/train.tags.$lang.tok.$l" > "$tmp/valid.$l"
    awk '{if (NR%1333 != 0)  print $0; }' "$tmp/train.tags.$lang.tok.$l" > "$tmp/train.$l"
done

bpe "$tmp/bpe."
binarize_with_hat_dict

into_place
