"""Reading what train.py saved, without fairseq's task machinery (no data directory needed).

A checkpoint of ``transformersuper`` is a fairseq checkpoint: its ``cfg['model']`` holds the arguments the model was
built from (super dims, search space, and, for a SubTransformer, its ``*-subtransformer`` keys), its ``model`` the
weights under ``encoder.core.*`` / ``decoder.core.*``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from hat.errors import CheckpointError
from hat.models.transformer import ModelOptions, SuperTransformer
from hat.space import CHOICE_KEYS, SUB_KEYS, SUPER_KEYS, SearchSpace, SubConfig


def space_from_args(args, source: str = "model args") -> SearchSpace:
    d = {k: getattr(args, k.replace("-", "_"), None) for k in SUPER_KEYS + CHOICE_KEYS}
    return SearchSpace.from_dict({k: v for k, v in d.items() if v is not None}, source=source)


def sub_config_from_args(args, source: str = "SubTransformer config") -> Optional[SubConfig]:
    d = {k: getattr(args, k.replace("-", "_"), None) for k in SUB_KEYS}
    if all(v is None for v in d.values()):
        return None
    return SubConfig.from_hat_dict(d, source=source)


def options_from_args(args, src_vocab: int, tgt_vocab: int, padding_idx: int = 1) -> ModelOptions:
    g = lambda name, default: getattr(args, name, default) if getattr(args, name, None) is not None else default
    return ModelOptions(
        src_vocab=src_vocab,
        tgt_vocab=tgt_vocab,
        padding_idx=padding_idx,
        share_all_embeddings=bool(g("share_all_embeddings", False)),
        share_decoder_input_output_embed=bool(g("share_decoder_input_output_embed", False)),
        dropout=float(g("dropout", 0.1)),
        attention_dropout=float(g("attention_dropout", 0.0)),
        activation_dropout=float(g("activation_dropout", 0.0)),
        encoder_normalize_before=bool(g("encoder_normalize_before", False)),
        decoder_normalize_before=bool(g("decoder_normalize_before", False)),
        no_scale_embedding=bool(g("no_scale_embedding", False)),
        max_source_positions=int(g("max_source_positions", 1024)),
        max_target_positions=int(g("max_target_positions", 1024)),
    )


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


def load_model(path: str) -> LoadedModel:
    """Load a train.py checkpoint as a standalone :class:`SuperTransformer` (CPU, eval mode)."""
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a corrupt file can raise almost anything from the unpickler
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {msg}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a fairseq checkpoint")
    cfg = state.get("cfg") or {}
    args = cfg.get("model") if isinstance(cfg, dict) else None
    args = args if args is not None else state.get("args")
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
    opt = options_from_args(args, src_vocab, tgt_vocab)
    shape = sub if getattr(args, "train_subtransformer", False) and sub is not None else space.super_config()
    model = SuperTransformer(shape, opt)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the saved config: {str(e).splitlines()[0]}") from None
    model.eval()
    return LoadedModel(model=model, space=space, sub_config=sub, args=args, path=path)


def strip_checkpoint(src: str, dst: str, dtype: Optional[torch.dtype] = torch.float32) -> int:
    """Write ``src`` without optimizer state (model weights + the config it was built from) to ``dst``, atomically.

    The result loads with :func:`load_model`, ``evo_search.py --restore-file`` and ``train.py --inherit-from``; it does
    not resume training. Returns the number of bytes written.
    """
    load_model(src)  # one clear error for anything that is not a transformersuper checkpoint
    state = torch.load(src, map_location="cpu", weights_only=False)
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
    tmp = dst + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save(keep, tmp)
    os.replace(tmp, dst)
    return os.path.getsize(dst)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hat.checkpoint",
                                 description="checkpoint tools: strip SRC DST (weights + config, no optimizer state)")
    ap.add_argument("command", choices=["strip"])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--fp16", action="store_true", help="store the weights in fp16 (half the size; loads as fp32)")
    a = ap.parse_args(argv)
    n = strip_checkpoint(a.src, a.dst, torch.float16 if a.fp16 else torch.float32)
    print(f"{a.dst}: {n / 1e6:.1f} MB (weights + config of {a.src})")
    return 0


if __name__ == "__main__":
    from hat.cli import run

    run(main)
