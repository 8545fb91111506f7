"""The search's fitness: validation loss of SubTransformers with weights inherited from a SuperTransformer, computed
with fairseq's task and criterion over the first ``valid_cnt_max`` batches of the valid split."""
from __future__ import annotations

import math
import os
from typing import List

from hat.errors import HatError


class ValidLoss:
    """Validation loss (base 2, per token, as fairseq reports it) of SubTransformers with inherited weights."""

    def __init__(self, args):
        import torch

        from hat.fairseq_plugin.checkpoint import load_checkpoint

        if not args.restore_file or not os.path.isfile(args.restore_file):
            raise HatError(f"restore-file: SuperTransformer checkpoint not found: {args.restore_file}")
        model, task, saved = load_checkpoint(args.restore_file, args.data)
        if model.is_subtransformer:
            raise HatError(f"{args.restore_file} holds one SubTransformer, not a SuperTransformer")
        self.model, self.task = model, task
        self.criterion = task.build_criterion(saved.criterion)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.model.to(self.device).eval()
        subset = args.valid_subset.split(",")[0]
        try:
            task.load_dataset(subset)
        except FileNotFoundError as e:
            raise HatError(f"no {subset} split in {args.data}: {str(e).splitlines()[0]}") from None
        itr = task.get_batch_iterator(
            dataset=task.dataset(subset), max_tokens=args.max_tokens_valid or args.max_tokens,
            max_sentences=args.batch_size_valid, required_batch_size_multiple=1, num_workers=0, seed=1,
        ).next_epoch_itr(shuffle=False)
        from fairseq import utils

        self.batches = []
        for i, sample in enumerate(itr):
            if i >= args.valid_cnt_max:
                break
            self.batches.append(utils.move_to_cuda(sample) if self.device.type == "cuda" else sample)
        if not self.batches:
            raise HatError(f"the {subset} split of {args.data} is empty")

    def __call__(self, cfgs) -> List[float]:
        import torch

        out = []
        for cfg in cfgs:
            self.model.set_sample_config(cfg)
            loss = size = 0.0
            with torch.no_grad():
                for sample in self.batches:
                    l, s, _ = self.criterion(self.model, sample)
                    loss += float(l)
                    size += float(s)
            out.append(loss / size / math.log(2))
        return out
