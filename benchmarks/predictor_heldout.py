#!/usr/bin/env python
"""A latency predictor on SubTransformers sampled with a seed its dataset did not use, measured with the same
protocol: share within ±10 %, mean relative error, Spearman rank correlation (goal of issue 12: >= 95 % within ±10 %
and Spearman >= 0.95). Refuses a held-out file measured with another protocol than the predictor's.

    python benchmarks/predictor_heldout.py PREDICTOR.pt HELDOUT.csv
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    import numpy as np

    from hat.latency.dataset import read_table
    from hat.latency.protocol import Protocol
    from hat.predictor import LatencyPredictor, metrics

    argv = sys.argv[1:] if argv is None else argv
    pred = LatencyPredictor.load(argv[0])
    data = read_table(argv[1])
    if pred.protocol is None or len(data.protocols) != 1:
        print("error: both the predictor and the held-out file must record one protocol", file=sys.stderr)
        return 2
    held = Protocol.from_json(data.protocols[0])
    why = pred.protocol.mismatch(held) or (None if pred.protocol.machine == held.machine else
                                           f"machine {pred.protocol.machine!r} vs {held.machine!r}")
    if why:
        print(f"error: the held-out file was measured another way ({why})", file=sys.stderr)
        return 2
    p = np.asarray(pred.predict(data.configs))
    m = metrics(data.latency, p)
    print(f"{len(data)} held-out SubTransformers ({os.path.basename(argv[1])}, {data.source}; {held.describe()}) vs "
          f"predicted:mlp ({os.path.basename(argv[0])}): within ±10 % {100 * m['within10']:.1f} %, MRE "
          f"{100 * m['mape']:.2f} %, Spearman {m['spearman']:.4f}; goal >= 95 % and >= 0.95: "
          f"{'met' if m['within10'] >= 0.95 and m['spearman'] >= 0.95 else 'not met'}")
    print(json.dumps({k: float(v) for k, v in m.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
