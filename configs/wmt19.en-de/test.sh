#!/usr/bin/env bash
# HAT's configs/wmt19.en-de/test.sh: BLEU of a trained SubTransformer on the test split of
# HAT's binarized WMT'19 En-De data.
#
#   bash configs/wmt19.en-de/test.sh MODEL.pt configs/wmt19.en-de/subtransformer/<name>.yml \
#        [normal|sacre] [GPU] [SUBSET] \
#        [more generate.py flags, e.g. --cpu]
#
# normal: tokenized BLEU with compound splitting (the BLEU column of HAT's README); sacre: SacreBLEU on
# Moses-detokenized output (its SacreBLEU column). The steps and files are HAT's: generate.py (beam 4, lenpen 0.6,
# --remove-bpe) writes <model dir>/exp/<config name>_<subset>_gen.out; its H-/T- lines become .sys/.ref (compounds
# split by perl, or .pre files detokenized by `sacremoses detokenize`, its default language), scored by score.py.
# Data: ${HAT_DATA_DIR:-data}/binary/wmt19_en_de (get_preprocessed.sh or preprocess.sh); the model settings come from
# configs/wmt19.en-de/subtransformer/common.yml. generate.py's own last lines give both figures too.
TASK=wmt19.en-de DATA_NAME=wmt19_en_de GEN_FLAGS="--beam 4 --lenpen 0.6" \
  exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tools/hat_test.sh" "$@"
