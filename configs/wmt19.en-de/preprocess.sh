#!/usr/bin/env bash
# wmt19.en-de: WMT'19 En-De as HAT's configs/wmt19.en-de/preprocess.sh: ParaCrawl v3 (bicleaner 0.7),
# News Commentary v14, WikiTitles, Europarl v9, CommonCrawl, RAPID 2019; valid = newstest2017, test = newstest2018;
# Moses normalization + aggressive tokenization (sacremoses), joint BPE 40k, length 1..250 ratio 1.5, binarized with
# HAT's joined dictionary.
#
#   bash configs/wmt19.en-de/preprocess.sh [WORKERS]
#
# Writes $HAT_DATA_DIR/text/$NAME/orig (downloads), .../tokenized (BPE text) and $HAT_DATA_DIR/binary/$NAME, the
# 'data:' of this task's configs (HAT_DATA_DIR defaults to data). Before anything is written it checks the network
# (5 s) and the tools (sacremoses, subword-nmt, fairseq-preprocess: pip install sacremoses subword-nmt). Downloads
# resume (<file>.part); everything else is built in a temporary folder and moved into place at the end, so a failed
# run leaves no half-built tokenized/ or binary/ folder. $HAT_DATA_URL_BASE fetches every file from
# <base>/<file name> instead (a mirror). The already-binarized result is also downloadable: get_preprocessed.sh.
NAME=wmt19_en_de
src=en; tgt=de; lang=en-de
BPE_TOKENS=40000
THRESHOLD=1
URLS=(
    "http://www.statmt.org/europarl/v9/training/europarl-v9.de-en.tsv.gz"
    "https://s3.amazonaws.com/web-language-models/paracrawl/release3/en-de.bicleaner07.txt.gz"
    "http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz"
    "http://data.statmt.org/news-commentary/v14/training/news-commentary-v14.de-en.tsv.gz"
    "http://data.statmt.org/wikititles/v1/wikititles-v1.de-en.tsv.gz"
    "https://s3-eu-west-1.amazonaws.com/tilde-model/rapid2019.de-en.zip"
    "http://data.statmt.org/wmt19/translation-task/dev.tgz"
)
DICT_URL="https://www.dropbox.com/s/u9h8ns6xe8ux91d/wmt19ende_dict.txt?dl=1"
URLS+=("$DICT_URL")
CORPORA=(
    "en-de.bicleaner07.txt"
    "news-commentary-v14.de-en.tsv"
    "wikititles-v1.de-en.tsv"
    "europarl-v9.de-en.tsv"
    "commoncrawl.de-en"
    "rapid2019.de-en"
)
TOOLS=(sacremoses subword-nmt fairseq-preprocess)
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tools/preprocess_lib.sh"  # checks, helpers, $WORK

for u in "${URLS[@]:0:7}"; do
    fetch "$u"
    f="${u##*/}"; unpack "$f"
done
# the tab-separated corpora: one file per language (ParaCrawl is en<TAB>de, the others de<TAB>en)
cut -f1 "$ORIG/en-de.bicleaner07.txt" > "$ORIG/en-de.bicleaner07.txt.en"
cut -f2 "$ORIG/en-de.bicleaner07.txt" > "$ORIG/en-de.bicleaner07.txt.de"
for f in news-commentary-v14.de-en.tsv wikititles-v1.de-en.tsv europarl-v9.de-en.tsv; do
    cut -f1 "$ORIG/$f" > "$ORIG/$f.de"
    cut -f2 "$ORIG/$f" > "$ORIG/$f.en"
done

make_dev_test() {  # LANG src|ref
    sgm "$ORIG/dev/newstest2017-ende-$2.$1.sgm" | tok $1 -a > "$tmp/valid.$1"
    sgm "$ORIG/dev/newstest2018-ende-$2.$1.sgm" | tok $1 -a > "$tmp/test.$1"
}

tokenize_corpora  # train from $CORPORA, valid/test through make_dev_test

for l in $src $tgt; do cp "$tmp/train.tags.$lang.tok.$l" "$tmp/train.$l"; done

bpe "$tmp/bpe."
binarize_with_hat_dict

into_place
