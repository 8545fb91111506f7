"""Reading what train.py saved as a standalone :class:`SuperTransformer`, with torch alone (no fairseq, no data dir):
the one reader used by export, the demo and ``train.py --inherit-from``.

A checkpoint of ``transformersuper`` is a fairseq checkpoint: its ``cfg['model']`` holds the arguments the model was
built from (super dims, search space, and, for a SubTransformer, its ``*-subtransformer`` keys), its ``model`` the
weights under ``encoder.core.*`` / ``decoder.core.*``. Loading it WITH fairseq (model + task, for validation and
generation) and writing it (strip) are in :mod:`hat.fairseq_plugin.checkpoint`.

A checkpoint in HAT's own layout (MIT HAN Lab's code, e.g. ``download_model.py
--model-name=HAT_wmt14ende_super_space0``) is converted on reading by :func:`read_checkpoint` (:mod:`hat.hat_layout`),
the one place every loader goes through.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from hat.args import options_from_args, space_from_args, sub_config_from_args
from hat.errors import CheckpointError
from hat.hat_layout import convert_checkpoint, hat_args_to_ours, is_hat_checkpoint, position_table_dims
from hat.io import atomic_output
from hat.models.transformer import SuperTransformer
from hat.space import SearchSpace, SubConfig


@dataclass
class LoadedModel:
    model: SuperTransformer  # built at the checkpoint's own shape, weights loaded, eval mode
    space: SearchSpace  # the search space it was trained with (a SubTransformer's: its super dims only)
    sub_config: Optional[SubConfig]  # set for SubTransformer checkpoints (--train-subtransformer)
    args: object  # the saved model arguments (argparse.Namespace)
    path: str

    @property
    def is_subtransformer(self) -> bool:
        return self.sub_config is not None and bool(getattr(self.args, "train_subtransformer", False))


def _core_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for side in ("encoder", "decoder"):
            if k.startswith(f"{side}.core."):
                out[f"{side}." + k[len(side) + 6 :]] = v
    return out


def check_readable(path: str, what: str, hint: str) -> None:
    """``path`` is a whole torch checkpoint (a zip whose central directory is intact and holds a pickle; an old
    non-zip file is loaded), else one :class:`CheckpointError`: ``what: why; hint``. A truncated file (a run killed
    while saving, a copy cut short) loses the zip's central directory at its end."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return
            raise CheckpointError(f"{what}: a zip file, but not a torch checkpoint; {hint}")
        torch.load(path, map_location="cpu", weights_only=False)  # an old (non-zip) torch file
    except CheckpointError:
        raise
    except Exception as e:  # a corrupt file can raise almost anything from the unpickler
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{what}: truncated or corrupt ({msg}); {hint}") from None


def read_checkpoint(path: str) -> dict:
    """The checkpoint in ``path`` as a dict in this project's layout (CPU tensors): a train.py checkpoint as saved, one
    in HAT's layout converted (:func:`hat.hat_layout.convert_checkpoint`); one :class:`CheckpointError` otherwise."""
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a corrupt file can raise almost anything from the unpickler
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {msg}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a fairseq checkpoint")
    if is_hat_checkpoint(state):
        state = convert_checkpoint(state, path)
    return state


def is_hat_file(path: str) -> bool:
    """``path`` holds a checkpoint in HAT's layout (cheap for zip checkpoints: the weights are memory-mapped, not
    read); False for anything else, including a file that cannot be read (its loader then says why)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # an old (non-zip) torch file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001  (the real load reports it in one line)
        return False
    return is_hat_checkpoint(state)


def restore_file_for_training(path: str, save_dir: str) -> str:
    """The file ``train.py --restore-file PATH`` resumes from: ``path`` itself, or for a checkpoint in HAT's layout
    its conversion, written (atomically) to ``<save_dir>/hat_<name>``: fairseq's trainer cannot read HAT's fairseq-0.8
    args, and HAT's optimizer, lr-scheduler and data-loader state are not carried (training starts from HAT's weights
    with fresh ones, as fairseq's --reset-optimizer --reset-lr-scheduler --reset-dataloader would). The model args are
    stored as fairseq 0.12 stores them (``cfg['model']``), which is all the trainer and :func:`load_model` read."""
    if not is_hat_file(path):
        return path
    state = read_checkpoint(path)
    state["cfg"] = {"model": state.pop("args")}
    dst = os.path.join(save_dir, "hat_" + os.path.basename(path))
    with atomic_output(dst) as tmp:  # a unique temporary name: with torchrun every rank converts
        torch.save(state, tmp)
    print(f"| restore-file {path} is a HAT checkpoint: converted to this project's layout in {dst} (weights only; "
          f"optimizer, lr scheduler and data loader start fresh)", file=sys.stderr)
    return dst


def saved_args(state: dict, source: str = "checkpoint"):
    """The model args a checkpoint was built from (fairseq 0.12's ``cfg['model']``, else ``args``; HAT's args mapped
    to ours); None when it has none."""
    cfg = state.get("cfg") or {}
    args = cfg.get("model") if isinstance(cfg, dict) else None
    args = args if args is not None else state.get("args")
    if args is not None and is_hat_checkpoint(state):
        args = hat_args_to_ours(args, source)
    return args


def load_model(path: str) -> LoadedModel:
    """Load a train.py checkpoint (or HAT's) as a standalone :class:`SuperTransformer` (CPU, eval mode)."""
    state = read_checkpoint(path)
    args = saved_args(state, path)
    if args is None or not str(getattr(args, "arch", "")).startswith("transformersuper"):
        raise CheckpointError(f"{path} is not a transformersuper checkpoint (arch {getattr(args, 'arch', None)!r})")
    weights = _core_state(state["model"])
    try:
        src_vocab = weights["encoder.embed_tokens.weight"].shape[0]
        tgt_vocab = weights["decoder.embed_tokens.weight"].shape[0]
    except KeyError:
        raise CheckpointError(f"{path}: no embedding weights found") from None
    space = space_from_args(args, source=path)
    sub = sub_config_from_args(args, source=path)
    enc_table, dec_table = position_table_dims(weights)
    opt = dataclasses.replace(options_from_args(args, src_vocab, tgt_vocab), encoder_position_table_dim=enc_table,
                              decoder_position_table_dim=dec_table)
    shape = sub if getattr(args, "train_subtransformer", False) and sub is not None else space.super_config()
    try:
        model = SuperTransformer(shape, opt)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the saved config: {str(e).splitlines()[0]}") from None
    model.eval()
    return LoadedModel(model=model, space=space, sub_config=sub, args=args, path=path)


if __name__ == "__main__":  # python -m hat.checkpoint strip ...: the CLI is hat/stages/checkpoint.py
    from hat.cli import run
    from hat.stages.checkpoint import main

    run(main)
