"""evo_search.py: HAT's evolutionary search with a latency AND a memory constraint.

    python evo_search.py --configs=configs/<task>/supertransformer/space0.yml \
                         --evo-configs=configs/<task>/evo_search/<task>_npu.yml

Fitness is the validation loss of each SubTransformer with weights inherited from the trained SuperTransformer
(``restore-file``), over the task's valid split (``valid-cnt-max`` caps batches). Latency comes from the predictor
checkpoint (``ckpt-path``) or, with ``latency-source: measure``, the final candidates are re-measured on the latency
backend the evo YAML names. Memory comes from the memory model at the deployed precision.
"""
from __future__ import annotations

import csv
import os
import sys
from typing import List, Optional

from hat.args import add_evo_args, add_latency_args, backend_name, stage_context
from hat.errors import ConfigError, HatError
from hat.io import atomic_output, write_text


def _default_path(args, suffix):
    base = os.path.splitext(args.write_config_path)[0]
    return base + suffix


def write_yaml(cfg, path, header: str):
    import yaml

    write_text(path, header + yaml.safe_dump(cfg.to_hat_dict(), default_flow_style=None, sort_keys=False))


def write_candidates(evo, path, lat_source, mem_source):
    rows = sorted(evo.evaluated.values(), key=lambda c: (c.loss, c.config.key()))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "gene", "config", "valid_loss", "latency_ms", "latency_source", "memory_mb", "memory_source"])
        for c in rows:
            w.writerow([c.config.key(), " ".join(map(str, c.gene)), c.config.to_json(), f"{c.loss:.5f}",
                        f"{c.values['latency']:.4f}", lat_source, f"{c.values['memory']:.4f}", mem_source])


def plot(evo, path, lat_limit, best, lat_source):
    from hat.plotting import pyplot, save
    from hat.search import pareto_front

    plt = pyplot()

    cands = list(evo.evaluated.values())
    pts = [(c.values["latency"], c.loss) for c in cands]
    front = sorted((pts[i] for i in pareto_front(pts)))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.5, label="evaluated SubTransformers")
    ax.plot([p[0] for p in front], [p[1] for p in front], "r.-", label="Pareto front")
    ax.scatter([best.values["latency"]], [best.loss], marker="*", s=150, c="k", label="winner", zorder=5)
    if lat_limit is not None and lat_limit <= 2 * max(p[0] for p in pts):
        ax.axvline(lat_limit, color="g", linestyle="--", label=f"latency constraint {lat_limit:g} ms")
    elif lat_limit is not None:
        ax.set_title(f"latency constraint {lat_limit:g} ms (off the chart)", fontsize=9)
    ax.set_xlabel(f"latency (ms, {lat_source})")
    ax.set_ylabel("validation loss (inherited weights)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def main(argv: Optional[List[str]] = None) -> int:
    from tqdm import tqdm

    from hat.fairseq_plugin.args import build_args
    from hat.search import Constraint, EvoParams, Evolution

    argv = sys.argv[1:] if argv is None else argv

    def hook(parser):
        add_latency_args(parser)
        add_evo_args(parser)

    args = build_args(argv, extra_parser_hook=hook, extra_config_flags=("--evo-configs",))
    if not args.write_config_path:
        raise ConfigError("write-config-path is required (where the winner's YAML goes)")
    if args.latency_constraint is None and args.memory_constraint is None:
        raise ConfigError("give latency-constraint and/or memory-constraint")

    # constraints first: an infeasible budget stops before any data or checkpoint is read
    from hat import memory
    from hat.predictor import LatencyPredictor

    ctx = stage_context(args)
    space, opt, protocol = ctx.space, ctx.options, ctx.protocol
    predictor = None
    if args.latency_constraint is not None or args.ckpt_path:
        if not args.ckpt_path:
            raise ConfigError("latency-constraint needs ckpt-path (a latency predictor checkpoint)")
        predictor = LatencyPredictor.load(args.ckpt_path, space=space)
    lat_source = "predicted"
    mem_source = f"memory model ({args.memory_precision} weights + activations)"
    shapes = dict(batch=1, src_len=protocol.src_len, tgt_len=protocol.tgt_len, beam=protocol.beam)
    constraints = [
        Constraint("latency", args.latency_constraint,
                   (lambda c: float(predictor.predict([c])[0])) if predictor else (lambda c: float("nan")), "ms",
                   lat_source),
        Constraint("memory", args.memory_constraint,
                   lambda c: float(memory.memory_mb(c, opt, args.memory_precision, shapes)), "MB", mem_source),
    ]
    params = EvoParams(args.evo_iter, args.population_size, args.parent_size, args.mutation_size,
                       args.crossover_size, args.mutation_prob, args.evo_seed)
    state_path = args.state_path or _default_path(args, ".search_state.json")
    evo = Evolution(space, None, constraints, params, state_path=state_path, log=lambda s: tqdm.write(s))
    evo.check_feasible()

    from hat.fairseq_plugin.valid_loss import ValidLoss

    evo.fitness = ValidLoss(args)
    bar = tqdm(total=params.evo_iter, unit="iter", desc="evolution", file=sys.stderr)
    best = evo.run(progress=lambda it: bar.update(it - bar.n))
    bar.close()

    if args.latency_source == "measure":
        best, lat_source = _remeasure(evo, args, opt, protocol)

    header = (f"# found by evo_search.py: valid loss {best.loss:.4f} (inherited weights), latency "
              f"{best.values['latency']:.3f} ms ({lat_source}), memory {best.values['memory']:.3f} MB ({mem_source})\n")
    write_yaml(best.config, args.write_config_path, header)
    cand_path = args.candidates_path or _default_path(args, ".candidates.csv")
    write_candidates(evo, cand_path, lat_source, mem_source)
    plot_path = args.plot_path or _default_path(args, ".pareto.png")
    plot(evo, plot_path, args.latency_constraint, best, lat_source)
    print(f"| wrote {args.write_config_path}, {cand_path}, {plot_path}")
    print(f"| best SubTransformer {best.config.key()}: valid loss {best.loss:.4f} (inherited weights, measured on "
          f"{args.valid_subset}), latency {best.values['latency']:.3f} ms ({lat_source}), memory "
          f"{best.values['memory']:.3f} MB ({mem_source})")
    return 0


def _remeasure(evo, args, opt, protocol):
    """Measure the best feasible candidates on the configured backend and keep the best one that still fits."""
    from hat.latency import backends
    from hat.latency.protocol import measure

    backend = backends.make(backend_name(args), args, opt, protocol)
    ranked = sorted(evo.evaluated.values(), key=lambda c: (c.loss, c.config.key()))[: args.measure_top]
    for c in ranked:
        m = measure(backend, c.config, protocol)
        row = m.row()
        c.values = dict(c.values, latency=row["latency_mean_encoder"] + row["latency_mean_decoder"])
        print(f"| re-measured {c.config.key()}: {m.summary()}")
    fitting = [c for c in ranked if args.latency_constraint is None or c.values["latency"] <= args.latency_constraint]
    if not fitting:
        raise HatError(f"none of the {len(ranked)} best candidates meets the latency constraint when measured on "
                       f"{backend.source}")
    return fitting[0], backend.source
