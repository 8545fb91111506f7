"""The search's fitness: validation loss of SubTransformers with weights inherited from a SuperTransformer, computed
with fairseq's task and criterion over the first ``valid_cnt_max`` batches of the valid split."""
from __future__ import annotations

import math
import os
from typing import List

from hat.errors import CheckpointError, HatError
from hat.io import sha256_file


def _check_restore_file(args):
    if not args.restore_file or not os.path.isfile(args.restore_file):
        raise HatError(f"restore-file: SuperTransformer checkpoint not found: {args.restore_file}")


def fitness_inputs(args) -> dict:
    """What the losses of :class:`ValidLoss` depend on besides the SubTransformer, as JSON values: the search state
    records them and a resume with other ones is refused (hat.search.Evolution). The SuperTransformer is identified by
    its content (sha256; reading a checkpoint of a GB takes a few seconds), the data by its directory."""
    _check_restore_file(args)
    path = os.path.abspath(args.restore_file)
    return {
        "restore-file": {"path": path, "size": os.path.getsize(path), "sha256": sha256_file(path)},
        "data": os.path.abspath(args.data) if args.data else None,
        "valid-subset": args.valid_subset.split(",")[0],
        "valid-cnt-max": args.valid_cnt_max,
        "max-tokens-valid": args.max_tokens_valid or args.max_tokens,
        "batch-size-valid": args.batch_size_valid,
    }


def trained_space(path: str):
    """The search space the SuperTransformer in ``path`` was trained on, from its saved model args (cheap: the
    weights are memory-mapped, not read, and fairseq is not involved); None where that cannot be read this way (a
    SubTransformer, a corrupt or old-format file: :func:`load_checkpoint` then says what is wrong)."""
    import torch

    from hat.args import space_from_args
    from hat.checkpoint import saved_args

    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001  (the full load below reports it in one line)
        return None
    if not isinstance(state, dict):
        return None
    args = saved_args(state, path)  # HAT's layout: its args mapped to ours
    if args is None or getattr(args, "train_subtransformer", False):
        return None
    return space_from_args(args, source=path)


class ValidLoss:
    """Validation loss (base 2, per token, as fairseq reports it) of SubTransformers with inherited weights.

    ``space``: the search space to be scored; refused in one line (before the data is read) unless the
    SuperTransformer was trained on a space that holds every one of its choices."""

    def __init__(self, args, space=None):
        import torch

        from hat.fairseq_plugin.checkpoint import load_checkpoint
        from hat.search import check_covers

        _check_restore_file(args)
        trained = trained_space(args.restore_file) if space is not None else None
        if trained is not None:  # before fairseq loads the model and the data
            check_covers(space, trained, args.restore_file)
        model, task, saved = load_checkpoint(args.restore_file, args.data)
        if model.is_subtransformer:
            raise HatError(f"{args.restore_file} holds one SubTransformer, not a SuperTransformer")
        if space is not None:
            check_covers(space, model.space, args.restore_file)
        self.source = args.restore_file
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
            try:
                self.model.set_sample_config(cfg)
            except ValueError as e:
                raise CheckpointError(f"{self.source}: {cfg.key()}: {e}") from None
            loss = size = 0.0
            with torch.no_grad():
                for sample in self.batches:
                    l, s, _ = self.criterion(self.model, sample)
                    loss += float(l)
                    size += float(s)
            out.append(loss / size / math.log(2))
        return out
