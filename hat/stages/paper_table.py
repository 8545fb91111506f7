"""python -m hat.paper_table: the SubTransformers HAT published, as a table (our parameter and FLOP counts next to
HAT's published figures, and optionally predicted / measured latency; see :mod:`hat.paper_table`)."""
from __future__ import annotations

from typing import Optional, Sequence

from hat import paper_table as T
from hat.config import stage_parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = stage_parser(T.__doc__.split("\n\n")[0], prog="python -m hat.paper_table")
    p.add_argument("--task", help="wmt14.en-de, wmt14.en-fr, wmt19.en-de or iwslt14.de-en (HAT's short names too); "
                                  "default: all")
    p.add_argument("--predictor", metavar="CKPT",
                   help="latency predictor checkpoint (latency_predictor.py): fills predicted(ms) for the rows "
                        "inside its search space")
    p.add_argument("--latency-csv", metavar="CSV",
                   help="latency dataset (latency_dataset.py's CSV): fills measured(ms) for the rows whose "
                        "architecture it holds")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    # everything that can fail is done before the first line is printed
    tasks = [T.task_dir(args.task)] if args.task else [v[0] for v in T.TASKS.values()]
    predicted = T.PredictedLatency(args.predictor) if args.predictor else None
    measured = T.MeasuredLatency(args.latency_csv) if args.latency_csv else None
    tables = [(d, T.rows(d, predicted, measured), T.checkpoint_only(d)) for d in tasks]

    for i, (d, table, missing) in enumerate(tables):
        label, length = next((v[1], v[2]) for v in T.TASKS.values() if v[0] == d)
        if i:
            print()
        print(f"{label}: configs/{d}/subtransformer/HAT_*.yml  (params [counted]: without embeddings and output layer; "
              f"GFLOPs [analytic]: {length} source + {length} target tokens)")
        print(T.render(table, markdown=args.markdown, predicted_label=predicted and predicted.label,
                       measured_label=measured and measured.label))
        for line in T.na_notes(table):
            print(line)
        if missing:
            print("published checkpoints without an architecture file in HAT's repo: " + ", ".join(missing))
    print()
    print(T.PUBLISHED_NOTE)
    for column in (predicted, measured):
        if column is not None:
            print(column.describe())
    return 0
