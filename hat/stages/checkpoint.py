"""python -m hat.checkpoint strip SRC DST [--fp16]: a checkpoint without optimizer state (weights + config)."""
from __future__ import annotations

from hat.config import stage_parser


def main(argv=None) -> int:
    import torch

    from hat.fairseq_plugin.checkpoint import strip_checkpoint

    ap = stage_parser("checkpoint tools: strip SRC DST (weights + config, no optimizer state)",
                      prog="python -m hat.checkpoint")
    ap.add_argument("command", choices=["strip"])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--fp16", action="store_true", help="store the weights in fp16 (half the size; loads as fp32)")
    a = ap.parse_args(argv)
    n = strip_checkpoint(a.src, a.dst, torch.float16 if a.fp16 else torch.float32)
    print(f"{a.dst}: {n / 1e6:.1f} MB (weights + config of {a.src})")
    return 0
