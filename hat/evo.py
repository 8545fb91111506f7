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

from hat.errors import ConfigError, HatError


def add_evo_args(parser):
    g = parser.add_argument_group("evolutionary search (HAT's keys + ours)")
    names = {o for a in parser._actions for o in a.option_strings}
    add = lambda flag, **kw: g.add_argument(flag, **kw) if flag not in names else None
    add("--evo-configs", help="YAML with the search settings")
    add("--evo-iter", type=int, default=30)
    add("--population-size", type=int, default=125)
    add("--parent-size", type=int, default=25)
    add("--mutation-size", type=int, default=50)
    add("--crossover-size", type=int, default=50)
    add("--mutation-prob", type=float, default=0.3)
    add("--evo-seed", type=int, default=1, help="seed of the evolution")
    add("--ckpt-path", help="latency predictor checkpoint (latency_predictor.py)")
    add("--feature-norm", type=float, nargs="+", help="HAT's; ignored: normalisation travels in the predictor")
    add("--lat-norm", type=float, help="HAT's; ignored: normalisation travels in the predictor")
    add("--write-config-path", help="where the best SubTransformer's YAML is written")
    add("--latency-constraint", type=float, default=None, help="ms (predicted, or measured with latency-source)")
    add("--memory-constraint", type=float, default=None, help="MB at memory-precision (weights + activations)")
    add("--memory-precision", default="fp16", choices=["fp32", "fp16", "int8"], help="deployed precision")
    add("--valid-cnt-max", type=int, default=int(1e9), help="validation batches per candidate")
    add("--latency-source", default="predictor", choices=["predictor", "measure"])
    add("--measure-top", type=int, default=5, help="with latency-source measure: final candidates re-measured")
    add("--candidates-path", help="CSV of every evaluated candidate (default: next to write-config-path)")
    add("--plot-path", help="PNG of loss vs latency (default: next to write-config-path)")
    add("--state-path", help="search state for resuming (default: next to write-config-path)")


class ValidLoss:
    """Validation loss (base 2, per token, as fairseq reports it) of SubTransformers with inherited weights."""

    def __init__(self, args):
        import torch

        from hat.generate import load_checkpoint

        if not args.restore_file or not os.path.isfile(args.restore_file):
            raise HatError(f"restore-file: SuperTransformer checkpoint not found: {args.restore_file}")
        model, task, saved = load_checkpoint(args.restore_file, args.data)
        if model.is_subtransformer:
            raise HatError(f"{args.restore_file} holds one SubTransformer, not a SuperTransformer")
        self.model, self.task = model, task
        self.criterion = task.build_criterion(saved.criterion)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.model.to(self.device).eval()
        subset = args.valid_subset.split(",")[0]
        task.load_dataset(subset)
        itr = task.get_batch_iterator(
            dataset=task.dataset(subset), max_tokens=args.max_tokens_valid or args.max_tokens,
            max_sentences=args.batch_size_valid, required_batch_size_multiple=1, num_workers=0, seed=1,
        ).next_epoch_itr(shuffle=False)
        from fairseq import utils

        self.batches = []
        for i, sample in enumerate(itr):
            if i >= args.valid_cnt_max:
                break
            self.batches.append(utils.move_to_cuda(sample) if self.device.type == "cuda" else sample)
        if not self.batches:
            raise HatError(f"the {subset} split of {args.data} is empty")

    def __call__(self, cfgs) -> List[float]:
        import torch

        out = []
        for cfg in cfgs:
            self.model.set_sample_config(cfg)
            loss = size = 0.0
            with torch.no_grad():
                for sample in self.batches:
                    l, s, _ = self.criterion(self.model, sample)
                    loss += float(l)
                    size += float(s)
            out.append(loss / size / math.log(2))
        return out


def _default_path(args, suffix):
    base = os.path.splitext(args.write_config_path)[0]
    return base + suffix


def write_yaml(cfg, path, header: str):
    import yaml

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(header)
        yaml.safe_dump(cfg.to_hat_dict(), f, default_flow_style=None, sort_keys=False)
    os.replace(tmp, path)


def write_candidates(evo, path, lat_source, mem_source):
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    rows = sorted(evo.evaluated.values(), key=lambda c: (c.loss, c.config.key()))
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "gene", "config", "valid_loss", "latency_ms", "latency_source", "memory_mb", "memory_source"])
        for c in rows:
            w.writerow([c.config.key(), " ".join(map(str, c.gene)), c.config.to_json(), f"{c.loss:.5f}",
                        f"{c.values['latency']:.4f}", lat_source, f"{c.values['memory']:.4f}", mem_source])
    os.replace(tmp, path)


def plot(evo, path, lat_limit, best, lat_source):
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hat.search import pareto_front

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
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    from tqdm import tqdm

    from hat.checkpoint import options_from_args, space_from_args
    from hat.fairseq_plugin.models import base_architecture
    from hat.latency.run import add_latency_args, protocol_of, vocab_size
    from hat.search import Constraint, EvoParams, Evolution
    from hat.train import build_args

    argv = sys.argv[1:] if argv is None else argv

    def hook(parser):
        add_latency_args(parser)
        add_evo_args(parser)

    args = build_args(argv, extra_parser_hook=hook, extra_config_flags=("--evo-configs",))
    base_architecture(args)
    space = space_from_args(args, source=args.configs or "command line")
    if not args.write_config_path:
        raise ConfigError("write-config-path is required (where the winner's YAML goes)")
    if args.latency_constraint is None and args.memory_constraint is None:
        raise ConfigError("give latency-constraint and/or memory-constraint")

    # constraints first: an infeasible budget stops before any data or checkpoint is read
    from hat import memory
    from hat.predictor import LatencyPredictor

    vocab = vocab_size(args)
    opt = options_from_args(args, vocab, vocab)
    protocol = protocol_of(args)
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
    from hat.latency.protocol import measure
    from hat.latency.run import backend_name, make_backend

    backend = make_backend(backend_name(args), args, opt, protocol)
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
