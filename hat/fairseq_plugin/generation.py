"""Beam search over a split with fairseq's generator: hypotheses in input order, detokenized by the caller."""
from __future__ import annotations

import sys
from typing import Callable, List, Optional

from hat.errors import HatError


def translate_split(model, task, args, subset: str, postprocess: Callable[[str], str]) -> List[str]:
    """Translate every sentence of ``subset`` (beam, lenpen ... from ``args``), best hypothesis each, in input
    order; ``postprocess`` turns fairseq's subword string into text. Runs on CUDA when available and not --cpu."""
    import torch
    from fairseq import utils
    from tqdm import tqdm

    use_cuda = torch.cuda.is_available() and not args.cpu
    model.eval()
    if use_cuda:
        model.cuda()
    dataset = split_dataset(task, subset, args.data)
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
    for sample in tqdm(itr, desc=f"translating {subset}", unit="batch", file=sys.stderr):
        if use_cuda:
            sample = utils.move_to_cuda(sample)
        with torch.no_grad():
            out = task.inference_step(generator, [model], sample)
        for i, sid in enumerate(sample["id"].tolist()):
            hyps[sid] = postprocess(tgt_dict.string(out[i][0]["tokens"].int().cpu()))
    missing = sum(h is None for h in hyps)
    if missing:
        raise HatError(f"{missing} sentences of {subset} were not translated")
    return hyps


def split_dataset(task, subset: str, data: str):
    """The task's dataset of ``subset``, loaded once; a missing split is one line."""
    if subset not in getattr(task, "datasets", {}):
        try:
            task.load_dataset(subset)
        except FileNotFoundError as e:
            raise HatError(f"no {subset} split in {data}: {str(e).splitlines()[0]}") from None
    return task.dataset(subset)
