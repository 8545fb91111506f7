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
import math
import os
import sys
from typing import List, Optional

from hat.args import add_evo_args, add_latency_args, check_protocol, stage_context
from hat.errors import ConfigError, HatError
from hat.io import atomic_output, write_text


def _default_path(args, suffix):
    base = os.path.splitext(args.write_config_path)[0]
    return base + suffix


def write_yaml(cfg, path, header: str):
    import yaml

    write_text(path, header + yaml.safe_dump(cfg.to_hat_dict(), default_flow_style=None, sort_keys=False))


CANDIDATE_COLUMNS = ["key", "gene", "config", "valid_loss", "latency_ms", "latency_source", "memory_mb",
                     "memory_source", "measured_latency_ms", "measured_latency_source", "measured_memory_mb",
                     "measured_memory_source", "fits_measured"]


def _fmt(v):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def write_candidates(evo, path, lat_source, mem_source, measured):
    """Every evaluated candidate: its predicted latency and modelled memory (the values the search used), and for
    the re-measured ones the measured values beside, each column with its source."""
    rows = sorted(evo.evaluated.values(), key=lambda c: (c.loss, c.config.key()))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CANDIDATE_COLUMNS)
        for c in rows:
            m = measured.get(c.config.key(), {})
            w.writerow([c.config.key(), " ".join(map(str, c.gene)), c.config.to_json(), f"{c.loss:.5f}",
                        _fmt(c.values["latency"]), lat_source, _fmt(c.values["memory"]), mem_source,
                        _fmt(m.get("latency")), m.get("latency_source", ""), _fmt(m.get("memory")),
                        m.get("memory_source", ""), "" if not m else ("yes" if m["fits"] else "no")])


def plot(evo, path, lat_limit, best, lat_source, measured):
    from hat.plotting import pyplot, save
    from hat.search import pareto_front

    plt = pyplot()

    cands = list(evo.evaluated.values())
    pts = [(c.values["latency"], c.loss) for c in cands]
    front = sorted((pts[i] for i in pareto_front(pts)))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.5, label="evaluated SubTransformers")
    ax.plot([p[0] for p in front], [p[1] for p in front], "r.-", label="Pareto front")
    if measured:
        ms = [(m["latency"], evo.evaluated[k].loss) for k, m in measured.items()]
        ax.scatter([p[0] for p in ms], [p[1] for p in ms], marker="x", s=40, c="tab:orange", zorder=4,
                   label=f"re-measured ({next(iter(measured.values()))['latency_source']})")
    wx = measured[best.config.key()]["latency"] if best.config.key() in measured else best.values["latency"]
    ax.scatter([wx], [best.loss], marker="*", s=150, c="k", label="winner", zorder=5)
    if lat_limit is not None and lat_limit <= 2 * max(p[0] for p in pts):
        ax.axvline(lat_limit, color="g", linestyle="--", label=f"latency constraint {lat_limit:g} ms")
    elif lat_limit is not None:
        ax.set_title(f"latency constraint {lat_limit:g} ms (off the chart)", fontsize=9)
    ax.set_xlabel(f"latency (ms, {lat_source}{'; x: measured' if measured else ''})")
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
        if predictor.protocol is not None:  # measure exactly as the predictor's dataset was measured
            check_protocol(args, predictor.protocol, f"the predictor {args.ckpt_path}")
            protocol = predictor.protocol
    remeasure = _remeasure_plan(args, predictor, protocol)
    lat_source = "predicted"
    mem_source = memory.model_source(args.memory_precision)
    constraints = [
        Constraint("latency", args.latency_constraint,
                   (lambda c: float(predictor.predict([c])[0])) if predictor else (lambda c: float("nan")), "ms",
                   lat_source),
        Constraint("memory", args.memory_constraint,
                   lambda c: float(memory.memory_mb(c, opt, args.memory_precision, protocol)), "MB", mem_source),
    ]
    params = EvoParams(args.evo_iter, args.population_size, args.parent_size, args.mutation_size,
                       args.crossover_size, args.mutation_prob, args.evo_seed)
    state_path = args.state_path or _default_path(args, ".search_state.json")
    from hat.fairseq_plugin.valid_loss import ValidLoss, fitness_inputs

    evo = Evolution(space, None, constraints, params, state_path=state_path, log=lambda s: tqdm.write(s))
    evo.check_feasible()
    # a saved state is resumed only with the inputs its losses came from (checked before any data is read)
    evo.inputs = fitness_inputs(args)
    evo.resume_state()
    evo.fitness = ValidLoss(args, space)  # refuses a SuperTransformer that was not trained on this space
    bar = tqdm(total=params.evo_iter, unit="iter", desc="evolution", file=sys.stderr)
    best = evo.run(progress=lambda it: bar.update(it - bar.n))
    bar.close()

    measured = {}
    if remeasure:
        best, measured = _remeasure(evo, args, opt, protocol)
    cand_path = args.candidates_path or _default_path(args, ".candidates.csv")
    write_candidates(evo, cand_path, lat_source, mem_source, measured)
    plot_path = args.plot_path or _default_path(args, ".pareto.png")
    shown = best or min((evo.evaluated[k] for k in measured), key=lambda c: c.loss)
    plot(evo, plot_path, args.latency_constraint, shown, lat_source, measured)
    if best is None:
        raise HatError(f"none of the {len(measured)} best candidates fits the budget when measured "
                       f"({_budget(args, margin=True)}); their figures are in {cand_path}: loosen the budget, "
                       f"re-measure more (measure-top) or retrain the predictor")
    m = measured.get(best.config.key())
    what = (f"latency {best.values['latency']:.3f} ms ({lat_source}), memory {best.values['memory']:.3f} MB "
            f"({mem_source})")
    if m:
        what += (f"; measured: latency {m['latency']:.3f} ms ({m['latency_source']}), memory {m['memory']:.3f} MB "
                 f"({m['memory_source']}), within the budget ({_budget(args)})")
    header = f"# found by evo_search.py: valid loss {best.loss:.4f} (inherited weights), {what}\n"
    write_yaml(best.config, args.write_config_path, header)
    print(f"| wrote {args.write_config_path}, {cand_path}, {plot_path}")
    print(f"| best SubTransformer {best.config.key()}: valid loss {best.loss:.4f} (inherited weights, measured on "
          f"{args.valid_subset}), {what}")
    return 0


def measured_fits(latency_ms: float, memory_mb: float, args) -> bool:
    """A re-measured candidate fits: latency within the constraint less ``measure-margin``, memory within its own."""
    return ((args.latency_constraint is None or latency_ms <= args.latency_constraint * (1.0 - args.measure_margin))
            and (args.memory_constraint is None or memory_mb <= args.memory_constraint))


def _budget(args, margin: bool = False) -> str:
    parts = []
    m = args.measure_margin if margin else 0.0
    if args.latency_constraint is not None:
        parts.append(f"latency <= {args.latency_constraint:g} ms"
                     + (f" less the {m:.0%} measure-margin: <= {args.latency_constraint * (1 - m):.3f} ms" if m else ""))
    if args.memory_constraint is not None:
        parts.append(f"memory <= {args.memory_constraint:g} MB")
    return ", ".join(parts)


MEASURABLE_HERE = ("onnxruntime", "cpu", "gpu")


def _remeasure_plan(args, predictor, protocol) -> bool:
    """Re-measure the best candidates (default when the predictor's protocol names a backend this machine runs);
    ``latency-source predictor`` keeps the predicted figures, ``measure`` insists."""
    backend = protocol.backend if predictor is not None and predictor.protocol is not None else None
    if args.latency_source == "predictor":
        print("| latency-source predictor: the winner's latency is predicted, not re-measured")
        return False
    if backend is None:
        if args.latency_source == "measure":
            raise ConfigError("latency-source measure needs a predictor trained on a dataset that records its "
                              "protocol (latency_dataset.py writes it)")
        print("| the predictor records no measuring protocol: the winner is not re-measured (its latency is predicted)")
        return False
    if backend not in MEASURABLE_HERE:
        if args.latency_source == "measure":
            raise ConfigError(f"latency-source measure: the predictor's backend {backend} does not run on this machine")
        print(f"| the predictor's backend {backend} runs on the board: the winner is not re-measured here")
        return False
    return True


def _remeasure(evo, args, opt, protocol):
    """Measure the ``measure-top`` best candidates (by loss; all fit the budget as predicted) with the predictor's
    protocol and return (the best whose MEASURED latency and memory fit the budget or None, every measurement)."""
    from hat.latency import backends
    from hat.latency.protocol import measure_block

    if protocol.workers != 1:
        raise ConfigError(f"the predictor's dataset was measured with {protocol.workers} parallel workers, which "
                          f"slow each other down (benchmarks/README.md); a re-measurement runs one process, so it "
                          f"cannot check the winner: use latency-source predictor, or a dataset measured with "
                          f"lat-workers 1")
    backend = backends.make(protocol.backend, args, opt, protocol)
    why = backend.protocol.mismatch(protocol)
    if why:
        raise ConfigError(f"cannot measure with the predictor's protocol here ({why})")
    if backend.protocol.machine != protocol.machine:
        print(f"| note: the predictor's dataset was measured on {protocol.machine}; re-measuring on "
              f"{backend.protocol.machine}")
    ranked = sorted(evo.evaluated.values(), key=lambda c: (c.loss, c.config.key()))[: args.measure_top]
    measured, best = {}, None
    # measured together, their passes interleaved as the dataset's blocks were
    for c, m in zip(ranked, measure_block(backend, [c.config for c in ranked], protocol)):
        mem, mem_source = _measured_memory(c.config, opt, protocol, args)
        fits = measured_fits(m.total, mem, args)
        measured[c.config.key()] = {"latency": m.total, "latency_source": m.source, "memory": mem,
                                    "memory_source": mem_source, "fits": fits}
        print(f"| re-measured {c.config.key()} (valid loss {c.loss:.4f}): {m.summary()}; memory {mem:.3f} MB "
              f"[{mem_source}]; {'fits' if fits else 'OVER'} the budget ({_budget(args, margin=True)})")
        if fits and best is None:
            best = c
    return best, measured


def _measured_memory(cfg, opt, protocol, args):
    """(MB, source) of the candidate's memory for the budget check: measured peak of the exported graphs in a fresh
    onnxruntime process when the budget's precision is the one onnxruntime runs (fp32); the memory model at
    memory-precision otherwise (fp16/int8 budgets are for the NPU, which is not here), labelled as such."""
    from hat import memory

    if protocol.backend == "onnxruntime" and args.memory_precision == "fp32":
        import tempfile

        from hat.latency.memory_probe import measure_memory

        with tempfile.TemporaryDirectory(prefix="hat-mem-") as d:
            r = measure_memory(cfg, opt, protocol, d)
        return float(r.measured_mb), r.source
    return (float(memory.memory_mb(cfg, opt, args.memory_precision, protocol)),
            memory.model_source(args.memory_precision))
