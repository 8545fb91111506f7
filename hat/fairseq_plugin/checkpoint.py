"""Checkpoints through fairseq: loading a model WITH its task (validation loss, generation) and writing the stripped
file that fairseq's loader still accepts. Reading one with torch alone is :func:`hat.checkpoint.load_model`. A
checkpoint in HAT's own layout is converted by :func:`hat.checkpoint.read_checkpoint` (:mod:`hat.hat_layout`) for both;
its model args then get the rest of a fairseq 0.12 configuration here (:func:`fairseq_checkpoint`)."""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch

from hat.checkpoint import is_hat_file, load_model, read_checkpoint
from hat.errors import CheckpointError
from hat.io import atomic_output


def fairseq_checkpoint(state: dict, data: Optional[str] = None) -> dict:
    """A checkpoint converted from HAT's layout (model args only) with the full fairseq 0.12 args fairseq's loader
    reads: task ``translation_hat`` on ``data`` (default: the data dir HAT trained on), HAT's criterion
    and languages, the model keys of the conversion."""
    from fairseq import options

    from hat.fairseq_plugin.args import DEFAULT_TASK, PLUGIN_DIR, quiet_fairseq_imports

    quiet_fairseq_imports()
    import hat.fairseq_plugin  # noqa: F401  (registers transformersuper / translation_hat)

    ours = state["args"]
    argv = [str(data or ours.data or "."), "--task", DEFAULT_TASK, "--arch", ours.arch]
    if ours.source_lang and ours.target_lang:
        argv += ["-s", ours.source_lang, "-t", ours.target_lang]
    if ours.criterion in ("label_smoothed_cross_entropy", "cross_entropy"):
        argv += ["--criterion", ours.criterion]
        if ours.criterion == "label_smoothed_cross_entropy" and ours.label_smoothing is not None:
            argv += ["--label-smoothing", str(float(ours.label_smoothing))]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    for k, v in vars(ours).items():
        if k not in ("data", "source_lang", "target_lang", "criterion", "label_smoothing"):
            setattr(args, k, v)
    args.user_dir = PLUGIN_DIR
    return dict(state, args=args)


def load_checkpoint(path: str, data: str):
    """(model, task, saved cfg) from a fairseq checkpoint of ``transformersuper`` (or HAT's); one clear error if
    unusable."""
    from hat.fairseq_plugin.args import quiet_fairseq_imports
    from hat.fairseq_plugin.training import check_data_dir

    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    check_data_dir(str(data).split(":")[0])  # a data problem is not reported as an unreadable checkpoint
    quiet_fairseq_imports()
    import logging

    # evaluating a checkpoint (generate.py, evo_search.py): the task's dictionary and split sizes are fairseq's log,
    # not this script's output
    logging.getLogger("fairseq.tasks.translation").setLevel(logging.WARNING)
    from fairseq import checkpoint_utils

    import hat.fairseq_plugin  # noqa: F401  (registers transformersuper / translation_hat)
    state = fairseq_checkpoint(read_checkpoint(path), data) if is_hat_file(path) else None
    try:
        models, saved_cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [path], arg_overrides=None if state else {"data": data}, state=state)
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, torch.serialization.pickle.UnpicklingError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {msg}") from None
    model = models[0]
    if not hasattr(model, "set_sample_config"):
        raise CheckpointError(f"{path} is not a transformersuper checkpoint")
    return model, task, saved_cfg


def choose_config(model, wanted, source: str):
    """The SubTransformer to evaluate: ``wanted`` (from the YAML/flags, or None), checked against the checkpoint."""
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


def strip_checkpoint(src: str, dst: str, dtype: Optional[torch.dtype] = torch.float32) -> int:
    """Write ``src`` without optimizer state (model weights + the config it was built from) to ``dst``, atomically.

    The result loads with :func:`load_model`, ``evo_search.py --restore-file`` and ``train.py --inherit-from``; it does
    not resume training. Returns the number of bytes written.
    """
    load_model(src)  # one clear error for anything that is not a transformersuper checkpoint
    state = read_checkpoint(src)
    if "converted_from_hat" in (state.get("extra_state") or {}) and "cfg" not in state:
        state = fairseq_checkpoint(state)  # HAT's layout: written in ours, loadable by every stage
    model, done = {}, {}
    for k, v in state["model"].items():  # tensors that share storage (tied embeddings) stay shared in the file
        key = (v.data_ptr(), tuple(v.shape), v.dtype)
        if key not in done:
            done[key] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
        model[k] = done[key]
    # fairseq's loader (generate.py, evo_search.py) reads optimizer_history and extra_state: both are small
    keep = {k: state[k] for k in ("cfg", "args", "optimizer_history", "extra_state") if k in state}
    keep["model"] = model
    keep.setdefault("optimizer_history", [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                                           "optimizer_name": "Adam", "lr_scheduler_state": {"best": None},
                                           "num_updates": int(keep.get("extra_state", {}).get("num_updates") or 0)}])
    keep["extra_state"] = dict(keep.get("extra_state") or {}, stripped_from=os.path.basename(src))
    with atomic_output(dst) as tmp:
        torch.save(keep, tmp)
    return os.path.getsize(dst)
