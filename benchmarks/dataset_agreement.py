#!/usr/bin/env python
"""How well does a latency dataset agree with itself? Two CSVs of the same configs measured with the same protocol
(e.g. the dataset and a second pass, or parallel workers against one serial process): per config the ratio of the
two totals (encoder + decoder), the share within ±5 % and ±10 %, and the mean absolute difference. A predictor
cannot be expected to agree with a measurement better than the measurement agrees with itself.

    python benchmarks/dataset_agreement.py A.csv B.csv [--label-a dataset --label-b again]
"""
import csv
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def totals(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return ({r["key"]: float(r["latency_mean_encoder"]) + float(r["latency_mean_decoder"]) for r in rows},
            {r["protocol"] for r in rows}, rows[0]["source"])


def main(argv=None):
    from hat.latency.protocol import Protocol

    argv = sys.argv[1:] if argv is None else argv
    a_path, b_path = argv[0], argv[1]
    (a, pa, sa), (b, pb, sb) = totals(a_path), totals(b_path)
    proto_a, proto_b = (Protocol.from_json(next(iter(p))) for p in (pa, pb))
    why = proto_a.mismatch(proto_b)
    if why or len(pa) != 1 or len(pb) != 1:
        print(f"error: the two files were not measured with one protocol each, the same ({why})", file=sys.stderr)
        return 2
    keys = sorted(set(a) & set(b))
    ratio = [b[k] / a[k] for k in keys]
    dev = [abs(r - 1) for r in ratio]
    out = {"a": a_path, "b": b_path, "configs": len(keys), "protocol": proto_a.describe(), "source": sa,
           "within5": sum(d <= 0.05 for d in dev) / len(dev), "within10": sum(d <= 0.10 for d in dev) / len(dev),
           "mean_abs_diff": statistics.mean(dev), "median_ratio_b_over_a": statistics.median(ratio)}
    print(f"{len(keys)} configs in both ({sa}; {proto_a.describe()}):")
    print(f"  {os.path.basename(b_path)} / {os.path.basename(a_path)}: median ratio {out['median_ratio_b_over_a']:.3f}, "
          f"mean |difference| {100 * out['mean_abs_diff']:.2f} %, within ±5 % {100 * out['within5']:.1f} %, "
          f"within ±10 % {100 * out['within10']:.1f} %")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
