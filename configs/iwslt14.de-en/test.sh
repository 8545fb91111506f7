#!/usr/bin/env bash
# HAT's configs/iwslt14.de-en/test.sh: BLEU of a trained SubTransformer on the test split of
# HAT's binarized IWSLT'14 De-En data.
#
#   bash configs/iwslt14.de-en/test.sh MODEL.pt configs/iwslt14.de-en/subtransformer/<name>.yml \
#        [normal|sacre] [GPU] [SUBSET] \
#        [more generate.py flags, e.g. --cpu]
#
# normal: tokenized BLEU with compound splitting (the BLEU column of HAT's README); sacre: SacreBLEU on
# Moses-detokenized output (its SacreBLEU column). The steps and files are HAT's: generate.py (beam 5,
# --remove-bpe) writes <model dir>/exp/<config name>_<subset>_gen.out; its H-/T- lines become .sys/.ref (compounds
# split by perl, or .pre files detokenized by `sacremoses detokenize`, its default language), scored by score.py.
# Data: ${HAT_DATA_DIR:-data}/binary/iwslt14_de_en (get_preprocessed.sh or preprocess.sh); the model settings come from
# configs/iwslt14.de-en/subtransformer/common.yml. generate.py's own last lines give both figures too.
TASK=iwslt14.de-en DATA_NAME=iwslt14_de_en GEN_FLAGS="--beam 5" \
  exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tools/hat_test.sh" "$@"
