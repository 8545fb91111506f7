"""What the host feeds the exported graphs, and the onnxruntime session that runs them. numpy only (no torch).

The one home of these helpers: :mod:`hat.export.graphs` (the mask value baked into the graphs' contract),
:mod:`hat.export.onnx` (sample inputs for tracing and parity), :mod:`hat.export.decode` (the search),
:mod:`hat.export.rknn` and the latency backends all import them from here, so that no two export modules import
each other.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hat.vocab import EOS, PAD

# additive mask value for "may not attend" (finite: fp16-safe, and exp(MASK_VALUE + score) == 0 in fp32 and fp16)
MASK_VALUE = -10000.0


def prepare_source(sentences: Sequence[Sequence[int]], src_len: int, pad: int = PAD, eos: int = EOS):
    """Token id lists -> (src_tokens int64, src_positions int64, src_mask float32), each (len(sentences), src_len).

    A sentence gets EOS appended if it does not end with one; one longer than ``src_len`` keeps its first
    ``src_len - 1`` tokens and EOS. Right-padded with ``pad``; positions count real tokens from ``pad + 1``."""
    n = len(sentences)
    tokens = np.full((n, src_len), pad, np.int64)
    positions = np.full((n, src_len), pad, np.int64)
    mask = np.full((n, src_len), MASK_VALUE, np.float32)
    for i, s in enumerate(sentences):
        s = [int(t) for t in s]
        if not s or s[-1] != eos:
            s = s + [eos]
        if len(s) > src_len:
            s = s[: src_len - 1] + [eos]
        tokens[i, : len(s)] = s
        positions[i, : len(s)] = np.arange(pad + 1, pad + 1 + len(s))
        mask[i, : len(s)] = 0.0
    return tokens, positions, mask


def self_mask(tgt_len: int, step: int) -> np.ndarray:
    """Additive self-attention mask (1, tgt_len) for decoder step ``step``: cache slots 0..step valid."""
    m = np.full((1, tgt_len), MASK_VALUE, np.float32)
    m[:, : step + 1] = 0.0
    return m


def ort_session(path, threads: int = 1):
    """An onnxruntime CPU session for ``path`` (or a graph's bytes; ``threads`` intra-op threads, quiet)."""
    try:
        import onnxruntime as ort
    except ImportError:
        from hat.export import ToolkitMissingError

        raise ToolkitMissingError("onnxruntime is not installed (pip install onnxruntime)") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
