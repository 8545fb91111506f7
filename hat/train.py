"""train.py: SuperTransformer training (one SubTransformer sampled per update), or one SubTransformer.

``train.py --configs=A.yml [--sub-configs=B.yml] [--any-fairseq-flag value]``. As in HAT, a SubTransformer is
trained with ``--configs=<its *-subtransformer YAML> --sub-configs=<subtransformer/common.yml>``; giving
``--sub-configs`` turns on ``--train-subtransformer``.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from hat.config import Loaded, parser_option_names, split_config_flags, to_argv
from hat.errors import ConfigError, HatError

DEFAULT_TASK = "translation_hat"


def _hat_compat(values: dict) -> dict:
    """HAT's YAML was written for fairseq 0.8: its cosine schedule took ``max-lr`` (peak) and ``lr`` (floor).
    fairseq 0.12 calls these ``lr`` and ``min-lr``; translate so HAT's configs keep their meaning."""
    values = dict(values)
    if "max-lr" in values:
        peak = values.pop("max-lr")
        if values.get("lr-scheduler") == "cosine":
            if "lr" in values and "min-lr" not in values:
                values["min-lr"] = values["lr"][0] if isinstance(values["lr"], list) else values["lr"]
            values["lr"] = peak
        else:
            values.setdefault("lr", peak)
    if values.get("lr-scheduler") == "cosine" and "lr-shrink" in values and float(values["lr-shrink"]) == 1.0:
        values.pop("lr-shrink")  # HAT's no-op value; fairseq 0.12 only accepts it with lr-period-updates
    return values


def quiet_fairseq_imports():
    """fairseq checkpoints are pickles (torch>=2.6 needs weights_only=False); its speech tasks log a tensorboardX
    hint at import that has nothing to do with translation."""
    import logging

    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)


def build_args(argv: Sequence[str], extra_parser_hook=None, data_optional: bool = False,
               extra_config_flags: Sequence[str] = ()):
    """Parse train.py's command line into fairseq args. Raises ConfigError for unknown keys/flags."""
    quiet_fairseq_imports()
    from fairseq import options

    import hat.fairseq_plugin  # noqa: F401  (registers transformersuper and translation_hat)

    flags = ("--configs", "--sub-configs") + tuple(extra_config_flags)
    found, cli = split_config_flags(argv, flags)
    loaded = Loaded([found.get(f.lstrip("-").replace("-", "_")) for f in flags])
    values = _hat_compat(loaded.values)
    yaml_argv, positional = to_argv(values, positional=("data",))
    cli = list(cli)
    if "--data" in cli:  # allow the data dir as a flag too (YAML key 'data')
        i = cli.index("--data")
        positional = [cli[i + 1]]
        del cli[i : i + 2]
    elif any(tok.startswith("--data=") for tok in cli):
        tok = next(t for t in cli if t.startswith("--data="))
        positional = [tok.split("=", 1)[1]]
        cli.remove(tok)
    if data_optional and not positional:
        positional = ["."]  # stages that need no data dir (e.g. latency with lat-vocab-size)
    full = positional + yaml_argv + cli
    if not any(t == "--task" or t.startswith("--task=") for t in full):
        full = ["--task", DEFAULT_TASK] + full
    if found.get("sub_configs") and "--train-subtransformer" not in full:
        full.append("--train-subtransformer")

    parser = options.get_training_parser()
    parser.add_argument("--configs", help="YAML file whose keys are flags of this script")
    parser.add_argument("--sub-configs", help="second YAML file (SubTransformer training settings)")
    add_evaluation_args(parser)
    if extra_parser_hook:
        extra_parser_hook(parser)
    args, extra = options.parse_args_and_arch(parser, full, parse_known=True)
    loaded.check_known(parser_option_names(parser), ignore=("data", "max-lr"))
    for f in extra_config_flags:
        setattr(args, f.lstrip("-").replace("-", "_"), found.get(f.lstrip("-").replace("-", "_")))
    if extra:
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
    args.configs, args.sub_configs = found.get("configs"), found.get("sub_configs")
    if not getattr(args, "user_dir", None):
        # spawned distributed workers import the plugin through fairseq's own --user-dir mechanism
        args.user_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fairseq_plugin")
    _validate_space(args)
    return args


def add_evaluation_args(parser):
    """Generation keys (beam, lenpen, ...) are valid in every stage's YAML: generate.py reads the same files."""
    from fairseq import options

    options.add_generation_args(parser)
    group = parser.add_argument_group("HAT evaluation (generate.py)")
    names = {o for a in parser._actions for o in a.option_strings}
    if "--path" not in names:
        group.add_argument("--path", help="checkpoint to evaluate")
    if "--gen-subset" not in names:
        group.add_argument("--gen-subset", default="test", help="split to translate (test, valid)")
    group.add_argument("--spm-model", help="sentencepiece model (default: <data>/spm.model)")
    group.add_argument("--reference", help="detokenized reference file (default: <data>/raw/<subset>.<tgt>)")
    if "--results-path" not in names:
        group.add_argument("--results-path", help="write detokenized hypotheses here (one per line, in input order)")


def _validate_space(args):
    """Fail before fairseq starts (nothing written) if the space or the SubTransformer does not fit."""
    if getattr(args, "arch", "").startswith("transformersuper"):
        from hat.checkpoint import space_from_args, sub_config_from_args
        from hat.fairseq_plugin.models import base_architecture

        base_architecture(args)
        source = args.configs or "command line"
        space = space_from_args(args, source=source)
        sub = sub_config_from_args(args, source=source)
        if sub is not None:
            space.fits(sub, source=source)
        elif getattr(args, "train_subtransformer", False):
            raise ConfigError(f"{source}: --train-subtransformer needs the *-subtransformer keys")
        if getattr(args, "inherit_from", None):
            from hat.checkpoint import load_model

            if sub is None or not getattr(args, "train_subtransformer", False):
                raise ConfigError("inherit-from needs a SubTransformer to train (train.py --sub-configs)")
            sup = load_model(args.inherit_from)
            try:
                sup.model.check_fits(sub)
            except ValueError as e:
                raise ConfigError(f"inherit-from {args.inherit_from}: the SubTransformer does not fit its "
                                  f"SuperTransformer: {e}") from None


def measure_latency(args) -> int:
    """HAT's ``train.py --latcpu/--latgpu``: measure the SubTransformer the configs describe (the largest of the space
    when none) with the latency protocol, instead of training. ``--latnpu --rknn-name NAME`` times a converted RKNN
    model on the board."""
    from hat.checkpoint import options_from_args, space_from_args, sub_config_from_args
    from hat.latency.protocol import measure
    from hat.latency.run import protocol_of, vocab_size

    if args.latnpu:
        from hat.latency.run import measure_rknn

        return measure_rknn(args)
    space = space_from_args(args, source=args.configs or "command line")
    cfg = sub_config_from_args(args) or space.largest()
    vocab = vocab_size(args)
    opt = options_from_args(args, vocab, vocab)
    protocol = protocol_of(args)
    from hat.latency.torch_backend import TorchBackend

    backend = TorchBackend(opt, protocol, device="cuda" if args.latgpu else "cpu", threads=args.lat_threads)
    m = measure(backend, cfg, protocol)
    print(f"| SubTransformer {cfg.key()}: {m.summary()}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from hat.latency.run import add_latency_args

    argv = sys.argv[1:] if argv is None else argv
    args = build_args(argv, extra_parser_hook=add_latency_args,
                      data_optional=any(f in argv for f in ("--latcpu", "--latgpu", "--latnpu")))
    if args.latcpu or args.latgpu or args.latnpu:
        return measure_latency(args)
    from fairseq import distributed_utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli.train import main as fairseq_train

    if not os.path.isdir(args.data.split(":")[0]):
        raise HatError(f"data directory not found: {args.data} (run the data preparation step first)")
    cfg = convert_namespace_to_omegaconf(args)
    distributed_utils.call_main(cfg, fairseq_train)
    return 0
