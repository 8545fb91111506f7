"""python -m hat.paper_table: the SubTransformers HAT published, as a table (our parameter and FLOP counts next to
HAT's figures; see :mod:`hat.paper_table`)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from hat import paper_table as T
from hat.config import stage_parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = stage_parser(T.__doc__.split("\n\n")[0], prog="python -m hat.paper_table")
    p.add_argument("--task", help="wmt14.en-de, wmt14.en-fr, wmt19.en-de or iwslt14.de-en (HAT's short names too); "
                                  "default: all")
    p.add_argument("--predictor", metavar="CKPT", help="latency predictor checkpoint (needs hat.predictor)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    predictor = None
    if args.predictor:
        predictor, why = T.load_predictor(args.predictor)
        if why:
            print(f"note: {why}", file=sys.stderr)
    tasks = [T.task_dir(args.task)] if args.task else [v[0] for v in T.TASKS.values()]
    for i, d in enumerate(tasks):
        label, length = next((v[1], v[2]) for v in T.TASKS.values() if v[0] == d)
        if i:
            print()
        print(f"{label}: configs/{d}/subtransformer/HAT_*.yml  (params without embeddings and output layer; "
              f"FLOPs at {length} source + {length} target tokens; pub = HAT's README)")
        print(T.render(T.rows(d, predictor), markdown=args.markdown))
        missing = T.checkpoint_only(d)
        if missing:
            print("published checkpoints without an architecture file in HAT's repo: " + ", ".join(missing))
    return 0


