"""Evolutionary search (HAT's) under latency AND memory constraints, qkv dim included as a gene.

A gene is HAT's flat list (encoder embed, layer num, per-layer ffn and heads for every super layer, the decoder's
likewise, arbitrary en-de attention) plus the qkv dim. Every candidate admitted to a population satisfies every
constraint; children that do not are redrawn (a bounded number of tries). Fitness (lower is better: validation loss
with inherited weights) is computed once per distinct SubTransformer. The state is saved after every iteration, so
running the same command again continues where it stopped and ends at the same result as an uninterrupted run, with
every candidate evaluated before the interruption (the candidates CSV and plot are complete).

A state is resumed only by a search with the same inputs: the evo params, the space, the constraints, the inputs
its losses depend on (``inputs``: the SuperTransformer's sha256, the valid split and its batches, given by the
caller) and the same constraint values for its candidates (a changed predictor, memory precision or protocol). Any
difference, a state cut short or damaged, or a state already past ``evo_iter``, is refused in one line that says what
differs and what to do: its losses would otherwise be mixed with another checkpoint's into one winner.
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from hat.errors import CheckpointError, ConfigError, HatError
from hat.io import write_json
from hat.space import SearchSpace, SubConfig, clamp_ende_attn


@dataclass
class Constraint:
    name: str  # "latency", "memory"
    limit: Optional[float]
    value: Callable[[SubConfig], float]
    unit: str
    source: str  # where the value comes from: "predicted", "memory model (fp16 weights + activations)", ...

    def ok(self, v: float) -> bool:
        return self.limit is None or v <= self.limit


@dataclass
class EvoParams:
    evo_iter: int = 30
    population_size: int = 125
    parent_size: int = 25
    mutation_size: int = 50
    crossover_size: int = 50
    mutation_prob: float = 0.3
    seed: int = 1
    max_tries: int = 500  # redraws of a child before the search gives up on it

    def check(self):
        if self.parent_size > self.population_size:
            raise ConfigError("parent-size must not exceed population-size")
        if self.mutation_size + self.crossover_size + self.parent_size != self.population_size:
            raise ConfigError(
                f"population-size ({self.population_size}) must equal parent-size + mutation-size + crossover-size "
                f"({self.parent_size} + {self.mutation_size} + {self.crossover_size})"
            )


class GeneCodec:
    """SubConfig <-> HAT's flat gene (per-layer positions for every super layer)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.e = max(space.choices["encoder-layer-num-choice"])
        self.d = max(space.choices["decoder-layer-num-choice"])
        c = space.choices
        self.slots: List[Tuple[str, List[int]]] = (
            [("encoder-embed-choice", c["encoder-embed-choice"]), ("encoder-layer-num-choice", c["encoder-layer-num-choice"])]
            + [("encoder-ffn-embed-dim-choice", c["encoder-ffn-embed-dim-choice"])] * self.e
            + [("encoder-self-attention-heads-choice", c["encoder-self-attention-heads-choice"])] * self.e
            + [("decoder-embed-choice", c["decoder-embed-choice"]), ("decoder-layer-num-choice", c["decoder-layer-num-choice"])]
            + [("decoder-ffn-embed-dim-choice", c["decoder-ffn-embed-dim-choice"])] * self.d
            + [("decoder-self-attention-heads-choice", c["decoder-self-attention-heads-choice"])] * self.d
            + [("decoder-ende-attention-heads-choice", c["decoder-ende-attention-heads-choice"])] * self.d
            + [("decoder-arbitrary-ende-attn-choice", c["decoder-arbitrary-ende-attn-choice"])] * self.d
            + [("qkv-dim-choice", c["qkv-dim-choice"])]
        )

    def random(self, rng: random.Random) -> List[int]:
        return [rng.choice(vals) for _, vals in self.slots]

    def decode(self, gene: Sequence[int]) -> SubConfig:
        e, d = self.e, self.d
        it = iter(gene)
        take = lambda n: [next(it) for _ in range(n)]
        enc_embed, enc_layers = take(2)
        enc_ffn, enc_heads = take(e), take(e)
        dec_embed, dec_layers = take(2)
        dec_ffn, dec_heads, ende_heads, arb = take(d), take(d), take(d), take(d)
        (qkv,) = take(1)
        arb = clamp_ende_attn(arb[:dec_layers], enc_layers)
        return SubConfig(
            encoder_embed_dim=enc_embed, decoder_embed_dim=dec_embed, encoder_layer_num=enc_layers,
            decoder_layer_num=dec_layers, encoder_ffn_embed_dim=tuple(enc_ffn[:enc_layers]),
            decoder_ffn_embed_dim=tuple(dec_ffn[:dec_layers]), encoder_self_attention_heads=tuple(enc_heads[:enc_layers]),
            decoder_self_attention_heads=tuple(dec_heads[:dec_layers]),
            decoder_ende_attention_heads=tuple(ende_heads[:dec_layers]), decoder_arbitrary_ende_attn=tuple(arb),
            qkv_dim=qkv,
        )

    def mutate(self, gene: Sequence[int], prob: float, rng: random.Random) -> List[int]:
        return [rng.choice(vals) if rng.random() < prob else g for g, (_, vals) in zip(gene, self.slots)]

    def crossover(self, a: Sequence[int], b: Sequence[int], rng: random.Random) -> List[int]:
        return [x if rng.random() < 0.5 else y for x, y in zip(a, b)]


@dataclass
class Candidate:
    gene: List[int]
    config: SubConfig
    values: Dict[str, float]  # constraint values
    loss: Optional[float] = None


def coverage_problems(space: SearchSpace, trained: SearchSpace) -> List[str]:
    """Why a SuperTransformer trained on ``trained`` cannot score ``space``'s SubTransformers: a choice of ``space``
    the SuperTransformer never trained (its weights for it are untrained slices or absent). Empty when covered."""
    problems = []
    for key, vals in space.choices.items():
        have = trained.choices.get(key, [])
        missing = [v for v in vals if v not in have]
        if missing:
            problems.append(f"{key} {missing} not in its {have}")
    return problems


def check_covers(space: SearchSpace, trained: SearchSpace, checkpoint: str):
    """One :class:`CheckpointError` line unless the SuperTransformer in ``checkpoint`` (trained on ``trained``) covers
    every choice of the search space ``space``."""
    problems = coverage_problems(space, trained)
    if problems:
        raise CheckpointError(
            f"{checkpoint} was trained on another search space ({'; '.join(problems)}): its inherited weights cannot "
            f"score this space's SubTransformers: search a space inside the one it was trained on, or give the "
            f"SuperTransformer trained on this space"
        )


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of points not dominated in (x lower, y lower)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


class Evolution:
    def __init__(self, space: SearchSpace, fitness: Callable[[List[SubConfig]], List[float]],
                 constraints: List[Constraint], params: EvoParams, state_path: Optional[str] = None,
                 log: Callable[[str], None] = print, inputs: Optional[Dict[str, object]] = None):
        """``inputs``: what the losses depend on besides the space (JSON values, compared on resume; see
        :meth:`resume_state`)."""
        params.check()
        self.space, self.fitness, self.constraints, self.p = space, fitness, constraints, params
        self.codec = GeneCodec(space)
        self.state_path = state_path
        self.log = log
        self.losses: Dict[str, float] = {}  # config key -> loss (computed once per distinct SubTransformer)
        self.values: Dict[str, Dict[str, float]] = {}
        self.evaluated: Dict[str, Candidate] = {}
        self.history: List[Dict[str, object]] = []
        self.inputs: Dict[str, object] = json.loads(json.dumps(inputs or {}))  # as it will read back
        self._state: Optional[dict] = None
        self._state_read = False

    # -- constraints -------------------------------------------------------------------------------------------
    def constraint_values(self, cfg: SubConfig) -> Dict[str, float]:
        k = cfg.key()
        if k not in self.values:
            self.values[k] = {c.name: float(c.value(cfg)) for c in self.constraints}
        return self.values[k]

    def feasible(self, cfg: SubConfig) -> bool:
        v = self.constraint_values(cfg)
        return all(c.ok(v[c.name]) for c in self.constraints)

    def check_feasible(self, probes: int = 2000):
        """Stop at once, with the smallest values the space allows, if no config meets the constraints."""
        rng = random.Random(f"feasibility:{self.p.seed}")
        cands = [self.space.smallest()] + [self.codec.decode(self.codec.random(rng)) for _ in range(probes)]
        best = {c.name: float("inf") for c in self.constraints}
        for cfg in cands:
            if self.feasible(cfg):
                return
            for c in self.constraints:
                best[c.name] = min(best[c.name], self.constraint_values(cfg)[c.name])
        parts = [f"{c.name} <= {c.limit:g} {c.unit}" for c in self.constraints if c.limit is not None]
        mins = [f"{c.name} {best[c.name]:.3f} {c.unit} ({c.source})" for c in self.constraints]
        raise HatError(
            f"infeasible constraints ({', '.join(parts)}): no SubTransformer in the space meets them; the smallest the "
            f"space allows is {', '.join(mins)}"
        )

    def _draw(self, make: Callable[[], List[int]]) -> Candidate:
        for _ in range(self.p.max_tries):
            gene = make()
            cfg = self.codec.decode(gene)
            if self.feasible(cfg):
                return Candidate(gene, cfg, self.constraint_values(cfg))
        raise HatError(f"no feasible child found in {self.p.max_tries} tries; loosen the constraints")

    # -- state ----------------------------------------------------------------------------------------------------
    STATE_VERSION = 2

    def _save(self, it: int, population: List[Candidate], rng: random.Random):
        if not self.state_path:
            return
        state = {
            "version": self.STATE_VERSION,
            "iteration": it,
            "population": [c.gene for c in population],
            "losses": self.losses,
            "evaluated": [{"gene": c.gene, "values": c.values} for c in self.evaluated.values()],
            "rng": _rng_to_json(rng.getstate()),
            "history": self.history,
            "params": self._resumable_params(),
            "fingerprint": self.space.fingerprint(),
            "constraints": self._constraint_limits(),
            "inputs": self.inputs,
        }
        try:
            write_json(self.state_path, state, indent=None)
        except OSError as e:
            raise HatError(f"cannot write the search state {self.state_path}: {e.strerror or e}") from None

    def _resumable_params(self):
        """Settings a saved search must share with this one (evo-iter may grow: the search goes on)."""
        return {k: v for k, v in self.p.__dict__.items() if k != "evo_iter"}

    def _constraint_limits(self):
        return {c.name: c.limit for c in self.constraints}

    def resume_state(self) -> Optional[dict]:
        """The saved state this search continues (None: there is none, the search starts anew), checked once: read
        whole, written by a search with the same settings and inputs, its genes in this space, its candidates' constraint
        values what this run computes, its iteration not past evo-iter. Anything else: one :class:`HatError` line.
        Cheap (no fitness is computed): a caller runs it before loading the SuperTransformer and the data."""
        if self._state_read:
            return self._state
        self._state_read = True
        path = self.state_path
        if not path or not os.path.exists(path):
            return None
        fresh = "delete it to start the search anew"
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HatError(f"{path}: not a readable search state ({msg}), cut short or damaged: {fresh}") from None
        if not isinstance(state, dict) or state.get("version") != self.STATE_VERSION:
            found = state.get("version") if isinstance(state, dict) else None
            raise HatError(f"{path}: not a search state of this evo_search (version {found!r}, expected "
                           f"{self.STATE_VERSION}): {fresh}")
        changes = self._changes(state)
        if changes:
            raise ConfigError(
                f"{path} belongs to a search with other settings ({'; '.join(changes)}): its losses and population do "
                f"not apply to this search; {fresh} or pass another state-path"
            )
        try:
            restored = self._restore(state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise HatError(f"{path}: damaged search state ({type(e).__name__}: {e}): {fresh}") from None
        it = state["iteration"]
        if it > self.p.evo_iter:
            raise ConfigError(
                f"{path} holds a search already at iteration {it}, past evo-iter {self.p.evo_iter}: pass evo-iter {it} "
                f"or more to take (or continue) it, or {fresh}"
            )
        mismatch = self._value_mismatch(restored["evaluated"], state)
        if mismatch:
            raise ConfigError(
                f"{path} belongs to a search with other constraint values ({mismatch}): the latency predictor, "
                f"memory-precision or latency protocol changed; {fresh} or pass another state-path"
            )
        self._state = dict(state, **restored)
        return self._state

    def _changes(self, state: dict) -> List[str]:
        """What differs between the saved search and this one, each as 'what saved -> now'."""
        out = []
        saved = state.get("params") or {}
        for k, v in self._resumable_params().items():
            if saved.get(k) != v:
                out.append(f"{k.replace('_', '-')} {saved.get(k)!r} -> {v!r}")
        if state.get("fingerprint") != self.space.fingerprint():
            out.append(f"search space fingerprint {state.get('fingerprint')} -> {self.space.fingerprint()}")
        saved = state.get("constraints") or {}
        for k, v in self._constraint_limits().items():
            if saved.get(k) != v:
                out.append(f"{k}-constraint {saved.get(k)!r} -> {v!r}")
        saved = state.get("inputs")
        if not isinstance(saved, dict):
            saved = {}
        for k in sorted(set(saved) | set(self.inputs)):
            if _identity(saved.get(k)) != _identity(self.inputs.get(k)):
                out.append(f"{k} {_describe(saved.get(k))} -> {_describe(self.inputs.get(k))}")
        return out

    def _gene(self, gene) -> List[int]:
        if not isinstance(gene, list) or len(gene) != len(self.codec.slots):
            raise ValueError(f"a gene of {len(gene) if isinstance(gene, list) else type(gene).__name__} values, "
                             f"expected {len(self.codec.slots)}")
        for g, (key, vals) in zip(gene, self.codec.slots):
            if g not in vals:
                raise ValueError(f"gene value {g!r} not in {key} {vals}")
        return [int(g) for g in gene]

    def _restore(self, state: dict) -> dict:
        it = state["iteration"]
        if not isinstance(it, int) or it < 0:
            raise ValueError(f"iteration {it!r}")
        losses = {str(k): float(v) for k, v in state["losses"].items()}
        population = [self._gene(g) for g in state["population"]]
        if len(population) != self.p.population_size:
            raise ValueError(f"a population of {len(population)}, expected {self.p.population_size}")
        evaluated = []
        for e in state["evaluated"]:
            gene = self._gene(e["gene"])
            key = self.codec.decode(gene).key()
            evaluated.append((gene, {str(k): float(v) for k, v in e["values"].items()}, losses[key]))
        rng = _rng_from_json(state["rng"])
        random.Random().setstate(rng)  # raises on a damaged one
        history = state["history"]
        if not isinstance(history, list):
            raise ValueError("history is not a list")
        return {"losses": losses, "population": population, "evaluated": evaluated, "rng": rng, "history": history}

    def _value_mismatch(self, evaluated, state) -> str:
        for gene, saved, _ in evaluated:
            cfg = self.codec.decode(gene)
            now = self.constraint_values(cfg)
            for c in self.constraints:
                a, b = saved.get(c.name), now[c.name]
                same = a is not None and ((math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6,
                                                                                            abs_tol=1e-9))
                if not same:
                    return f"{c.name} of {cfg.key()}: saved {a} {c.unit}, now {b:.6g} {c.unit} ({c.source})"
        return ""

    # -- evolution ------------------------------------------------------------------------------------------------
    def score(self, cands: List[Candidate]):
        todo = {}
        for c in cands:
            k = c.config.key()
            if k not in self.losses and k not in todo:
                todo[k] = c.config
        if todo:
            for k, loss in zip(todo, self.fitness(list(todo.values()))):
                self.losses[k] = float(loss)
        for c in cands:
            c.loss = self.losses[c.config.key()]
            self.evaluated[c.config.key()] = c

    def run(self, progress=None) -> Candidate:
        self.check_feasible()
        state = self.resume_state()
        rng = random.Random(f"evo:{self.p.seed}")
        if state is None:
            start = 0
            population = [self._draw(lambda: self.codec.random(rng)) for _ in range(self.p.population_size)]
        else:
            start = state["iteration"]
            rng.setstate(state["rng"])
            self.losses.update(state["losses"])
            self.history = list(state["history"])
            for gene, _, loss in state["evaluated"]:  # every candidate scored before the interruption
                cfg = self.codec.decode(gene)
                self.evaluated[cfg.key()] = Candidate(gene, cfg, self.constraint_values(cfg), loss)
            population = []
            for gene in state["population"]:
                cfg = self.codec.decode(gene)
                population.append(Candidate(gene, cfg, self.constraint_values(cfg)))
            if start < self.p.evo_iter:
                self.log(f"| resuming the search at iteration {start + 1} of {self.p.evo_iter} from {self.state_path} "
                         f"({len(self.evaluated)} candidates evaluated before)")
            else:
                self.log(f"| the search in {self.state_path} is complete ({start} of {self.p.evo_iter} iterations): "
                         f"taking its result")
            if progress is not None and start:
                progress(start)
        for it in range(start, self.p.evo_iter):
            self.score(population)
            population.sort(key=lambda c: (c.loss, c.config.key()))
            parents = population[: self.p.parent_size]
            best = parents[0]
            self.history.append({"iteration": it + 1, "best_loss": best.loss, "best": best.config.key(),
                                 **{f"best_{k}": v for k, v in best.values.items()}})
            units = {c.name: (c.unit, c.source) for c in self.constraints}
            self.log(f"| iteration {it + 1}: best loss {best.loss:.4f}, "
                     + ", ".join(f"{k} {v:.3f} {units.get(k, ('', ''))[0]} [{units.get(k, ('', '?'))[1]}]"
                                 for k, v in best.values.items()))
            mutations = [
                self._draw(lambda: self.codec.mutate(rng.choice(parents).gene, self.p.mutation_prob, rng))
                for _ in range(self.p.mutation_size)
            ]
            crossovers = [
                self._draw(lambda: self.codec.crossover(*rng.sample([c.gene for c in parents], 2), rng)
                           if len(parents) > 1 else list(parents[0].gene))
                for _ in range(self.p.crossover_size)
            ]
            population = parents + mutations + crossovers
            self._save(it + 1, population, rng)
            if progress is not None:
                progress(it + 1)
        self.score(population)
        return min(population, key=lambda c: (c.loss, c.config.key()))


def _identity(v):
    """What an input is compared by: a file by its content (sha256; it may have moved), anything else as it is."""
    return ("sha256", v["sha256"]) if isinstance(v, dict) and "sha256" in v else v


def _describe(v) -> str:
    """An input value for a one-line message: a file as its path and the start of its sha256."""
    if isinstance(v, dict) and "sha256" in v:
        return f"{v.get('path')} (sha256 {str(v['sha256'])[:12]})"
    return "(not recorded)" if v is None else repr(v)


def _rng_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(s):
    return (s[0], tuple(s[1]), s[2])
