"""Beam search with fairseq's generator over a binarized split or over subword strings (raw text already tokenized and
BPE-encoded by the caller, as fairseq-interactive does): best hypothesis of every sentence, in input order, as
subword strings; undoing the BPE and the tokenization is the caller's (:mod:`hat.evaluate`)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

from hat.errors import HatError


@dataclass
class Translation:
    """One sentence: fairseq's ``S-``/``T-``/``H-``/``P-`` fields, subword strings (BPE not removed)."""
    id: int
    source: str
    target: Optional[str]  # the reference as binarized (an unknown word is ``<<unk>>``, as fairseq prints it); None
    hypothesis: str
    score: float  # the hypothesis' log-probability (natural log, length-normalized by lenpen), as HAT printed it
    positional_scores: List[float]


def translate_split(model, task, args, subset: str) -> List[Translation]:
    """Translate every sentence of ``subset`` (beam, lenpen ... from ``args``). Runs on CUDA when available and not
    --cpu."""
    dataset = split_dataset(task, subset, args.data)
    out = _translate(model, task, args, dataset, f"translating {subset}")
    missing = sum(t is None for t in out)
    if missing:
        raise HatError(f"{missing} sentences of {subset} were not translated")
    return out


def translate_lines(model, task, args, pieces: Sequence[str]) -> List[Translation]:
    """Translate subword strings (one sentence each, e.g. raw text tokenized + BPE-encoded), as fairseq-interactive:
    words the source dictionary lacks become ``<unk>``. A line longer than the model takes is an error naming it."""
    from fairseq import utils

    src_dict = task.source_dictionary
    tokens = [src_dict.encode_line(p, add_if_not_exist=False, append_eos=True).long() for p in pieces]
    limit = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    limit = limit[0] if isinstance(limit, tuple) else limit
    for i, t in enumerate(tokens, 1):
        if limit is not None and t.numel() > limit:
            raise HatError(f"input line {i} has {t.numel()} tokens (subwords + end of sentence); the model takes at "
                           f"most {limit}")
    if not tokens:
        return []
    dataset = task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
    out = _translate(model, task, args, dataset, "translating input")
    if any(t is None for t in out):
        raise HatError("some input lines were not translated")
    return out


def _translate(model, task, args, dataset, desc: str) -> List[Optional[Translation]]:
    import warnings

    import torch
    from fairseq import utils
    from tqdm import tqdm

    # fairseq's iterator asks for pinned memory; on a machine without an accelerator torch warns about it per batch
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")
    use_cuda = torch.cuda.is_available() and not args.cpu
    model.eval()
    if use_cuda:
        model.cuda()
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_tokens=args.max_tokens,
        max_sentences=args.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        required_batch_size_multiple=1,  # fairseq's default 8 silently drops sentences
        num_workers=0,
    ).next_epoch_itr(shuffle=False)
    generator = task.build_generator([model], args)
    out: List[Optional[Translation]] = [None] * len(dataset)
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    for sample in tqdm(itr, desc=desc, unit="batch", file=sys.stderr):
        if use_cuda:
            sample = utils.move_to_cuda(sample)
        with torch.no_grad():
            hypos = task.inference_step(generator, [model], sample)
        target = sample.get("target")
        for i, sid in enumerate(sample["id"].tolist()):
            src = utils.strip_pad(sample["net_input"]["src_tokens"][i, :], src_dict.pad()).int().cpu()
            tgt = None
            if target is not None:
                tgt = tgt_dict.string(utils.strip_pad(target[i, :], tgt_dict.pad()).int().cpu(), escape_unk=True)
            best = hypos[i][0]
            out[sid] = Translation(
                id=sid, source=src_dict.string(src), target=tgt,
                hypothesis=tgt_dict.string(best["tokens"].int().cpu()), score=float(best["score"]),
                positional_scores=[float(x) for x in best["positional_scores"].tolist()],
            )
    return out


def split_dataset(task, subset: str, data: str):
    """The task's dataset of ``subset``, loaded once; a missing split is one line."""
    if subset not in getattr(task, "datasets", {}):
        try:
            task.load_dataset(subset)
        except FileNotFoundError as e:
            raise HatError(f"no {subset} split in {data}: {str(e).splitlines()[0]}") from None
    return task.dataset(subset)
