"""Run fairseq's training loop (single GPU/CPU or distributed) on args from :func:`hat.fairseq_plugin.args.build_args`."""
from __future__ import annotations

import os

from hat.errors import HatError


def train(args) -> None:
    from fairseq import distributed_utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli.train import main as fairseq_train

    data = str(args.data).split(":")[0]
    if not os.path.isdir(data):
        raise HatError(f"data directory not found: {args.data} (run the data preparation step first)")
    check_data_dir(data, getattr(args, "source_lang", None), getattr(args, "target_lang", None))
    cfg = convert_namespace_to_omegaconf(args)
    distributed_utils.call_main(cfg, fairseq_train)


def check_data_dir(data: str, src=None, tgt=None) -> None:
    """A binarized data dir has ``dict.<lang>.txt`` files and ``<split>.<src>-<tgt>.*`` files; say in one line what is
    missing instead of fairseq's 'Could not infer language pair' or FileNotFoundError."""
    files = os.listdir(data)
    dicts = sorted(f for f in files if f.startswith("dict.") and f.endswith(".txt"))
    if not dicts:
        raise HatError(f"{data} holds no fairseq dictionary (dict.<lang>.txt): not a binarized data dir "
                       f"(run the data preparation step first)")
    for lang in (src, tgt):
        if lang and f"dict.{lang}.txt" not in files:
            raise HatError(f"{data}: dict.{lang}.txt not found (have {', '.join(dicts)})")
    if (src is None or tgt is None) and not any(f.count(".") >= 3 and "-" in f.split(".")[1] for f in files):
        raise HatError(f"{data} holds no binarized split (<split>.<src>-<tgt>.<lang>.bin): run the data "
                       f"preparation step first")
