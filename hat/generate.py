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

from hat.errors import CheckpointError, HatError

def load_checkpoint(path: str, data: str):
    """(model, task, saved args) from a fairseq checkpoint of ``transformersuper``; one clear error if unusable."""
    import torch
    from fairseq import checkpoint_utils

    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # fairseq pickles its config (torch >= 2.6)
    import hat.fairseq_plugin  # noqa: F401  (registers transformersuper / translation_hat)
    try:
        models, saved_cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, torch.serialization.pickle.UnpicklingError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {msg}") from None
    model = models[0]
    if not hasattr(model, "set_sample_config"):
        raise CheckpointError(f"{path} is not a transformersuper checkpoint")
    return model, task, saved_cfg


def choose_config(model, args, source: str):
    """The SubTransformer to evaluate: from the YAML/flags, checked against the checkpoint."""
    from hat.checkpoint import sub_config_from_args

    wanted = sub_config_from_args(args, source=source)
    if model.is_subtransformer:
        own = model.core.config
        if wanted is not None and wanted != own:
            raise CheckpointError(
                f"{source} describes SubTransformer {wanted.key()} but the checkpoint holds {own.key()}"
            )
        return own
    if wanted is None:
        print("| no SubTransformer config given: evaluating the largest SubTransformer of the space", file=sys.stderr)
        return model.space.largest()
    try:
        model.core.check_fits(wanted)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return wanted


def main(argv: Optional[List[str]] = None) -> int:
    from hat.train import build_args

    argv = sys.argv[1:] if argv is None else argv
    args = build_args(argv)
    import sacrebleu
    import torch
    from fairseq import utils
    from tqdm import tqdm

    from hat.data.prepare import detokenize

    if not args.path:
        raise HatError("--path CKPT is required")
    model, task, _ = load_checkpoint(args.path, args.data)
    cfg = choose_config(model, args, args.configs or "command line")
    model.set_sample_config(cfg)
    use_cuda = torch.cuda.is_available() and not args.cpu
    model.eval()
    if use_cuda:
        model.cuda()

    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    spm_model = args.spm_model or os.path.join(args.data, "spm.model")
    ref_path = args.reference or os.path.join(args.data, "raw", f"{args.gen_subset}.{tgt}")
    for what, p in (("sentencepiece model", spm_model), ("reference file", ref_path)):
        if not os.path.isfile(p):
            raise HatError(f"{what} not found: {p}")
    with open(ref_path, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]

    task.load_dataset(args.gen_subset)
    dataset = task.dataset(args.gen_subset)
    if len(dataset) != len(refs):
        raise HatError(f"{ref_path} has {len(refs)} lines but split {args.gen_subset} has {len(dataset)} sentences")
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_tokens=args.max_tokens,
        max_sentences=args.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        required_batch_size_multiple=1,  # fairseq's default 8 silently drops sentences
        num_workers=0,
    ).next_epoch_itr(shuffle=False)
    generator = task.build_generator([model], args)
    hyps: List[Optional[str]] = [None] * len(dataset)
    tgt_dict = task.target_dictionary
    for sample in tqdm(itr, desc=f"translating {args.gen_subset}", unit="batch", file=sys.stderr):
        if use_cuda:
            sample = utils.move_to_cuda(sample)
        with torch.no_grad():
            out = task.inference_step(generator, [model], sample)
        for i, sid in enumerate(sample["id"].tolist()):
            pieces = tgt_dict.string(out[i][0]["tokens"].int().cpu())
            hyps[sid] = detokenize(pieces, spm_model)
    missing = sum(h is None for h in hyps)
    if missing:
        raise HatError(f"{missing} sentences of {args.gen_subset} were not translated")
    if args.results_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.results_path)), exist_ok=True)
        tmp = args.results_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(hyps) + "\n")
        os.replace(tmp, args.results_path)
    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(hyps, [refs])
    print(f"| SubTransformer {cfg.key()} on {args.gen_subset} ({len(hyps)} sentences, {src}->{tgt}, "
          f"beam {args.beam}, lenpen {args.lenpen})")
    print(f"BLEU = {score.score:.2f} | {bleu.get_signature()} | {score}")
    return 0
