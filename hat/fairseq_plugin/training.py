"""Run fairseq's training loop (single GPU/CPU or distributed) on args from :func:`hat.fairseq_plugin.args.build_args`."""
from __future__ import annotations

import os
import shutil

from hat.errors import CheckpointError, HatError


def train(args) -> None:
    from fairseq import distributed_utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli.train import main as fairseq_train

    data = str(args.data).split(":")[0]
    check_data_dir(data, getattr(args, "source_lang", None), getattr(args, "target_lang", None))
    save_dir = getattr(args, "save_dir", None) or "checkpoints"
    check_save_dir(save_dir)
    check_resume_file(args, save_dir)
    import logging
    import warnings

    logging.getLogger("hydra").setLevel(logging.WARNING)
    with warnings.catch_warnings():  # hydra's deprecation notices about how fairseq 0.12 calls it: not the user's
        warnings.simplefilter("ignore", UserWarning)
        cfg = convert_namespace_to_omegaconf(args)
    # hydra leaves the root logger at DEBUG; fairseq means INFO (its LOGLEVEL)
    logging.getLogger().setLevel(os.environ.get("LOGLEVEL", "INFO").upper())
    # torch's notices about how fairseq 0.12 calls it (pinned memory without a GPU, the old autocast API)
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.cuda\.amp\.autocast")
    made = not os.path.exists(save_dir)
    try:
        distributed_utils.call_main(cfg, fairseq_train)
    except BaseException:
        if made and os.path.isdir(save_dir) and not os.listdir(save_dir):
            shutil.rmtree(save_dir, ignore_errors=True)  # a failed first run leaves no empty save dir behind
        raise


def check_data_dir(data: str, src=None, tgt=None) -> None:
    """A binarized data dir has ``dict.<lang>.txt`` files and ``<split>.<src>-<tgt>.*`` files; say in one line what is
    missing instead of fairseq's 'Could not infer language pair' or FileNotFoundError."""
    if not data or not os.path.isdir(data):
        what = "is a file, not a directory" if data and os.path.exists(data) else "not found"
        raise HatError(f"data directory {data} {what} (run the data preparation step first)")
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
    for f in sorted(files):  # fairseq would stop at an assert deep in its dataset code
        if not f.endswith(".idx"):
            continue
        with open(os.path.join(data, f), "rb") as fh:
            head = fh.read(9)
        if not head.startswith(_INDEX_MAGICS):
            raise HatError(f"{os.path.join(data, f)} is not a fairseq index file (damaged?): run the data preparation "
                           f"step again")
        if f[:-4] + ".bin" not in files:
            raise HatError(f"{os.path.join(data, f[:-4])}.bin is missing beside its .idx: run the data preparation "
                           f"step again")


_INDEX_MAGICS = (b"MMIDIDX\x00\x00", b"TNTIDX\x00\x00")  # fairseq's mmap and cached/lazy index formats


def check_save_dir(save_dir: str) -> None:
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise HatError(f"save-dir {save_dir} is a file, not a directory; give a directory for the checkpoints")


def check_resume_file(args, save_dir: str) -> None:
    """The checkpoint fairseq would resume from (``restore-file``, by default ``<save-dir>/checkpoint_last.pt``) is
    readable, or one line says which file is broken, before fairseq starts."""
    from hat.checkpoint import check_readable, restore_file_for_training

    restore = getattr(args, "restore_file", None) or "checkpoint_last.pt"
    if restore == "checkpoint_last.pt":
        path = os.path.join(save_dir, "checkpoint_last.pt")
        if os.path.isfile(path):
            check_readable(path, f"cannot resume from {path} (the last checkpoint of an earlier run in save-dir "
                                 f"{save_dir})", "remove it to start again, or copy an intact checkpoint<N>.pt "
                                                 "there")
            converted = restore_file_for_training(path, save_dir)
            if converted != path:  # HAT's layout: resume from its conversion
                args.restore_file = converted
        return
    if not os.path.isfile(restore):
        raise CheckpointError(f"restore-file {restore} not found")
    check_readable(restore, f"cannot resume from restore-file {restore}", "give an intact checkpoint")
    args.restore_file = restore_file_for_training(restore, save_dir)  # converted when in HAT's layout
