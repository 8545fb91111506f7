"""fairseq's dictionary conventions, in one place: the special symbols' ids and the size of a ``dict.*.txt``."""
from __future__ import annotations

import os

BOS, PAD, EOS, UNK = 0, 1, 2, 3  # fairseq Dictionary: <s>, <pad>, </s>, <unk>, in this order, before any word
N_SPECIAL = 4


def dict_size(path: str) -> int:
    """Vocabulary size of a model built on ``path`` (one word per line, plus fairseq's four special symbols)."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f) + N_SPECIAL


def find_dict(data_dir: str, lang=None):
    """``dict.<lang>.txt`` in ``data_dir`` (any ``dict.*.txt`` when ``lang`` is None or absent), or None."""
    cands = [os.path.join(data_dir, f"dict.{lang}.txt")] if lang else []
    if os.path.isdir(data_dir):
        cands += sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir)
                        if f.startswith("dict.") and f.endswith(".txt"))
    return next((p for p in cands if os.path.isfile(p)), None)
