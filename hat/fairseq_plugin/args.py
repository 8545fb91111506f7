"""fairseq's argument parser for the stages that run fairseq (train.py, evo_search.py, generate.py): HAT's YAML files
+ command line -> fairseq args, with one-line errors for every user mistake (unknown key, missing arch, bad value).
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Sequence

from hat.config import Loaded, given_dests, parser_option_names, split_config_flags, to_argv
from hat.errors import ConfigError

DEFAULT_TASK = "translation_hat"
PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))


def quiet_fairseq_imports():
    """fairseq checkpoints are pickles (torch>=2.6 needs weights_only=False: torch then warns on every load, which
    says nothing to a user); its speech tasks log a tensorboardX hint at import that has nothing to do with
    translation."""
    import logging
    import warnings

    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected")
    logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)


def hat_compat(values: dict) -> dict:
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
    # dest raw_input: fairseq's own config has an `input` (fairseq-interactive's) that a None would break
    group.add_argument("--input", dest="raw_input", metavar="FILE",
                       help="translate raw text (one sentence a line; - = stdin) instead of a split: the task's "
                            "tokenization and BPE, then undone")
    group.add_argument("--print-sentences", action="store_true",
                       help="print fairseq's S-/T-/H-/D-/P- lines of every sentence (as HAT's generate.py)")
    group.add_argument("--detok-lang", metavar="LANG", help="Moses detokenizer language (default: en for a split's "
                                                            "SacreBLEU, as HAT's test.sh; the target for --input)")
    group.add_argument("--input-lowercase", action="store_true",
                       help="--input: lowercase after Moses tokenization (IWSLT'14's preprocessing)")
    group.add_argument("--input-normalize", action="store_true",
                       help="--input: Moses punctuation normalization first (WMT'14 En-Fr, WMT'19 En-De)")


def _data_positional(cli, positional):
    """The data dir may be given as a flag too (YAML key 'data')."""
    cli = list(cli)
    if "--data" in cli:
        i = cli.index("--data")
        if i + 1 >= len(cli):
            raise ConfigError("--data needs a directory")
        positional = [cli[i + 1]]
        del cli[i: i + 2]
    elif any(tok.startswith("--data=") for tok in cli):
        tok = next(t for t in cli if t.startswith("--data="))
        positional = [tok.split("=", 1)[1]]
        cli.remove(tok)
    return cli, positional


@contextlib.contextmanager
def _one_line_errors(prog: str):
    """argparse prints usage and exits 2; fairseq raises a bare RuntimeError for a missing arch. Both become one
    :class:`ConfigError` line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            yield
    except SystemExit as e:
        if e.code in (0, None):  # --help
            print(err.getvalue(), end="")
            raise
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"{prog}: bad arguments"
        raise ConfigError(msg.split(": error: ", 1)[-1]) from None
    except RuntimeError as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else "bad arguments") from None


def build_args(argv: Sequence[str], extra_parser_hook=None, data_optional: bool = False,
               extra_config_flags: Sequence[str] = ()):
    """Parse a fairseq stage's command line (``--configs``, ``--sub-configs`` and ``extra_config_flags`` YAML files,
    then flags) into fairseq args. Every user error is a :class:`ConfigError`."""
    quiet_fairseq_imports()
    from fairseq import options

    import hat.fairseq_plugin  # noqa: F401  (registers transformersuper and translation_hat)

    flags = ("--configs", "--sub-configs") + tuple(extra_config_flags)
    found, cli = split_config_flags(argv, flags)
    loaded = Loaded([found.get(f.lstrip("-").replace("-", "_")) for f in flags])
    values = hat_compat(loaded.values)
    yaml_argv, positional = to_argv(values, positional=("data",))
    cli, positional = _data_positional(cli, positional)
    if data_optional and not positional:
        positional = ["."]  # stages that need no data dir (e.g. latency with lat-vocab-size)
    full = positional + yaml_argv + cli
    if not any(t == "--task" or t.startswith("--task=") for t in full):
        full = ["--task", DEFAULT_TASK] + full
    if found.get("sub_configs") and "--train-subtransformer" not in full:
        full.append("--train-subtransformer")
    # a missing data dir or arch is reported after the keys were checked (an unknown key is the likelier mistake):
    # parse with placeholders, check, then say what is missing
    wants_help = "-h" in full or "--help" in full
    no_data = not positional and not wants_help
    no_arch = not any(t in ("--arch", "-a") or t.startswith("--arch=") for t in full) and not wants_help
    if no_data:
        full = ["."] + full
    if no_arch:
        full = full + ["--arch", "transformersuper"]
    parser = options.get_training_parser()
    parser.add_argument("--configs", help="YAML file whose keys are flags of this script")
    parser.add_argument("--sub-configs", help="second YAML file (SubTransformer training settings)")
    add_evaluation_args(parser)
    if extra_parser_hook:
        extra_parser_hook(parser)
    with _one_line_errors(parser.prog):
        args, extra = options.parse_args_and_arch(parser, full, parse_known=True)
    loaded.check_known(parser_option_names(parser), ignore=("data", "max-lr"))
    for f in extra_config_flags:
        setattr(args, f.lstrip("-").replace("-", "_"), found.get(f.lstrip("-").replace("-", "_")))
    if extra:
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
    given = ", ".join(v for v in found.values() if v) or "none"
    if no_arch:
        raise ConfigError(f"no model: set 'arch' in the YAML (e.g. arch: transformersuper_wmt_en_de) or give --arch "
                          f"(config files read: {given})")
    if no_data:
        raise ConfigError(f"no data directory: set 'data' in the YAML or give the data dir (config files read: "
                          f"{given})")
    args.configs, args.sub_configs = found.get("configs"), found.get("sub_configs")
    args.given_keys = sorted(given_dests(values, cli))
    if not getattr(args, "user_dir", None):
        # spawned distributed workers import the plugin through fairseq's own --user-dir mechanism
        args.user_dir = PLUGIN_DIR
    validate_space(args)
    return args


def validate_space(args):
    """Fail before fairseq starts (nothing written) if the space or the SubTransformer does not fit."""
    if not str(getattr(args, "arch", "")).startswith("transformersuper"):
        return
    from hat.args import apply_arch_defaults, space_from_args, sub_config_from_args, supernet_recipe

    apply_arch_defaults(args)
    source = args.configs or "command line"
    space = space_from_args(args, source=source)
    if supernet_recipe(args) is not None and getattr(args, "train_subtransformer", False):
        raise ConfigError(f"{source}: supernet-sampling: sandwich trains a SuperTransformer, not one SubTransformer "
                          "(--train-subtransformer)")
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
