#!/usr/bin/env python
"""How well does a latency dataset agree with itself? Two CSVs of the same configs measured with the same protocol
(e.g. the dataset and a second pass, or parallel workers against one serial process): per config the ratio of the
two totals (encoder + decoder), the share within ±5 % and ±10 %, and the mean absolute difference. A predictor
cannot be expected to agree with a measurement better than the measurement agrees with itself.

    python benchmarks/dataset_agreement.py A.csv B.csv [--label-a dataset --label-b again] [--differ FIELD]

``--differ FIELD`` compares instead: the two protocols must differ in that one field (e.g. ``graphs``: the same
configs measured the same way on two versions of the exported graphs) and agree in every other; the ratio's 5th and
95th percentiles and the encoder's and decoder's median ratios are printed beside.
"""
import csv
import json
import os
import statistics
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def totals(path):
    """(total latency by key, the file's protocols, its source, {part: latency by key})."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    parts = {part: {r["key"]: float(r[f"latency_mean_{part}"]) for r in rows} for part in ("encoder", "decoder")}
    return ({k: parts["encoder"][k] + parts["decoder"][k] for k in parts["encoder"]},
            {r["protocol"] for r in rows}, rows[0]["source"], parts)


def main(argv=None):
    from hat.latency.protocol import Protocol

    argv = sys.argv[1:] if argv is None else argv
    differ = None
    if "--differ" in argv:
        i = argv.index("--differ")
        differ, argv = argv[i + 1] if i + 1 < len(argv) else "", argv[:i] + argv[i + 2:]
    a_path, b_path = argv[0], argv[1]
    (a, pa, sa, parts_a), (b, pb, sb, parts_b) = totals(a_path), totals(b_path)
    proto_a, proto_b = (Protocol.from_json(next(iter(p))) for p in (pa, pb))
    if differ is not None:
        if differ not in proto_a.to_dict() or getattr(proto_a, differ) == getattr(proto_b, differ):
            print(f"error: --differ {differ!r}: not a protocol field in which the two files differ", file=sys.stderr)
            return 2
        why = proto_a.mismatch(replace(proto_b, **{differ: getattr(proto_a, differ)}))
    else:
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
    if differ is not None:
        parts = {part: statistics.median(parts_b[part][k] / parts_a[part][k] for k in keys)
                 for part in ("encoder", "decoder")}
        q = statistics.quantiles(ratio, n=20)
        out.update({"differ": differ, differ: [getattr(proto_a, differ), getattr(proto_b, differ)],
                    "ratio_p5": q[0], "ratio_p95": q[-1], "median_ratio_encoder": parts["encoder"],
                    "median_ratio_decoder": parts["decoder"]})
        print(f"  {differ} {getattr(proto_a, differ)!r} -> {getattr(proto_b, differ)!r}: total ratio 5th-95th "
              f"percentile {q[0]:.3f}-{q[-1]:.3f}; median ratio encoder {parts['encoder']:.3f}, decoder "
              f"{parts['decoder']:.3f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
