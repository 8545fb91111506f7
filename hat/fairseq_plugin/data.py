"""fairseq's binarized data, read without a task: source token ids of one split (calibration and sample inputs for
convert2rknn.py)."""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

from hat.errors import HatError


def infer_langs(data_dir: str, split: str) -> Tuple[str, str]:
    """(source, target) language from fairseq's file names ``<split>.<src>-<tgt>.<lang>.idx``."""
    for f in sorted(os.listdir(data_dir)):
        parts = f.split(".")
        if len(parts) == 4 and parts[0] == split and parts[3] == "idx" and "-" in parts[1]:
            src, tgt = parts[1].split("-", 1)
            return src, tgt
    raise HatError(f"no binarized {split} split in {data_dir} (expected {split}.<src>-<tgt>.<lang>.idx)")


def load_split(data_dir: str, split: str, src: Optional[str] = None, tgt: Optional[str] = None,
               limit: Optional[int] = None) -> List[List[int]]:
    """Source token ids (EOS-terminated, as fairseq binarized them) of a split."""
    from hat.fairseq_plugin.args import quiet_fairseq_imports

    if not data_dir or not os.path.isdir(data_dir):
        raise HatError(f"data directory not found: {data_dir}")
    if src is None or tgt is None:
        isrc, itgt = infer_langs(data_dir, split)
        src, tgt = src or isrc, tgt or itgt
    prefix = os.path.join(data_dir, f"{split}.{src}-{tgt}.{src}")
    if not os.path.isfile(prefix + ".idx"):
        raise HatError(f"binarized split not found: {prefix}.idx")
    quiet_fairseq_imports()
    logging.getLogger("fairseq.data.data_utils").setLevel(logging.WARNING)
    from fairseq.data import data_utils

    ds = data_utils.load_indexed_dataset(prefix, None)
    n = len(ds) if limit is None else min(limit, len(ds))
    return [ds[i].tolist() for i in range(n)]
