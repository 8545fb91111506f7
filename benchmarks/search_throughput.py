#!/usr/bin/env python
"""Candidates evaluated per second by evo_search.py's fitness (validation loss with inherited weights) and the wall
time of HAT's default search (30 iterations x population 125) projected from it.

    python benchmarks/search_throughput.py --configs=configs/demo.de-en/supertransformer/space0.yml \
        --restore-file checkpoints/demo.de-en/supertransformer/space0/checkpoint_best.pt [--valid-cnt-max 10] [--n 20]
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from hat.args import add_evo_args, add_latency_args, apply_arch_defaults, space_from_args
    from hat.fairseq_plugin.args import build_args
    from hat.fairseq_plugin.valid_loss import ValidLoss

    argv = sys.argv[1:] if argv is None else argv
    n = 20
    if "--n" in argv:
        i = argv.index("--n")
        n = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]

    def hook(parser):
        add_latency_args(parser)
        add_evo_args(parser)

    args = build_args(argv, extra_parser_hook=hook)
    apply_arch_defaults(args)
    space = space_from_args(args)
    t0 = time.perf_counter()
    fitness = ValidLoss(args)
    setup = time.perf_counter() - t0
    rng = random.Random(1)
    cfgs = [space.sample(rng) for _ in range(n)]
    fitness(cfgs[:1])  # warm-up
    t0 = time.perf_counter()
    fitness(cfgs)
    per = (time.perf_counter() - t0) / n
    ntok = sum(int(b["ntokens"]) for b in fitness.batches)
    evals = 125 + 29 * 100  # first population + new children per iteration (HAT's defaults, before de-duplication)
    dev = fitness.device.type
    print(f"valid batches {len(fitness.batches)} ({ntok} target tokens) on {dev}: {1 / per:.2f} candidates/s "
          f"({per * 1000:.0f} ms each; setup {setup:.1f} s) [measured:{dev}]")
    print(f"HAT's default search (30 x 125, ~{evals} evaluations): ~{evals * per / 60:.1f} min of fitness "
          f"[projected from measured:{dev}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
