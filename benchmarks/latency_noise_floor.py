#!/usr/bin/env python
"""Noise floor of a latency backend on this machine: the same SubTransformers re-measured several times.

Each repeat is a full protocol measurement (warm-up + timed runs, trimmed mean). Prints, per config, the relative
spread of the repeated totals (std / mean) and the share of repeats within +-10% of that config's median: a latency
predictor cannot be expected to do better than the backend agrees with itself.

    python benchmarks/latency_noise_floor.py --configs=configs/demo.de-en/latency_dataset/onnxruntime.yml \
        [--lat-threads 1] [--latiter 10] [--n-configs 5] [--repeats 5]
"""
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pop(argv, flag, default):
    if flag in argv:
        i = argv.index(flag)
        val = int(argv[i + 1])
        return val, argv[:i] + argv[i + 2:]
    return default, argv


def main(argv=None):
    from hat.args import add_latency_args, backend_name, parse_args, stage_context
    from hat.latency import backends
    from hat.latency.protocol import measure

    argv = sys.argv[1:] if argv is None else argv
    n_cfg, argv = pop(argv, "--n-configs", 5)
    reps, argv = pop(argv, "--repeats", 5)
    args = parse_args(argv, "latency noise floor: the same configs measured again", hooks=(add_latency_args,))
    ctx = stage_context(args)
    space, protocol = ctx.space, ctx.protocol
    backend = backends.make(backend_name(args), args, ctx.options, protocol)
    rng = random.Random(7)
    cvs, within = [], []
    for cfg in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(max(0, n_cfg - 2))]:
        handle = backend.load(cfg)
        try:
            totals = []
            for _ in range(reps):
                row = measure(backend, cfg, protocol, handle=handle).row()
                totals.append(row["latency_mean_encoder"] + row["latency_mean_decoder"])
        finally:
            backend.unload(handle)
        med = statistics.median(totals)
        cv = statistics.pstdev(totals) / statistics.mean(totals)
        share = sum(abs(t - med) <= 0.1 * med for t in totals) / len(totals)
        cvs.append(cv)
        within.append(share)
        print(f"{cfg.key()}: totals {', '.join(f'{t:.2f}' for t in totals)} ms; spread {cv:.1%}; within ±10% of median "
              f"{share:.0%} [{backend.source}]")
    print(f"noise floor over {len(cvs)} configs x {reps} repeats: mean spread {statistics.mean(cvs):.1%}, "
          f"repeats within ±10% of their median {statistics.mean(within):.0%} [{backend.source}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
