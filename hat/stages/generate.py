"""generate.py: translate a split and print its BLEU as HAT computes it, or translate raw text.

    python generate.py --configs=<SubTransformer YAML> --sub-configs=<common.yml> --path CKPT [--gen-subset test]
                       [--remove-bpe] [--print-sentences] [--reference RAW_REF] [--results-path HYP]
    python generate.py --configs=... --sub-configs=... --path CKPT --input FILE|-   [pre-processing keys below]

The YAML files are the ones train.py read (beam, lenpen and the other fairseq generation keys may be set there).
A SuperTransformer checkpoint is evaluated at the SubTransformer the configs describe (the largest one if none);
a SubTransformer checkpoint must match the config it is given, if any.

**Which pre-processing the data has** (YAML keys or flags; fairseq's names, as fairseq-interactive takes them):

* ``bpe: sentencepiece`` -- the demo: sentencepiece pieces, model ``spm-model`` (or fairseq's
  ``sentencepiece-model``; default ``<data>/spm.model``). Chosen by default when that file exists.
* ``bpe: subword_nmt`` -- HAT's paper tasks: Moses-tokenized text + subword-nmt BPE (``@@ ``). Chosen by default when
  there is no sentencepiece model. ``--remove-bpe`` (HAT's test.sh passes it) or not, the ``@@ `` is removed before
  scoring. Only ``--input`` needs more: ``bpe-codes`` (the codes the data was built with: ``preprocess.sh`` leaves
  them in ``data/text/<name>/tokenized/``: ``code``, WMT'14 En-De ``bpe.32000``), Moses tokenization in the task's
  source language with fairseq's ``moses-no-dash-splits`` (tokenized without ``-a``: WMT'14 En-De, IWSLT'14) and
  ``moses-no-escape`` keys (they exist once ``tokenizer: moses`` is set), ``input-normalize`` (Moses punctuation
  normalization first: WMT'14 En-Fr, WMT'19 En-De) and ``input-lowercase`` (IWSLT'14).

**A split** (``--gen-subset``, default test). sentencepiece: detokenized hypotheses against ``reference`` (default
``<data>/raw/<subset>.<tgt>``), one SacreBLEU line ``BLEU = ... | signature | score``. subword-nmt, as HAT's
``configs/<task>/test.sh``: BPE removed from hypotheses (``H-``) and references (``T-``, the binarized split's),
then (1) tokenized BLEU with compound splitting, fairseq's scorer (HAT's "BLEU" column, ``BLEU4 = ...``) and (2)
SacreBLEU on Moses-detokenized text (HAT's "SacreBLEU" column; detokenizer language ``detok-lang``, default ``en``
as HAT's test.sh; references: the detokenized ``T-`` lines, or ``reference`` if given). The last line is always
``BLEU = <SacreBLEU> | <signature> | <score>``. ``--print-sentences`` first prints fairseq's ``S-``, ``T-``,
``H-``, ``D-`` (detokenized) and ``P-`` lines of every sentence, in input order (HAT's test.sh greps ``^H``/``^T``).
``--results-path`` writes the detokenized hypotheses, one a line.

**Raw text** (``--input FILE``, ``-`` = stdin, read to its end): every line through the task's pre-processing,
translated, BPE removed and detokenized (Moses: in ``detok-lang``, default the target language); one output line
per input line (an empty line stays empty) on stdout, or in ``--results-path``.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from hat.args import sub_config_from_args
from hat.errors import HatError


def _spm_model(args) -> str:
    spm = getattr(args, "sentencepiece_model", None)
    if spm in (None, "???"):  # fairseq's placeholder when --bpe sentencepiece comes without a model
        spm = None
    return args.spm_model or spm or os.path.join(args.data, "spm.model")


def build_codec(args, task, for_input: bool):
    """The task's text <-> subword-string conversion (see the module docstring for the keys)."""
    from hat.evaluate import (HAT_DETOK_LANG, MosesSubwordCodec, SentencePieceCodec, bpe_symbol, choose_bpe)

    spm = _spm_model(args)
    kind = choose_bpe(getattr(args, "bpe", None), args.post_process, spm)
    if kind == "sentencepiece":
        return SentencePieceCodec(spm)
    pieces = [task.target_dictionary[i] for i in range(task.target_dictionary.nspecial,
                                                      min(len(task.target_dictionary), 500))]
    if sum(p.startswith("\u2581") for p in pieces) > len(pieces) // 4:
        raise HatError(f"{args.data} holds sentencepiece data but its model is not there: {spm} (give --spm-model)")
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    separator = getattr(args, "bpe_separator", None) or "@@"
    return MosesSubwordCodec(
        src, tgt, codes=getattr(args, "bpe_codes", None), separator=separator,
        symbol=bpe_symbol(args.post_process) or separator + " ",
        dash_splits=not getattr(args, "moses_no_dash_splits", False),
        escape=not getattr(args, "moses_no_escape", False),
        lowercase=args.input_lowercase, normalize=args.input_normalize,
        detok_lang=args.detok_lang or (tgt if for_input else HAT_DETOK_LANG),
    )


def sentence_lines(translations, codec, detok: List[str], with_target: bool = True) -> List[str]:
    """fairseq's per-sentence lines (HAT's generate.py output): S-, T-, H- (BPE removed), D- (detokenized), P-."""
    out = []
    for t, d in zip(translations, detok):
        out.append(f"S-{t.id}\t{codec.unbpe(t.source)}")
        if with_target and t.target is not None:
            out.append(f"T-{t.id}\t{codec.unbpe(t.target)}")
        out.append(f"H-{t.id}\t{t.score}\t{codec.unbpe(t.hypothesis)}")
        out.append(f"D-{t.id}\t{t.score}\t{d}")
        out.append(f"P-{t.id}\t{' '.join(f'{x:.4f}' for x in t.positional_scores)}")
    return out


def translate_input(model, task, args, codec) -> int:
    from hat.evaluate import read_lines
    from hat.fairseq_plugin.generation import translate_lines
    from hat.io import write_text

    lines = read_lines(args.raw_input, "input file")
    todo = [i for i, line in enumerate(lines) if line.strip()]
    pieces = [codec.encode(lines[i]) for i in todo]
    print(f"| {len(lines)} input lines ({len(todo)} to translate); pre-processing: {codec.describe()}",
          file=sys.stderr)
    translations = translate_lines(model, task, args, pieces)
    for i, t in zip(todo, translations):
        t.id = i
    detok = codec.detokenize([codec.unbpe(t.hypothesis) for t in translations])
    out = [""] * len(lines)
    for i, d in zip(todo, detok):
        out[i] = d
    if args.print_sentences and translations:
        print("\n".join(sentence_lines(translations, codec, detok, with_target=False)))
    if args.results_path:
        write_text(args.results_path, "".join(line + "\n" for line in out))
    elif not args.print_sentences:
        sys.stdout.write("".join(line + "\n" for line in out))
    return 0


def evaluate_split(model, task, args, codec, cfg) -> int:
    from hat.evaluate import read_lines, sacre_bleu, split_compounds, tokenized_bleu
    from hat.fairseq_plugin.generation import split_dataset, translate_split
    from hat.io import write_text

    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    ref_path = args.reference
    if codec.kind == "sentencepiece":
        ref_path = ref_path or os.path.join(args.data, "raw", f"{args.gen_subset}.{tgt}")
    refs = None
    if ref_path:
        if not os.path.isfile(ref_path):
            raise HatError(f"reference file not found: {ref_path}")
        refs = read_lines(ref_path, "reference file")
        n = len(split_dataset(task, args.gen_subset, args.data))
        if n != len(refs):
            raise HatError(f"{ref_path} has {len(refs)} lines but split {args.gen_subset} has {n} sentences")
    translations = translate_split(model, task, args, args.gen_subset)
    hyp_tok = [codec.unbpe(t.hypothesis) for t in translations]
    hyps = codec.detokenize(hyp_tok)
    if args.print_sentences:
        print("\n".join(sentence_lines(translations, codec, hyps)))
    if args.results_path:
        write_text(args.results_path, "".join(h + "\n" for h in hyps))
    print(f"| SubTransformer {cfg.key()} on {args.gen_subset} ({len(hyps)} sentences, {src}->{tgt}, "
          f"beam {args.beam}, lenpen {args.lenpen})")
    if codec.kind == "subword_nmt":
        ref_tok = [codec.unbpe(t.target) for t in translations]
        stats = tokenized_bleu([split_compounds(h) for h in hyp_tok], [split_compounds(r) for r in ref_tok])
        print(f"| tokenized BLEU, compounds split (HAT's test.sh normal / score.py): {stats.result_string()}")
        if refs is None:
            refs = codec.detokenize(ref_tok)
            what = f"the split's references, Moses-detokenized ({codec.detok_lang})"
        else:
            what = ref_path
        print(f"| SacreBLEU of the Moses-detokenized ({codec.detok_lang}) hypotheses against {what} "
              f"(HAT's test.sh sacre / score.py --sacrebleu):")
    score, signature = sacre_bleu(hyps, refs)
    print(f"BLEU = {score.score:.2f} | {signature} | {score}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from hat.fairseq_plugin.args import build_args

    argv = sys.argv[1:] if argv is None else argv
    args = build_args(argv)
    if not args.path:
        raise HatError("--path CKPT is required")
    if args.raw_input and args.raw_input != "-" and not os.path.isfile(args.raw_input):
        raise HatError(f"input file not found: {args.raw_input}")
    from hat.fairseq_plugin.checkpoint import choose_config, load_checkpoint

    source = args.configs or "command line"
    model, task, _ = load_checkpoint(args.path, args.data)
    cfg = choose_config(model, sub_config_from_args(args, source=source), source)
    model.set_sample_config(cfg)
    codec = build_codec(args, task, for_input=bool(args.raw_input))
    if args.raw_input:
        return translate_input(model, task, args, codec)
    return evaluate_split(model, task, args, codec, cfg)
