"""fairseq model ``transformersuper``: the core SuperTransformer behind fairseq's encoder/decoder interfaces.

With ``--train-subtransformer`` (set by ``train.py --sub-configs``) the model is built at the SubTransformer's own
shape, so its checkpoint holds only that SubTransformer's weights.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)

from hat.args import (ARCHS, add_model_args, apply_arch_defaults, options_from_args, space_from_args,
                      sub_config_from_args)
from hat.models.transformer import SuperTransformer
from hat.space import SearchSpace, SubConfig

_CACHE_KEY = "hat_decoder_cache"


class HatEncoder(FairseqEncoder):
    def __init__(self, dictionary, core_encoder):
        super().__init__(dictionary)
        self.core = core_encoder

    def forward(self, src_tokens, src_lengths=None, **unused):
        return self.core(src_tokens)

    def reorder_encoder_out(self, encoder_out, new_order):
        return {
            "states": [s.index_select(0, new_order) for s in encoder_out["states"]],
            "padding_mask": encoder_out["padding_mask"].index_select(0, new_order),
        }

    def max_positions(self):
        return self.core.opt.max_source_positions


def _reorder(cache, new_order):
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, new_order)
    return {k: _reorder(v, new_order) for k, v in cache.items()}


class HatDecoder(FairseqIncrementalDecoder):
    def __init__(self, dictionary, core_decoder):
        super().__init__(dictionary)
        self.core = core_decoder

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, features_only=False, **unused):
        cache = None
        if incremental_state is not None:
            cache = incremental_state.setdefault(_CACHE_KEY, {})
        x = self.core(prev_output_tokens, encoder_out, cache=cache, features_only=features_only)
        return x, {"attn": None}

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **unused):
        return self.forward(prev_output_tokens, encoder_out, incremental_state, features_only=True)

    def output_layer(self, features, **unused):
        return self.core.output_layer(features)

    def reorder_incremental_state(self, incremental_state, new_order):
        if incremental_state is not None and _CACHE_KEY in incremental_state:
            incremental_state[_CACHE_KEY] = _reorder(incremental_state[_CACHE_KEY], new_order)

    def max_positions(self):
        return self.core.opt.max_target_positions


@register_model("transformersuper")
class TransformerSuperModel(FairseqEncoderDecoderModel):
    """HAT's SuperTransformer (weight-shared, elastic everything including qkv dim) as a fairseq model."""

    def __init__(self, args, core: SuperTransformer, space: SearchSpace, encoder, decoder):
        super().__init__(encoder, decoder)
        self.args = args
        self.space = space
        self.is_subtransformer = bool(getattr(args, "train_subtransformer", False))
        self.sample_seed = int(getattr(args, "seed", 1) or 1)
        self.__dict__["core"] = core  # not a submodule: its parameters are registered through encoder/decoder

    @staticmethod
    def add_args(parser):
        add_model_args(parser)

    @classmethod
    def build_model(cls, args, task):
        apply_arch_defaults(args)
        space = space_from_args(args)
        opt = options_from_args(
            args, len(task.source_dictionary), len(task.target_dictionary), task.source_dictionary.pad()
        )
        sub = sub_config_from_args(args)
        if getattr(args, "train_subtransformer", False):
            if sub is None:
                raise ValueError("--train-subtransformer needs the *-subtransformer keys (train.py --configs=SUB.yml)")
            shape = space.fits(sub)
        else:
            shape = space.super_config()
        core = SuperTransformer(shape, opt)
        model = cls(args, core, space, HatEncoder(task.source_dictionary, core.encoder),
                    HatDecoder(task.target_dictionary, core.decoder))
        if getattr(args, "inherit_from", None):
            if not getattr(args, "train_subtransformer", False):
                raise ValueError("--inherit-from needs --train-subtransformer (train.py --sub-configs)")
            inherit(core, sub, args.inherit_from)
        if sub is not None:
            model.set_sample_config(sub)
        return model

    # -- sampling -------------------------------------------------------------------------------------------
    def set_sample_config(self, cfg: SubConfig):
        self.core.set_sample_config(cfg)

    @property
    def sample_config(self) -> SubConfig:
        return self.core.sample_config

    def sample_for_update(self, update_num: int) -> SubConfig:
        return self.space.sample_for_update(self.sample_seed, update_num)

    def extract(self, cfg: Optional[SubConfig] = None) -> SuperTransformer:
        return self.core.extract(cfg)

    def max_positions(self):
        return (self.core.opt.max_source_positions, self.core.opt.max_target_positions)

    def upgrade_state_dict_named(self, state_dict, name):
        """fairseq calls this before every ``load_state_dict`` (trainer restore, checkpoint loading): weights in HAT's
        layout are mapped (and cut to this model's shape), and the position tables follow the weights
        (:func:`hat.hat_layout.upgrade_state_dict`)."""
        from hat.hat_layout import upgrade_state_dict

        upgrade_state_dict(self.core, state_dict, name)
        return super().upgrade_state_dict_named(state_dict, name)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **unused):
        enc = self.encoder(src_tokens, src_lengths)
        return self.decoder(prev_output_tokens, encoder_out=enc)


def inherit(core: SuperTransformer, sub: SubConfig, path: str) -> None:
    """Load the slices of a SuperTransformer checkpoint's weights that ``sub`` uses into ``core`` (built at sub)."""
    from hat.checkpoint import load_model

    sup = load_model(path)
    if (sup.model.opt.src_vocab, sup.model.opt.tgt_vocab) != (core.opt.src_vocab, core.opt.tgt_vocab):
        raise ValueError(f"--inherit-from {path}: vocabulary {sup.model.opt.src_vocab}/{sup.model.opt.tgt_vocab} "
                         f"differs from the data's {core.opt.src_vocab}/{core.opt.tgt_vocab}")
    opt = sup.model.opt  # positions as the SuperTransformer computes them (HAT's: its super-wide tables)
    core.set_position_table_dims(opt.encoder_position_table_dim, opt.decoder_position_table_dim)
    core.load_state_dict(sup.model.extract(sub).state_dict())


def _register_archs():
    """Every architecture of :data:`hat.args.ARCHS` (its defaults live there, shared with the fairseq-free stages)."""
    for arch in ARCHS:
        register_model_architecture("transformersuper", arch)(
            lambda args, arch=arch: apply_arch_defaults(args, arch))


_register_archs()
