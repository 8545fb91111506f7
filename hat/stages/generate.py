"""generate.py: translate a split with beam search and print a detokenized sacrebleu score with its signature.

    python generate.py --configs=<SubTransformer YAML> --sub-configs=<common.yml> --path CKPT [--gen-subset test]

The YAML files are the ones train.py read (beam, lenpen and the other fairseq generation keys may be set there).
A SuperTransformer checkpoint is evaluated at the SubTransformer the configs describe (the largest one if none);
a SubTransformer checkpoint must match the config it is given, if any.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from hat.args import sub_config_from_args
from hat.errors import HatError


def main(argv: Optional[List[str]] = None) -> int:
    from hat.fairseq_plugin.args import build_args

    argv = sys.argv[1:] if argv is None else argv
    args = build_args(argv)
    if not args.path:
        raise HatError("--path CKPT is required")
    import sacrebleu

    from hat.data.prepare import detokenize
    from hat.fairseq_plugin.checkpoint import choose_config, load_checkpoint
    from hat.fairseq_plugin.generation import split_dataset, translate_split
    from hat.io import write_text

    source = args.configs or "command line"
    model, task, _ = load_checkpoint(args.path, args.data)
    cfg = choose_config(model, sub_config_from_args(args, source=source), source)
    model.set_sample_config(cfg)

    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    spm_model = args.spm_model or os.path.join(args.data, "spm.model")
    ref_path = args.reference or os.path.join(args.data, "raw", f"{args.gen_subset}.{tgt}")
    for what, p in (("sentencepiece model", spm_model), ("reference file", ref_path)):
        if not os.path.isfile(p):
            raise HatError(f"{what} not found: {p}")
    with open(ref_path, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    n = len(split_dataset(task, args.gen_subset, args.data))
    if n != len(refs):
        raise HatError(f"{ref_path} has {len(refs)} lines but split {args.gen_subset} has {n} sentences")
    hyps = translate_split(model, task, args, args.gen_subset, lambda pieces: detokenize(pieces, spm_model))
    if args.results_path:
        write_text(args.results_path, "\n".join(hyps) + "\n")
    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(hyps, [refs])
    print(f"| SubTransformer {cfg.key()} on {args.gen_subset} ({len(hyps)} sentences, {src}->{tgt}, "
          f"beam {args.beam}, lenpen {args.lenpen})")
    print(f"BLEU = {score.score:.2f} | {bleu.get_signature()} | {score}")
    return 0
