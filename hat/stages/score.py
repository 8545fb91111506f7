"""score.py: BLEU of a hypothesis file against a reference file, as HAT's score.py (fairseq's scoring script).

    python score.py --sys HYP --ref REF [--order 4] [--ignore-case]      # tokenized BLEU (fairseq's scorer)
    python score.py --sys HYP --ref REF --sacrebleu                      # SacreBLEU (13a) on detokenized text
    python score.py --sys HYP --ref REF --sentence-bleu                  # one +1-smoothed BLEU per sentence

Both files hold one sentence per line (``--sys -`` reads stdin). The default figure is HAT's "BLEU" column when the
files are what ``configs/<task>/test.sh normal`` writes (Moses-tokenized, BPE removed, compounds split); printed as
fairseq prints it: ``BLEU4 = 27.80, 58.9/33.5/21.2/13.9 (BP=1.000, ratio=1.013, syslen=63078, reflen=62688)``.
``--sacrebleu`` is HAT's "SacreBLEU" column on ``test.sh sacre``'s Moses-detokenized files, printed as sacrebleu
prints a score, followed by its signature. Unlike HAT's script, files of different lengths are refused (HAT scored
the shorter length silently).
"""
from __future__ import annotations

from typing import List, Optional

from hat.config import stage_parser
from hat.errors import ConfigError


def build_parser():
    p = stage_parser("Command-line script for BLEU scoring (HAT's score.py).", prog="score.py")
    p.add_argument("-s", "--sys", default="-", help="system output (default: - = stdin)")
    p.add_argument("-r", "--ref", required=True, help="references")
    p.add_argument("-o", "--order", default=4, metavar="N", type=int, help="consider ngrams up to this order (1-4)")
    p.add_argument("--ignore-case", action="store_true", help="case-insensitive scoring")
    p.add_argument("--sacrebleu", action="store_true", help="score with sacrebleu")
    p.add_argument("--sentence-bleu", action="store_true",
                   help="report sentence-level BLEUs (i.e., with +1 smoothing)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from hat.evaluate import read_lines, sacre_bleu, sentence_bleus, tokenized_bleu

    args = build_parser().parse_args(argv)
    if not 1 <= args.order <= 4:
        raise ConfigError(f"--order {args.order}: BLEU scores for order > 4 (or < 1) aren't supported")
    refs = read_lines(args.ref, "reference file")
    hyps = read_lines(args.sys, "system output")
    where = "stdin" if args.sys == "-" else args.sys
    if len(hyps) != len(refs):
        raise ConfigError(f"{where} has {len(hyps)} lines but {args.ref} has {len(refs)}")
    if not refs:
        raise ConfigError(f"nothing to score: {args.ref} is empty")
    if args.sacrebleu:
        score, signature = sacre_bleu(hyps, refs, lowercase=args.ignore_case)
        print(f"{score} | {signature}")
    elif args.sentence_bleu:
        for i, stats in enumerate(sentence_bleus(hyps, refs, ignore_case=args.ignore_case)):
            print(i, stats.result_string(args.order))
    else:
        print(tokenized_bleu(hyps, refs, ignore_case=args.ignore_case).result_string(args.order))
    return 0
