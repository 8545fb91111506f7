"""HAT's own checkpoints (MIT HAN Lab's fairseq-0.8 code: ``fairseq/models/transformer_super.py`` and
``fairseq/modules/*_super.py``) mapped onto this project's model: detection, weights, saved args. torch only.

HAT writes ``{'args': Namespace, 'model': state_dict, 'optimizer_history', 'extra_state', 'last_optimizer_state'}``
(``fairseq/checkpoint_utils.py``, ``save_state``). Its ``model`` is always the whole SuperTransformer: a SubTransformer
trained with ``--train-subtransformer`` is the same super-shaped model whose sampled corner was trained, its
architecture in the args' ``*_subtransformer`` keys. Weights may be fp16 (HAT's configs train with ``fp16: True``).

Weights (HAT key -> ours; ``i`` a layer, ``A`` = ``self_attn`` or ``encoder_attn``, ``Q`` = qkv dim, HAT's 512; shapes
of the WMT'14 En-De space0 SuperTransformer, 640 wide, FFN 3072)::

    encoder.embed_tokens.weight [V,640]             encoder.embed_tokens.weight (decoder.*: the same tensor when
    decoder.embed_tokens.weight [V,640]             decoder.embed_tokens.weight  share-all-embeddings)
    decoder.embed_out [V,640] (no shared output)    decoder.output_projection.weight
    {encoder,decoder}.layers.i.A.in_proj_weight     rows [0:Q] -> A.q_proj.weight, [Q:2Q] -> A.k_proj.weight,
        [3Q, 640]  (fused: A's query and key/value   [2Q:3Q] -> A.v_proj.weight; input columns are the
        inputs have the same super width)           SuperTransformer's width in both (HAT slices them the same way)
    decoder.layers.i.encoder_attn.{q,k,v}_proj_weight  A.{q,k,v}_proj.weight (HAT's separate projections, used
        [Q, dec] / [Q, enc] / [Q, enc]              when encoder-embed-dim != decoder-embed-dim)
    ....A.in_proj_bias [3Q]                         [0:Q] / [Q:2Q] / [2Q:3Q] -> A.q_proj / k_proj / v_proj.bias
    ....A.out_proj.{weight [640,Q], bias}           A.out_proj.{weight, bias}
    ....{self_attn,encoder_attn,final}_layer_norm.*  same names
    ....fc1.* [3072,640], fc2.* [640,3072]          same names
    {encoder,decoder}.layer_norm.* (normalize-before only)  same names
    ....layers.i.layer_norms.{0,1,2}.*               the names above (fairseq < 0.7 names; HAT renames them too)
    {encoder,decoder}.version [1] (=3)              dropped
    {encoder,decoder}.embed_positions._float_tensor  dropped: sinusoidal positions are computed, as HAT does, from
        (and an old .weights table)                 the SuperTransformer-wide table cut to the sampled width
                                                    (HAT: ``positions[..., :sample_embed_dim]``); recorded as the
                                                    buffer {encoder,decoder}.embed_positions.table_dim = 640

Saved args -> ours: the super dims (``encoder_embed_dim`` ... ``qkv_dim``; an unset qkv dim is HAT's default, the
embed dim), the ``*_choice`` lists of a SuperTransformer (``qkv_dim_choice`` = [qkv dim]: HAT fixes it), a
SubTransformer's ``*_subtransformer`` keys (+ ``qkv_dim_subtransformer`` = the qkv dim; its space is its super dims
alone: HAT's parser defaults fill a SubTransformer's choice lists with values that do not fit), share flags, layer
norm placement, dropouts, positions limits, and the task's languages and criterion. The embedding scale (sqrt of the
sampled width), post-norm default, relu, the causal and padding masks and the arbitrary encoder-decoder attention
(-1 / 1 / 2: the last 1 / 2 / 3 encoder layers, concatenated last first) are the same in both models.

Unmappable (one-line error): learned or no positional embeddings, ``--vocab-original-scaling``, adaptive softmax or
input, ``decoder_output_dim`` != ``decoder_embed_dim``, an activation other than relu, ``--no-decoder-final-norm``
with pre-norm, a qkv dim that differs per side, and HAT's arbitrary encoder-decoder attention where it reads something
else than ours: with pre-norm encoders (HAT normalises only the last layer it feeds) and with fewer encoder layers
than the SuperTransformer's (HAT's skipped layers repeat the last output); none of HAT's published spaces has either.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from hat.errors import CheckpointError

_SIDES = ("encoder", "decoder")
_OLD_LAYER_NORMS = {"encoder": ("self_attn_layer_norm", "final_layer_norm"),
                    "decoder": ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")}
# keys whose name and shape are the same in both layouts
_SAME = re.compile(r"(encoder|decoder)\.(layer_norm\.(weight|bias)|layers\.\d+\.("
                   r"(self_attn|encoder_attn)\.out_proj\.(weight|bias)|"
                   r"(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm|fc1|fc2)\.(weight|bias)))")
_DROPPED = re.compile(r"(encoder|decoder)\.(version|embed_positions\.(_float_tensor|weights))")
_ATTN = re.compile(r"((?:encoder|decoder)\.layers\.\d+\.(?:self_attn|encoder_attn))\."
                   r"(in_proj_weight|in_proj_bias|[qkv]_proj_weight)")
_LAYER = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.")
TABLE_DIM_KEY = "{}.embed_positions.table_dim"  # our buffer (hat.modules.elastic.ElasticSinusoidalPositions)


def is_hat_state(model_state: Mapping) -> bool:
    """A state dict in HAT's layout: fused self-attention projections (``self_attn.in_proj_weight``, HAT always fuses
    them) and none of the ``encoder.core.`` keys of this project's fairseq model."""
    keys = list(model_state.keys())
    return (any(k.endswith(".self_attn.in_proj_weight") for k in keys)
            and not any(k.startswith(("encoder.core.", "decoder.core.")) for k in keys))


def is_hat_checkpoint(state) -> bool:
    return isinstance(state, dict) and isinstance(state.get("model"), Mapping) and is_hat_state(state["model"])


def _unmappable(source: str, what: str) -> CheckpointError:
    return CheckpointError(f"{source}: HAT checkpoint with {what}: this model cannot compute what HAT's does "
                           f"(see hat/hat_layout.py)")


def hat_state_to_ours(hat: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """HAT's weights -> this project's core model keys (``encoder.layers.0.self_attn.q_proj.weight``, ..., no
    ``.core.``), at HAT's (super) shapes and dtype (fp16 from HAT's fp16 training: ``load_state_dict`` converts while
    copying), plus the position tables' widths as
    ``{encoder,decoder}.embed_positions.table_dim``. Shape-driven: the qkv dim is the fused projection's rows / 3."""
    left = dict(hat)
    out: Dict[str, torch.Tensor] = {}

    for side in _SIDES:
        if f"{side}.embed_positions.weight" in left:
            raise _unmappable(source, f"learned positional embeddings ({side}-learned-pos)")
    for k in list(left):
        if _DROPPED.fullmatch(k):
            del left[k]
            continue
        m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.layer_norms\.(\d)\.(weight|bias)", k)
        if m:
            side, i, j, p = m.groups()
            names = _OLD_LAYER_NORMS[side]
            if int(j) >= len(names):
                raise CheckpointError(f"{source}: unexpected key {k} in a HAT checkpoint")
            left[f"{side}.layers.{i}.{names[int(j)]}.{p}"] = left.pop(k)
    widths = {}
    for side in _SIDES:
        key = f"{side}.embed_tokens.weight"
        if key not in left:
            raise CheckpointError(f"{source}: HAT checkpoint without {key}")
        t = left.pop(key)
        out[key] = t
        widths[side] = int(t.shape[1])
    if "decoder.embed_out" in left:
        out["decoder.output_projection.weight"] = left.pop("decoder.embed_out")
    for prefix in sorted({m.group(1) for m in map(_ATTN.fullmatch, list(left)) if m}):
        if f"{prefix}.bias_k" in left or f"{prefix}.bias_v" in left:
            raise _unmappable(source, "attention bias_k/bias_v (add-bias-kv)")
        try:
            if f"{prefix}.in_proj_weight" in left:
                w = left.pop(f"{prefix}.in_proj_weight")
                if w.shape[0] % 3:
                    raise CheckpointError(f"{source}: {prefix}.in_proj_weight has {w.shape[0]} rows, not 3 x qkv dim")
                qkv = w.shape[0] // 3
                parts = [w[j * qkv:(j + 1) * qkv] for j in range(3)]
            else:
                parts = [left.pop(f"{prefix}.{n}_proj_weight") for n in "qkv"]
                qkv = int(parts[0].shape[0])
            b = left.pop(f"{prefix}.in_proj_bias")
        except KeyError as e:
            raise CheckpointError(f"{source}: HAT checkpoint without {e.args[0]}") from None
        if b.shape[0] != 3 * qkv or any(p.shape[0] != qkv for p in parts):
            raise CheckpointError(f"{source}: {prefix}: q/k/v projections and in_proj_bias disagree on the qkv dim")
        for n, w_, j in zip("qkv", parts, range(3)):
            out[f"{prefix}.{n}_proj.weight"] = w_.contiguous()
            out[f"{prefix}.{n}_proj.bias"] = b[j * qkv:(j + 1) * qkv].contiguous()
    for k in list(left):
        if _SAME.fullmatch(k):
            out[k] = left.pop(k)
    if left:
        k = sorted(left)[0]
        raise CheckpointError(f"{source}: unexpected key {k} in a HAT checkpoint ({len(left)} unmapped, e.g. "
                              f"project_out_dim / adaptive softmax are not supported)")
    for side in _SIDES:
        out[TABLE_DIM_KEY.format(side)] = torch.tensor(widths[side], dtype=torch.int64)
    return out


def position_table_dims(core_state: Mapping) -> Tuple[int, int]:
    """(encoder, decoder) position table widths recorded in a core state dict (0: the sampled width's own table)."""
    return tuple(int(core_state[TABLE_DIM_KEY.format(s)]) if TABLE_DIM_KEY.format(s) in core_state else 0
                 for s in _SIDES)


_SUPER = ("encoder_embed_dim", "decoder_embed_dim", "encoder_ffn_embed_dim", "decoder_ffn_embed_dim",
          "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads")
_CHOICES = ("encoder_embed_choice", "decoder_embed_choice", "encoder_ffn_embed_dim_choice",
            "decoder_ffn_embed_dim_choice", "encoder_layer_num_choice", "decoder_layer_num_choice",
            "encoder_self_attention_heads_choice", "decoder_self_attention_heads_choice",
            "decoder_ende_attention_heads_choice", "decoder_arbitrary_ende_attn_choice")
_SUB = ("encoder_embed_dim_subtransformer", "decoder_embed_dim_subtransformer",
        "encoder_ffn_embed_dim_all_subtransformer", "decoder_ffn_embed_dim_all_subtransformer",
        "encoder_layer_num_subtransformer", "decoder_layer_num_subtransformer",
        "encoder_self_attention_heads_all_subtransformer", "decoder_self_attention_heads_all_subtransformer",
        "decoder_ende_attention_heads_all_subtransformer", "decoder_arbitrary_ende_attn_all_subtransformer")
# the super dim each choice list of a SubTransformer's (one-point) space takes
_CHOICE_OF = dict(zip(_CHOICES, ("encoder_embed_dim", "decoder_embed_dim", "encoder_ffn_embed_dim",
                                 "decoder_ffn_embed_dim", "encoder_layers", "decoder_layers",
                                 "encoder_attention_heads", "decoder_attention_heads", "decoder_attention_heads",
                                 None)))


def hat_args_to_ours(args, source: str = "checkpoint", core_state: Optional[Mapping] = None) -> argparse.Namespace:
    """HAT's saved args -> the model args this project's loaders read (``hat.args``: ``space_from_args``,
    ``sub_config_from_args``, ``options_from_args``), plus the task's languages, data and criterion. With
    ``core_state`` (:func:`hat_state_to_ours`) the qkv dim is checked against the weights. One
    :class:`CheckpointError` line for what cannot be mapped."""
    from hat.args import ARCHS

    g = lambda name, default=None: getattr(args, name, default) if getattr(args, name, None) is not None else default
    arch = str(g("arch", ""))
    if not arch.startswith("transformersuper"):
        raise CheckpointError(f"{source} is not a transformersuper checkpoint (arch {arch!r})")
    for flag, what in (("encoder_learned_pos", "learned positional embeddings (encoder-learned-pos)"),
                       ("decoder_learned_pos", "learned positional embeddings (decoder-learned-pos)"),
                       ("no_token_positional_embeddings", "no positional embeddings"),
                       ("vocab_original_scaling", "vocab-original-scaling (embeddings scaled by the "
                                                  "SuperTransformer's width)"),
                       ("adaptive_softmax_cutoff", "an adaptive softmax"), ("adaptive_input", "adaptive input"),
                       ("tie_adaptive_weights", "tied adaptive weights")):
        if g(flag):
            raise _unmappable(source, what)
    if g("activation_fn", "relu") != "relu":
        raise _unmappable(source, f"activation {g('activation_fn')!r} (ours: relu)")
    try:
        dims = {k: int(g(k)) for k in _SUPER if g(k) is not None}
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: HAT checkpoint args with a non-integer model dim") from None
    missing = [k for k in _SUPER if k not in dims]
    if missing:
        raise CheckpointError(f"{source}: HAT checkpoint args without {missing[0]}")
    if g("decoder_output_dim", dims["decoder_embed_dim"]) != dims["decoder_embed_dim"]:
        raise _unmappable(source, "decoder-output-dim != decoder-embed-dim (an output projection)")
    if g("decoder_normalize_before", False) and g("no_decoder_final_norm", False):
        raise _unmappable(source, "no-decoder-final-norm with a pre-norm decoder")
    qkv = g("qkv_dim")
    if qkv is None:  # HAT's default: each attention's qkv dim is its query's embed dim
        if dims["encoder_embed_dim"] != dims["decoder_embed_dim"]:
            raise _unmappable(source, "no qkv-dim and encoder-embed-dim != decoder-embed-dim (a qkv dim per side)")
        qkv = dims["encoder_embed_dim"]
    qkv = int(qkv)
    if core_state is not None:
        w = core_state.get("encoder.layers.0.self_attn.q_proj.weight")
        if w is not None and int(w.shape[0]) != qkv:
            raise CheckpointError(f"{source}: args say qkv-dim {qkv} but the weights have {int(w.shape[0])}")
    sub = bool(g("train_subtransformer", False))
    ours = argparse.Namespace(
        arch=arch if arch in ARCHS else "transformersuper", task="translation_hat", hat_checkpoint=True,
        qkv_dim=qkv, train_subtransformer=sub,
        share_all_embeddings=bool(g("share_all_embeddings", False)),
        share_decoder_input_output_embed=bool(g("share_decoder_input_output_embed", False)
                                              or g("share_all_embeddings", False)),
        encoder_normalize_before=bool(g("encoder_normalize_before", False)),
        decoder_normalize_before=bool(g("decoder_normalize_before", False)),
        no_scale_embedding=False, activation_fn="relu",
        dropout=float(g("dropout", 0.1)), attention_dropout=float(g("attention_dropout", 0.0)),
        activation_dropout=float(g("activation_dropout", 0.0)),
        max_source_positions=int(g("max_source_positions", 1024)),
        max_target_positions=int(g("max_target_positions", 1024)),
        source_lang=g("source_lang"), target_lang=g("target_lang"), data=g("data"),
        criterion=g("criterion"), label_smoothing=g("label_smoothing"),
        **dims,
    )
    if sub:  # the SubTransformer's architecture; its space is its super dims alone
        for k in _SUB:
            setattr(ours, k, g(k))
        ours.qkv_dim_subtransformer = qkv
        for k, dim in _CHOICE_OF.items():
            setattr(ours, k, [dims[dim]] if dim else [-1])
        arb = list(g("decoder_arbitrary_ende_attn_all_subtransformer", []) or [])
        n_dec = int(g("decoder_layer_num_subtransformer", 0) or 0)
        arb = arb[:n_dec] if n_dec else arb
        enc_layers = [int(g("encoder_layer_num_subtransformer", dims["encoder_layers"]))]
    else:
        for k in _CHOICES:
            setattr(ours, k, g(k))
        arb = list(g("decoder_arbitrary_ende_attn_choice", [-1]) or [-1])
        enc_layers = list(g("encoder_layer_num_choice", [dims["encoder_layers"]]) or [dims["encoder_layers"]])
    ours.qkv_dim_choice = [qkv]
    if any(int(a) > -1 for a in arb):
        if ours.encoder_normalize_before:
            raise _unmappable(source, "arbitrary encoder-decoder attention over a pre-norm encoder (HAT normalises "
                                      "only the last encoder layer it feeds)")
        if any(int(n) < dims["encoder_layers"] for n in enc_layers):
            raise _unmappable(source, "arbitrary encoder-decoder attention with fewer encoder layers than the "
                                      "SuperTransformer's (HAT's skipped layers repeat the last output)")
    return ours


def slice_to(core_state: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size],
             source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The prefix of every tensor at ``shapes`` (a model's own state shapes): a SubTransformer's weights from the
    super-shaped tensors HAT writes (HAT's sampling takes prefixes on every axis, as ours does; layers the model does
    not have are left out). Copies."""
    layers = {m.groups() for m in map(_LAYER.match, shapes) if m}
    missing = sorted(set(shapes) - set(core_state))
    # layers beyond the model's: the SuperTransformer's layers a SubTransformer does not use
    extra = sorted(k for k in set(core_state) - set(shapes)
                   if not (_LAYER.match(k) and _LAYER.match(k).groups() not in layers))
    if missing or extra:
        what = f"missing key {missing[0]}" if missing else f"unexpected key {extra[0]}"
        raise CheckpointError(f"{source}: weights do not match the saved config ({what})")
    out = {}
    for k, shape in shapes.items():
        t = core_state[k]
        if t.dim() != len(shape) or any(n > m for n, m in zip(shape, t.shape)):
            raise CheckpointError(f"{source}: {k} is {tuple(t.shape)}, smaller than the model's {tuple(shape)}")
        out[k] = t[tuple(slice(0, n) for n in shape)].clone() if t.dim() else t.clone()
    return out


def convert_checkpoint(state: dict, source: str = "checkpoint") -> dict:
    """A HAT checkpoint (``{'args', 'model', ...}``) -> one in this project's layout: ``args`` (our model keys, see
    :func:`hat_args_to_ours`), ``model`` under ``encoder.core.*`` / ``decoder.core.*`` (a SubTransformer's weights
    cut to its own shape, as ``train.py --sub-configs`` writes them), a fresh optimizer history (HAT's optimizer
    state belongs to fairseq 0.8's fp16 optimizer and is not carried) and ``extra_state`` naming the source."""
    from hat.args import options_from_args, sub_config_from_args
    from hat.models.transformer import SuperTransformer

    args = state.get("args")
    if args is None:
        raise CheckpointError(f"{source}: a HAT checkpoint without its saved args")
    core = hat_state_to_ours(state["model"], source)
    ours = hat_args_to_ours(args, source, core)
    if ours.train_subtransformer:
        sub = sub_config_from_args(ours, source=f"{source} (HAT's *_subtransformer args)")
        if sub is None:
            raise CheckpointError(f"{source}: HAT SubTransformer checkpoint without its *_subtransformer args")
        enc, dec = position_table_dims(core)
        opt = dataclasses.replace(options_from_args(ours, core["encoder.embed_tokens.weight"].shape[0],
                                                    core["decoder.embed_tokens.weight"].shape[0]),
                                  encoder_position_table_dim=enc, decoder_position_table_dim=dec)
        try:
            with torch.device("meta"):
                shapes = {k: v.shape for k, v in SuperTransformer(sub, opt).state_dict().items()}
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from None
        core = slice_to(core, shapes, source)
    model = {}
    for k, v in core.items():
        side, rest = k.split(".", 1)
        model[f"{side}.core.{rest}"] = v
    hist = (state.get("optimizer_history") or [{}])[-1]
    return {
        "args": ours,
        "model": model,
        "optimizer_history": [{"criterion_name": hist.get("criterion_name", "LabelSmoothedCrossEntropyCriterion"),
                               "optimizer_name": "none (converted from HAT)", "lr_scheduler_state": {"best": None},
                               "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "converted_from_hat": source,
                        "hat_num_updates": hist.get("num_updates")},
    }


def upgrade_state_dict(core, state_dict: Dict[str, torch.Tensor], prefix: str = "") -> None:
    """In place, before a state dict is loaded into the fairseq model around ``core`` (a
    :class:`~hat.models.transformer.SuperTransformer`; its weights under ``<prefix>.encoder.core.*``): HAT's keys are
    mapped (:func:`hat_state_to_ours`) and cut to ``core``'s shapes, and ``core``'s position tables are set to what the
    weights record (``embed_positions.table_dim``; none: the sampled width's own table)."""
    p = f"{prefix}." if prefix else ""
    own = {k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}
    if is_hat_state(own):
        mapped = hat_state_to_ours(own, "state dict")
        enc, dec = position_table_dims(mapped)
        core.set_position_table_dims(enc, dec)
        mapped = slice_to(mapped, {k: v.shape for k, v in core.state_dict().items()}, "state dict")
        for k in own:
            del state_dict[p + k]
        for k, v in mapped.items():
            side, rest = k.split(".", 1)
            state_dict[f"{p}{side}.core.{rest}"] = v
        return
    dims = [state_dict.get(f"{p}{s}.core.embed_positions.table_dim") for s in _SIDES]
    core.set_position_table_dims(*(int(d) if d is not None else 0 for d in dims))
