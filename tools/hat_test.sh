#!/usr/bin/env bash
# The body of HAT's configs/<task>/test.sh (one copy for the four tasks): each task's test.sh sets TASK, DATA_NAME
# (its folder under ${HAT_DATA_DIR:-data}/binary) and GEN_FLAGS (HAT's beam / lenpen for it) and runs this with its
# arguments. See configs/wmt14.en-de/test.sh for the usage.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${TASK:?}" "${DATA_NAME:?}"
read -r -a GEN_FLAGS <<< "${GEN_FLAGS:-}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
die() { echo "error: $*" >&2; exit 2; }
usage="bash configs/$TASK/test.sh MODEL.pt SUBTRANSFORMER.yml [normal|sacre] [GPU] [SUBSET] [generate.py flags]"
[ $# -ge 2 ] || die "usage: $usage"

checkpoints_path=$1
configs=$2
metrics=${3:-"normal"}
gpu=${4:-0}
subset=${5:-"test"}
shift $(( $# < 5 ? $# : 5 ))

[ -f "$checkpoints_path" ] || die "model not found: $checkpoints_path"
[ -f "$configs" ] || die "SubTransformer config not found: $configs"
case "$metrics" in
    normal) command -v perl >/dev/null 2>&1 || die "perl not found (HAT's compound splitting runs perl)" ;;
    sacre) SACREMOSES="$(dirname "$PY")/sacremoses"; [ -x "$SACREMOSES" ] || SACREMOSES="$(command -v sacremoses)" \
               || die "sacremoses not found: pip install sacremoses" ;;
    *) die "metrics must be normal or sacre, not '$metrics'" ;;
esac

output_path=$(dirname -- "$checkpoints_path")
out_name=$(basename -- "$configs")

mkdir -p "$output_path/exp"

GEN=$output_path/exp/${out_name}_${subset}_gen.out
trap 'rm -f "$GEN.partial"' EXIT

CUDA_VISIBLE_DEVICES=$gpu "$PY" "$ROOT/generate.py" \
        --data "${HAT_DATA_DIR:-data}/binary/$DATA_NAME" \
        --path "$checkpoints_path" \
        --gen-subset "$subset" \
        "${GEN_FLAGS[@]}" \
        --batch-size 128 \
        --remove-bpe \
        --configs="$configs" \
        --sub-configs="$ROOT/configs/$TASK/subtransformer/common.yml" \
        --print-sentences "$@" \
        > "$GEN.partial"
mv "$GEN.partial" "$GEN"

SYS=$GEN.sys
REF=$GEN.ref

# get normal BLEU or SacreBLEU score
if [ "$metrics" = "normal" ]
then
  echo "Evaluate Normal BLEU score!"
  grep ^H "$GEN" | cut -f3- | perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' > "$SYS"
  grep ^T "$GEN" | cut -f2- | perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' > "$REF"
  "$PY" "$ROOT/score.py" --sys "$SYS" --ref "$REF"
elif [ "$metrics" = "sacre" ]
then
  echo "Evaluate SacreBLEU score!"
  grep ^H "$GEN" | cut -f3- > "$SYS.pre"
  grep ^T "$GEN" | cut -f2- > "$REF.pre"
  "$SACREMOSES" -q detokenize < "$SYS.pre" > "$SYS"
  "$SACREMOSES" -q detokenize < "$REF.pre" > "$REF"
  "$PY" "$ROOT/score.py" --sys "$SYS" --ref "$REF" --sacrebleu
fi
