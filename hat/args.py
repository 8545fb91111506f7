"""Arguments -> what a stage works with, without fairseq: one place for the model keys, the architectures' defaults,
the latency keys and :func:`stage_context` (args -> search space, model options, measuring protocol).

Every stage builds its context here, whether its arguments came from fairseq's parser (train.py, evo_search.py,
generate.py: :mod:`hat.fairseq_plugin.args`) or from :func:`parse_args` (latency_dataset.py, latency_predictor.py,
which run without fairseq). The fairseq plugin registers the same model keys and architectures from this module.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from hat.config import float_between, int_at_least
from hat.errors import ConfigError
from hat.latency.protocol import ESTIMATORS, Protocol
from hat.space import CHOICE_KEYS, SUB_KEYS, SUPER_KEYS, SearchSpace, SubConfig

# ---- the model: architectures and their defaults -----------------------------------------------------------------
# arch name -> defaults applied before the shared ones (an explicit YAML key or flag always wins)
_SIDES = ("encoder", "decoder")
ARCHS: Dict[str, Dict[str, object]] = {
    "transformersuper": {},
    "transformersuper_wmt_en_de": {"dropout": 0.3, "attention_dropout": 0.1},
    "transformersuper_wmt_en_fr": {"dropout": 0.1, "attention_dropout": 0.1},
    "transformersuper_iwslt_de_en": {**{f"{s}_{k}": v for s in _SIDES for k, v in
                                        (("embed_dim", 640), ("ffn_embed_dim", 2048), ("attention_heads", 4))},
                                     "dropout": 0.3, "attention_dropout": 0.1},
    # small enough to train on two CPU cores in minutes (the embedded demo corpus)
    "transformersuper_demo": {**{f"{s}_{k}": v for s in _SIDES for k, v in
                                 (("embed_dim", 256), ("ffn_embed_dim", 512), ("layers", 3), ("attention_heads", 4))},
                              "qkv_dim": 256, "dropout": 0.1, "attention_dropout": 0.0},
}
_LIST_SUB_KEYS = {k for k in SUB_KEYS if "-all-" in k}


def _default(args, name, value):
    if getattr(args, name, None) is None:
        setattr(args, name, value)


def apply_arch_defaults(args, arch: Optional[str] = None) -> None:
    """Fill what ``args`` leaves unset from ``arch`` (default: ``args.arch``), then the shared defaults; a space that
    was not given is the SuperTransformer alone (one choice per gene)."""
    arch = arch or getattr(args, "arch", None) or "transformersuper"
    for name, value in ARCHS.get(arch, {}).items():
        _default(args, name, value)
    for name, value in (("dropout", 0.1), ("attention_dropout", 0.0), ("activation_dropout", 0.0),
                        ("activation_fn", "relu")):
        _default(args, name, value)
    for side in _SIDES:
        _default(args, f"{side}_embed_dim", 512)
        _default(args, f"{side}_ffn_embed_dim", 2048)
        _default(args, f"{side}_layers", 6)
        _default(args, f"{side}_attention_heads", 8)
    _default(args, "qkv_dim", 512)
    for side in _SIDES:
        _default(args, f"{side}_embed_choice", [getattr(args, f"{side}_embed_dim")])
        _default(args, f"{side}_ffn_embed_dim_choice", [getattr(args, f"{side}_ffn_embed_dim")])
        _default(args, f"{side}_layer_num_choice", [getattr(args, f"{side}_layers")])
        _default(args, f"{side}_self_attention_heads_choice", [getattr(args, f"{side}_attention_heads")])
    _default(args, "decoder_ende_attention_heads_choice", [args.decoder_attention_heads])
    _default(args, "decoder_arbitrary_ende_attn_choice", [-1])
    _default(args, "qkv_dim_choice", [args.qkv_dim])


def add_model_args(parser) -> None:
    """The model's keys (fairseq registers them through ``TransformerSuperModel.add_args``; fairseq-free stages
    through :func:`parse_args`)."""
    add = parser.add_argument
    add("--dropout", type=float, metavar="D", help="dropout probability")
    add("--attention-dropout", type=float, metavar="D", help="dropout probability for attention weights")
    add("--activation-dropout", type=float, metavar="D", help="dropout probability after the FFN activation")
    add("--activation-fn", choices=["relu"], help="activation function (relu, as HAT)")
    add("--encoder-normalize-before", action="store_true", help="pre-norm encoder layers")
    add("--decoder-normalize-before", action="store_true", help="pre-norm decoder layers")
    add("--share-all-embeddings", action="store_true", help="share encoder, decoder and output embeddings")
    add("--share-decoder-input-output-embed", action="store_true", help="share decoder input/output embeddings")
    add("--no-scale-embedding", action="store_true", help="do not scale embeddings by sqrt(dim)")
    for key in SUPER_KEYS:
        add("--" + key, type=int, metavar="N", help=f"SuperTransformer {key}")
    for key in CHOICE_KEYS:
        add("--" + key, type=int, nargs="+", metavar="N", help=f"search space: {key}")
    add_sub_config_args(parser)
    add("--train-subtransformer", action="store_true", help="train one fixed SubTransformer (its own weights)")
    add("--inherit-from", metavar="CHECKPOINT",
        help="with --train-subtransformer: start from this SuperTransformer's weights (sliced to the "
             "SubTransformer) instead of a random init; a resumed run keeps its own checkpoint_last.pt")
    add_supernet_recipe_args(parser)


SUPERNET_SAMPLING = ("uniform", "sandwich")


def add_supernet_recipe_args(parser) -> None:
    """How a SuperTransformer is trained: HAT's one uniform sample per update, or the sandwich rule with in-place
    distillation (see :mod:`hat.fairseq_plugin.tasks`)."""
    add = parser.add_argument
    add("--supernet-sampling", choices=SUPERNET_SAMPLING, default=None,
        help="uniform: one SubTransformer sampled per update (HAT, the default); sandwich: the largest, the smallest "
             "and sandwich-random-configs sampled ones each update, gradients summed")
    add("--sandwich-random-configs", type=int, default=None, metavar="N",
        help="with supernet-sampling sandwich: sampled SubTransformers per update besides the largest and smallest "
             "(default 2)")
    add("--inplace-distill", type=float, default=None, metavar="A",
        help="with supernet-sampling sandwich: every SubTransformer but the largest learns from A x the largest's "
             "output distribution (detached) + (1 - A) x the labels; 0 = labels only (default 0.5)")
    add("--sandwich-no-smallest", action="store_true", default=None,
        help="with supernet-sampling sandwich: leave the smallest SubTransformer out of every update (the largest and "
             "sandwich-random-configs sampled ones only)")


def supernet_recipe(args):
    """(sampling, random configs, distillation weight, smallest too) from model args, checked; ``None`` for HAT's
    uniform."""
    sampling = getattr(args, "supernet_sampling", None) or "uniform"
    n = getattr(args, "sandwich_random_configs", None)
    a = getattr(args, "inplace_distill", None)
    no_smallest = bool(getattr(args, "sandwich_no_smallest", None))
    if sampling == "uniform":
        if n is not None or a is not None or no_smallest:
            raise ConfigError("sandwich-random-configs / inplace-distill / sandwich-no-smallest need "
                              "supernet-sampling: sandwich")
        return None
    n = 2 if n is None else int(n)
    a = 0.5 if a is None else float(a)
    if n < 0:
        raise ConfigError(f"sandwich-random-configs must be >= 0, got {n}")
    if not 0.0 <= a <= 1.0:
        raise ConfigError(f"inplace-distill must be in [0, 1], got {a}")
    if no_smallest and n < 1:
        raise ConfigError("sandwich-no-smallest needs sandwich-random-configs >= 1 (else only the largest trains)")
    return sampling, n, a, not no_smallest


def add_sub_config_args(parser) -> None:
    """One SubTransformer's keys (HAT's ``*-subtransformer`` + ``qkv-dim-subtransformer``)."""
    for key in SUB_KEYS:
        parser.add_argument("--" + key, type=int, nargs="+" if key in _LIST_SUB_KEYS else None, metavar="N",
                            help=f"SubTransformer: {key}")


def space_from_args(args, source: str = "model args") -> SearchSpace:
    d = {k: getattr(args, k.replace("-", "_"), None) for k in SUPER_KEYS + CHOICE_KEYS}
    return SearchSpace.from_dict({k: v for k, v in d.items() if v is not None}, source=source)


def sub_config_from_args(args, source: str = "SubTransformer config") -> Optional[SubConfig]:
    d = {k: getattr(args, k.replace("-", "_"), None) for k in SUB_KEYS}
    if all(v is None for v in d.values()):
        return None
    return SubConfig.from_hat_dict(d, source=source)


def options_from_args(args, src_vocab: int, tgt_vocab: int, padding_idx: int = 1):
    from hat.models.transformer import ModelOptions

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


# ---- latency measurement ------------------------------------------------------------------------------------------
LATENCY_BACKENDS = ("cpu", "gpu", "onnxruntime", "npu", "npu-adb")


def add_latency_args(parser) -> None:
    g = parser.add_argument_group("latency measurement (HAT's keys + ours)")
    names = {o for a in parser._actions for o in a.option_strings}
    add = lambda flag, **kw: g.add_argument(flag, **kw) if flag not in names else None
    add("--latcpu", action="store_true", help="measure on the CPU with torch (HAT)")
    add("--latgpu", action="store_true", help="measure on the GPU with torch (HAT)")
    add("--latnpu", action="store_true",
        help="the RK3588 NPU: latency_dataset.py builds an RKNN bundle for the board (latency-backend npu); "
             "train.py --rknn-name NAME times a converted RKNN model on the board")
    add("--latiter", type=int_at_least(1), default=None,
        help="timed runs per SubTransformer (HAT; protocol default 20)")
    add("--latsilent", action="store_true", help="no per-run printing (HAT)")
    add("--lat-warmup", type=int_at_least(0), default=None,
        help="untimed runs before timing, before each pass (protocol default 5)")
    add("--lat-passes", type=int_at_least(1), default=None,
        help="take the latiter timed runs in this many passes (it must divide latiter), the SubTransformers measured "
             "together (lat-block) taking their passes in turn, so that a slow spell of a shared machine hits one "
             "pass, not all runs (protocol default 1; benchmarks/README.md, noise floor)")
    add("--lat-block", type=int_at_least(1), default=None,
        help="with lat-passes: SubTransformers measured together, their passes interleaved; part of the protocol (how "
             "far apart a config's passes lie): fewer configs (the search's measure-top candidates, the demo's final "
             "models) are measured as if in a full block (protocol default 1)")
    add("--lat-trim", type=float_between(0.0, 0.5, high_open=True), default=None,
        help="trimmed-mean: share of fastest and of slowest runs dropped (protocol default 0.1)")
    add("--lat-estimator", choices=ESTIMATORS, default=None,
        help="one latency from the timed runs (protocol default call-min: the sum of each call's fastest run; "
             "step-min: every decoder step after the first costed at the fastest of all of them; graph backends)")
    add("--lat-pin", action="store_true", default=None, help="pin the measuring process to one core")
    add("--lat-src-len", type=int_at_least(1), default=None,
        help="source length of the dummy sentence (HAT: 30 WMT, 23 IWSLT; protocol default 30)")
    add("--lat-tgt-len", type=int_at_least(1), default=None, help="decoder steps per run (protocol default 30)")
    add("--lat-threads", type=int_at_least(1), default=None,
        help="intra-op threads for cpu/onnxruntime (default: all cores)")
    add("--lat-workers", type=int_at_least(1), default=1,
        help="latency_dataset.py: measuring processes, each pinned to its own core (needs lat-pin); recorded in "
             "the protocol: parallel workers slow each other (on the H200 host, 14 workers measured a median 10 %% "
             "slower than one process), so their rows are not comparable with a serial measurement; with "
             "latency-backend npu: processes building the board bundle (not recorded: the board measures one model "
             "at a time)")
    add("--lat-vocab-size", type=int_at_least(1), default=None,
        help="vocabulary size when the data dir has no dictionary")
    add("--lat-dataset-path", default="latency_dataset/lat.csv", help="CSV to write (appended row by row)")
    add("--lat-dataset-size", type=int_at_least(1), default=200, help="number of sampled SubTransformers")
    add("--lat-seed", type=int, default=1, help="sampling seed")
    add("--latency-backend", choices=LATENCY_BACKENDS, default=None, help="backend (default: from latcpu/latgpu)")
    add("--lat-work-dir", default=None, help="where backends keep exported models (onnxruntime, npu)")
    add("--rknn-name", default=None, help="RKNN model to measure with --latnpu")
    add("--target-platform", default="rk3588", help="RKNN target platform (npu backends)")
    add("--npu-core-mask", default="auto", help="NPU core mask on the board (auto, 0, 1, 2, 0_1, 0_1_2)")
    add("--device-id", default=None, help="adb device id for the npu-adb backend")
    add("--lat-keep-models", action="store_true",
        help="keep the exported ONNX/RKNN files in lat-work-dir after measuring (onnxruntime, npu, npu-adb)")
    add("--collect", default=None, metavar="RESULTS.jsonl",
        help="merge the board runner's results (latency-backend npu) into lat-dataset-path instead of measuring")


def vocab_size(args) -> int:
    """``lat-vocab-size``, else the size of the data dir's dictionary (the source language's when known)."""
    from hat.vocab import dict_size, find_dict

    if getattr(args, "lat_vocab_size", None):
        return int(args.lat_vocab_size)
    data = str(getattr(args, "data", "") or "").split(":")[0]
    path = find_dict(data, getattr(args, "source_lang", None))
    if path is None:
        hint = data_source_hint(data)
        how = f"{hint} fetches that task's data; or give lat-vocab-size" if hint else "give lat-vocab-size"
        raise ConfigError(f"no dictionary in data dir {data!r}: {how}")
    return dict_size(path)


def data_source_hint(data: str) -> Optional[str]:
    """The command that fetches ``data`` when it is the data dir of a task under ``configs/`` that has a
    ``get_preprocessed.sh`` (the paper tasks: ``bash configs/wmt14.en-de/get_preprocessed.sh``), else None. The
    task is found by its SuperTransformer YAMLs' ``data`` key, so a task added the same way is found too."""
    import glob
    import os

    from hat.config import load_yaml

    if not data:
        return None
    want = os.path.normpath(data)
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    for script in sorted(glob.glob(os.path.join(configs, "*", "get_preprocessed.sh"))):
        task = os.path.dirname(script)
        for yml in sorted(glob.glob(os.path.join(task, "supertransformer", "*.yml"))):
            try:
                named = load_yaml(yml).get("data")
            except ConfigError:
                continue
            if named and os.path.normpath(str(named)) == want:
                return f"bash configs/{os.path.basename(task)}/get_preprocessed.sh"
    return None


def hat_save_dir(configs: Optional[str]) -> Optional[str]:
    """HAT's default checkpoint folder (its ``utils.handle_save_path``): ``checkpoints/`` + the ``--configs`` path
    below ``configs/`` without its extension (``checkpoints/wmt14.en-de/subtransformer/wmt14ende_npu@200ms``); None
    for a YAML outside ``configs/``. train.py saves there unless save-dir is given; convert2onnx.py loads from there
    unless model-path is given."""
    import os

    if not configs:
        return None
    rel = os.path.normpath(configs)
    if os.path.isabs(rel):
        rel = os.path.relpath(rel)
    parts = rel.split(os.sep)
    if len(parts) < 2 or parts[0] != "configs":
        return None
    return os.path.join("checkpoints", *parts[1:-1], os.path.splitext(parts[-1])[0])


# HAT's hardware flags -> the backends that measure on that hardware (the first is the flag's own backend)
HARDWARE_FLAGS = {"latcpu": ("cpu", "onnxruntime"), "latgpu": ("gpu",), "latnpu": ("npu", "npu-adb")}


def backend_name(args) -> str:
    """The latency backend: ``latency-backend``, else the one HAT's hardware flag names (``latcpu`` cpu, ``latgpu``
    gpu, ``latnpu`` npu). A flag that names other hardware than ``latency-backend``, or two flags, are an error."""
    flags = [f for f in HARDWARE_FLAGS if getattr(args, f, False)]
    if len(flags) > 1:
        raise ConfigError(f"{' and '.join('--' + f for f in flags)} name different hardware: give one of them")
    chosen = getattr(args, "latency_backend", None)
    if chosen:
        if flags and chosen not in HARDWARE_FLAGS[flags[0]]:
            raise ConfigError(f"--{flags[0]} asks for {'/'.join(HARDWARE_FLAGS[flags[0]])} but latency-backend is "
                              f"{chosen}: drop one of them")
        return chosen
    if flags:
        return HARDWARE_FLAGS[flags[0]][0]
    raise ConfigError("choose a backend: latency-backend (cpu, gpu, onnxruntime, npu, npu-adb), latcpu, latgpu or "
                      "latnpu")


# protocol field -> the flag (dest) that sets it
PROTOCOL_FLAGS = {"src_len": "lat_src_len", "tgt_len": "lat_tgt_len", "beam": "beam", "warmup": "lat_warmup",
                  "repeats": "latiter", "passes": "lat_passes", "block": "lat_block", "trim": "lat_trim",
                  "estimator": "lat_estimator", "threads": "lat_threads", "pin": "lat_pin"}


def given(args) -> set:
    """The dests the user set (a YAML key or a flag), as recorded by both parsers; defaults are not 'given'."""
    return set(getattr(args, "given_keys", ()) or ())


def protocol_overrides(args) -> dict:
    """Protocol fields the YAML files or flags set explicitly."""
    g = given(args)
    out = {field: getattr(args, dest) for field, dest in PROTOCOL_FLAGS.items()
           if dest in g and getattr(args, dest, None) is not None}
    if out.get("beam") is not None:
        out["beam"] = int(out["beam"])
    return out


def protocol_of(args):
    """The measuring protocol the latency keys describe (the protocol's defaults for what they leave unset; fairseq's
    own beam default is not taken: the protocol's beam is HAT's 4 unless ``beam`` is given)."""
    return Protocol(**protocol_overrides(args))


def check_protocol(args, protocol, what: str) -> None:
    """The protocol to use comes from ``what`` (a predictor checkpoint, a dataset); a latency key the user set to
    another value is an error, not silently overridden."""
    wanted = protocol_overrides(args)
    diff = [f"{PROTOCOL_FLAGS[k].replace('_', '-')} {v!r} vs {getattr(protocol, k)!r}" for k, v in wanted.items()
            if getattr(protocol, k) != v]
    if diff:
        raise ConfigError(f"the latency keys differ from the protocol of {what} ({'; '.join(diff)}): measure with "
                          f"that protocol (drop those keys) or build a dataset and predictor with yours")


# ---- evolutionary search -----------------------------------------------------------------------------------------
def add_evo_args(parser):
    g = parser.add_argument_group("evolutionary search (HAT's keys + ours)")
    names = {o for a in parser._actions for o in a.option_strings}
    add = lambda flag, **kw: g.add_argument(flag, **kw) if flag not in names else None
    add("--evo-configs", help="YAML with the search settings")
    add("--evo-iter", type=int_at_least(1), default=30)
    add("--population-size", type=int_at_least(1), default=125)
    add("--parent-size", type=int_at_least(1), default=25)
    add("--mutation-size", type=int_at_least(0), default=50)
    add("--crossover-size", type=int_at_least(0), default=50)
    add("--mutation-prob", type=float_between(0.0, 1.0), default=0.3)
    add("--evo-seed", type=int, default=1, help="seed of the evolution")
    add("--ckpt-path", help="latency predictor checkpoint (latency_predictor.py)")
    add("--feature-norm", type=float, nargs="+", help="HAT's; ignored: normalisation travels in the predictor")
    add("--lat-norm", type=float, help="HAT's; ignored: normalisation travels in the predictor")
    add("--write-config-path", help="where the best SubTransformer's YAML is written")
    add("--latency-constraint", type=float, default=None, help="ms (predicted, or measured with latency-source)")
    add("--memory-constraint", type=float, default=None, help="MB at memory-precision (weights + activations)")
    add("--memory-precision", default="fp16", choices=["fp32", "fp16", "int8"], help="deployed precision")
    add("--valid-cnt-max", type=int_at_least(1), default=int(1e9), help="validation batches per candidate")
    add("--latency-source", default=None, choices=["predictor", "measure"],
        help="the winner's check: measure (default where the predictor's backend runs here) re-measures the best "
             "candidates with the predictor's protocol and keeps the best that fits; predictor trusts the prediction")
    add("--measure-top", type=int_at_least(0), default=5, help="candidates re-measured (best validation loss first)")
    add("--measure-margin", type=float_between(0.0, 0.5, high_open=True), default=0.0,
        help="the re-measured latency must fit the latency constraint less this share (e.g. 0.03): the candidates of a "
             "search sit at the constraint, so one whose measurement fits by less than the protocol's own noise is "
             "likely over it when measured again (default 0: the constraint itself)")
    add("--candidates-path", help="CSV of every evaluated candidate (default: next to write-config-path)")
    add("--plot-path", help="PNG of loss vs latency (default: next to write-config-path)")
    add("--state-path", help="search state for resuming (default: next to write-config-path)")


# ---- the context every stage starts from --------------------------------------------------------------------------
@dataclass
class StageContext:
    space: SearchSpace
    options: object  # hat.models.transformer.ModelOptions
    protocol: object  # hat.latency.protocol.Protocol
    sub_config: Optional[SubConfig]  # the SubTransformer the YAML/flags describe, if any
    vocab: int


def stage_context(args, source: Optional[str] = None) -> StageContext:
    """args (from either parser) -> the search space, the model options, the measuring protocol. The architecture's
    defaults are applied first; the vocabulary comes from ``lat-vocab-size`` or the data dir's dictionary."""
    apply_arch_defaults(args)
    source = source or getattr(args, "configs", None) or "command line"
    space = space_from_args(args, source=source)
    sub = sub_config_from_args(args, source=source)
    vocab = vocab_size(args)
    protocol = protocol_of(args)
    return StageContext(space=space, options=options_from_args(args, vocab, vocab), protocol=protocol,
                        sub_config=sub, vocab=vocab)


# ---- a fairseq-free parser for the stages that do not train ---------------------------------------------------------
# fairseq keys that HAT's shared YAMLs carry (copied from the supertransformer YAML into latency_dataset/*.yml) and
# that a stage without fairseq accepts and ignores; tests check that fairseq's parser knows every one of them.
IGNORED_FAIRSEQ_KEYS = (
    "task", "max-tokens", "max-tokens-valid", "batch-size", "batch-size-valid", "update-freq", "max-update",
    "max-epoch", "optimizer", "adam-betas", "adam-eps", "weight-decay", "clip-norm", "lr", "min-lr", "lr-scheduler",
    "lr-shrink", "warmup-updates", "warmup-init-lr", "lr-period-updates", "t-mult", "criterion", "label-smoothing",
    "save-dir", "save-interval", "save-interval-updates", "keep-last-epochs", "keep-interval-updates",
    "no-epoch-checkpoints", "keep-best-checkpoints", "restore-file", "reset-optimizer", "reset-dataloader",
    "reset-lr-scheduler", "reset-meters", "validate-interval", "validate-interval-updates", "log-interval",
    "log-format", "tensorboard-logdir", "fp16", "amp", "bf16", "memory-efficient-fp16", "fp16-init-scale",
    "distributed-world-size", "ddp-backend", "num-workers", "seed", "skip-invalid-size-inputs-valid-test",
    "max-source-positions", "max-target-positions", "left-pad-source", "left-pad-target", "dataset-impl",
    "best-checkpoint-metric", "maximize-best-checkpoint-metric", "patience", "required-batch-size-multiple",
    "train-subset", "valid-subset", "disable-validation", "eval-bleu", "lenpen", "remove-bpe", "no-progress-bar",
    "user-dir", "threshold-loss-scale", "no-save", "no-last-checkpoints",
)


def parse_args(argv: Sequence[str], description: str, hooks: Sequence[Callable] = (add_latency_args,),
               config_flags: Sequence[str] = ("--configs", "--sub-configs"), ignored: Sequence[str] = ()):
    """Parse a stage that needs no fairseq: the YAML files of ``config_flags`` (in order), then the command line.
    Knows the model keys, ``arch``, ``data`` (positional or key), languages, ``beam``, ``cpu`` and what ``hooks``
    add; fairseq's training keys (:data:`IGNORED_FAIRSEQ_KEYS`) are accepted and ignored; any other key is one
    :class:`ConfigError` naming the key and its file."""
    from hat.config import Loaded, given_dests, parser_option_names, split_config_flags, stage_parser, to_argv

    found, cli = split_config_flags(argv, config_flags)
    loaded = Loaded([found.get(f.lstrip("-").replace("-", "_")) for f in config_flags])
    p = stage_parser(description)
    p.add_argument("data", nargs="?", default=None, help="binarized data dir (for its dictionary)")
    p.add_argument("--data", dest="data_flag", default=None, help=argparse.SUPPRESS)
    p.add_argument("-a", "--arch", default="transformersuper", choices=sorted(ARCHS))
    p.add_argument("-s", "--source-lang", default=None)
    p.add_argument("-t", "--target-lang", default=None)
    p.add_argument("--beam", type=int, default=4, help="beam width the decoder is measured at")
    p.add_argument("--cpu", action="store_true", help="(fairseq's) use the CPU")
    for c in config_flags:
        p.add_argument(c, help="YAML file whose keys are flags of this script")
    add_model_args(p)
    for hook in hooks:
        hook(p)
    ign = p.add_argument_group("fairseq training keys (accepted, not used by this stage)")
    known = set(parser_option_names(p))
    for key in tuple(IGNORED_FAIRSEQ_KEYS) + tuple(ignored):
        if "--" + key not in known:
            ign.add_argument("--" + key, nargs="*", default=None, help=argparse.SUPPRESS)
    loaded.check_known(parser_option_names(p), ignore=("data", "max-lr"))
    values = {k: v for k, v in loaded.values.items() if k != "max-lr"}
    yaml_argv, positional = to_argv(values, positional=("data",))
    args = p.parse_args(positional + yaml_argv + list(cli))
    if args.data_flag:
        args.data = args.data_flag
    del args.data_flag
    args.data = args.data or "."
    args.given_keys = sorted(given_dests(values, cli))
    for c in config_flags:
        setattr(args, c.lstrip("-").replace("-", "_"), found.get(c.lstrip("-").replace("-", "_")))
    return args
