"""The demo's recipe: data -> SuperTransformer -> latency dataset -> latency predictor -> budget from the baseline ->
evolutionary search -> train the searched SubTransformer and the baseline the same way -> BLEU -> export -> latency
of both -> table and plots.

Which top-level script each stage runs, with which flags (:data:`PROFILES`, one per ``--device``, plus
``--stage-args``), and where everything goes: the task's configs under ``<task-dir>`` (HAT's layout), results under
``results/<task>``, trained models under ``checkpoints/<task>/demo-<device>``, the shipped SuperTransformer under
``pretrained/<task>/<space>.pt``. The stages run through :class:`hat.pipeline.runner.Runner` (stamps, skip on a
rerun); the table and plots are :mod:`hat.pipeline.report`'s.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List

from hat.config import load_yaml
from hat.errors import HatError
from hat.pipeline import report
from hat.pipeline.runner import ROOT, Runner, parse_stage_args, rel

# Settings of each profile; every value is a flag of the stage script it goes to.
PROFILES: Dict[str, dict] = {
    "cpu": {
        # 16 passes of 1 timed run (+ 1 warm-up) per config, blocks of 20: ~1 s a config, 87-95 % of re-measurements
        # within ±5 % on 2 cores (benchmarks/README.md "Passes"); the shipped dataset's 48 x 3 takes 7 s a config
        "latency": ["--lat-dataset-size", "100", "--latiter", "16", "--lat-warmup", "1", "--lat-passes", "16"],
        "search": ["--evo-iter", "5", "--population-size", "12", "--parent-size", "4", "--mutation-size", "4",
                   "--crossover-size", "4", "--valid-cnt-max", "3"],
        # both SubTransformers start from the SuperTransformer's weights and get the same short fine-tuning
        "sub": ["--max-update", "120", "--lr", "0.001", "--warmup-updates", "20", "--save-interval-updates", "60",
                "--validate-interval-updates", "60", "--log-interval", "20"],
        "inherit": True,
        "super": [],
    },
    "cuda": {
        "latency": ["--lat-dataset-size", "300", "--latiter", "20", "--lat-warmup", "5", "--lat-passes", "4"],
        "search": ["--evo-iter", "15", "--population-size", "40", "--parent-size", "10", "--mutation-size", "15",
                   "--crossover-size", "15"],
        "sub": ["--max-update", "3000", "--warmup-updates", "400", "--save-interval-updates", "1000",
                "--validate-interval-updates", "1000", "--keep-interval-updates", "1", "--log-interval", "200"],
        "inherit": False,
        "super": ["--max-update", "5000", "--warmup-updates", "400", "--save-interval-updates", "1000",
                  "--validate-interval-updates", "1000", "--keep-interval-updates", "1", "--log-interval", "200"],
    },
}
# the stages whose script flags --stage-args extends ("sub": both SubTransformers' training)
STAGE_ARG_STAGES = ("latency", "search", "sub", "super")
SHIPPED = "pretrained/{task}/{space}.pt"


class DemoRecipe:
    """The demo on one task; ``args`` are :mod:`hat.stages.demo`'s. :meth:`run` runs every stage in order."""

    def __init__(self, args):
        self.args = args
        self.py = sys.executable
        self.task = Path(args.task_dir)
        self.name = self.task.name
        self.profile = {k: (list(v) if isinstance(v, list) else v) for k, v in PROFILES[args.device].items()}
        for stage, flags in parse_stage_args(args.stage_args, STAGE_ARG_STAGES).items():
            self.profile[stage] += flags  # after the profile's: later flags win
        self.res = Path(args.results or f"results/{self.name}")
        self.runner = Runner(ROOT / self.res / "stages", retrain=args.retrain, verbose=args.verbose,
                             before_stage=self.need_device)
        self.space_yml = self.task / "supertransformer" / f"{args.space}.yml"
        self.common_yml = self.task / "subtransformer" / "common.yml"
        self.baseline_yml = self.task / "subtransformer" / f"{args.baseline}.yml"
        self.lat_yml = self.task / "latency_dataset" / "onnxruntime.yml"
        self.pred_yml = self.task / "latency_predictor" / "onnxruntime.yml"
        self.evo_yml = self.task / "evo_search" / "demo_onnxruntime.yml"
        self.onnx_yml = self.task / "convert_onnx" / "common.yml"
        for p in (self.space_yml, self.common_yml, self.baseline_yml, self.lat_yml, self.pred_yml, self.evo_yml,
                  self.onnx_yml):
            if not (ROOT / p).is_file():
                raise HatError(f"config not found: {p}")
        self.space_cfg = load_yaml(str(ROOT / self.space_yml))
        self.data = self.space_cfg.get("data", f"data-bin/{self.name}")
        self.ckpt = Path(args.checkpoints or f"checkpoints/{self.name}/demo-{args.device}")

    def need_device(self, key: str) -> None:
        """Stages that train or translate need the device asked for (fairseq would quietly fall back to the CPU);
        the others (latency, predictor, export, table) run anywhere, so a GPU run can be finished on the target."""
        if self.args.device == "cuda" and key.startswith(("supertransformer", "search", "train_", "bleu_")):
            import torch

            if not torch.cuda.is_available():
                raise HatError(f"--device cuda: stage {key} needs a CUDA device and torch sees none here")

    # -- all of it ------------------------------------------------------------------------------------------------
    def run(self) -> int:
        t0 = time.time()
        self.prepare_data()
        super_ckpt = self.supertransformer()
        csv = self.latency_dataset()
        predictor = self.predictor(csv)
        budget = self.budget(predictor, super_ckpt)
        searched_yml = self.search(super_ckpt, predictor, budget)
        if self.args.until == "search":
            return 0
        subs = {"searched": searched_yml, "baseline": self.baseline_yml}
        ckpts = self.train_subs(subs, super_ckpt)
        if self.args.until == "train":
            return 0
        bleu = {n: self.bleu(n, subs[n], ckpts[n]) for n in subs}
        if self.args.until == "bleu":
            return 0
        exports = {n: self.export(n, subs[n], ckpts[n]) for n in subs}
        lat = self.measure(ckpts)
        rows = report.rows(ckpts, lat, bleu, predictor, self.protocol)
        report.table(self.res, rows, lat, budget, self.args.device, self.profile["inherit"])
        report.plot(self.res, rows, self.name)
        for n, e in exports.items():
            for line in e.get("rknn", []) + e.get("onnx", []):
                print(f"  {n}: {line}")
        print(f"\n==> done in {(time.time() - t0) / 60:.1f} min; results under {self.res}/")
        return 0

    # -- the stages ---------------------------------------------------------------------------------------------
    def prepare_data(self):
        from hat.data.prepare import prepare

        pair = "de-en" if "de-en" in str(self.data) else "en-fr"
        print("==> data: embedded corpus -> sentencepiece BPE -> fairseq binarized", flush=True)
        prepare(pair=pair, dest=ROOT / self.data, vocab_size=self.args.vocab_size)

    def supertransformer(self) -> str:
        if self.args.super:
            if not (ROOT / self.args.super).is_file():
                raise HatError(f"--super: checkpoint not found: {self.args.super}")
            print(f"\n==> SuperTransformer: {self.args.super} (--super)", flush=True)
            return self.args.super
        shipped = ROOT / SHIPPED.format(task=self.name, space=self.args.space)
        if self.args.device == "cpu" and not self.args.retrain_super and shipped.is_file():
            print(f"\n==> SuperTransformer: the shipped one, {rel(shipped)} (how it was made: "
                  f"{rel(shipped.with_suffix('.md'))}; --retrain-super trains it here)", flush=True)
            return str(shipped.relative_to(ROOT))
        save = self.ckpt / "supertransformer"

        def train():
            self.runner.run([self.py, "train.py", f"--configs={self.space_yml}", "--save-dir", save]
                            + self.profile["super"] + self._device_flags(), "SuperTransformer training")
            return {"checkpoint": str(save / "checkpoint_best.pt")}

        return self.runner.stage("supertransformer", "SuperTransformer training", train)["checkpoint"]

    def latency_dataset(self) -> str:
        csv = Path(self.args.latency_dataset) if self.args.latency_dataset else self.res / "latency_dataset.csv"

        def measure():
            self.runner.run([self.py, "latency_dataset.py", f"--configs={self.lat_yml}", "--lat-dataset-path", csv]
                            + self.profile["latency"], "latency dataset: sampled SubTransformers exported and measured")

        self.runner.stage("latency_dataset", "latency dataset (onnxruntime, this CPU)", measure, outputs=[csv])
        return str(csv)

    def predictor(self, csv: str) -> str:
        pt = self.res / "latency_predictor.pt"

        def train():
            out = self.runner.run([self.py, "latency_predictor.py", f"--configs={self.pred_yml}", "--lat-dataset-path",
                                   csv, "--ckpt-path", pt, "--scatter-path",
                                   self.res / "latency_predictor_scatter.png"], "latency predictor (MLP)")
            return {"report": [ln for ln in out.splitlines() if ln.startswith("|")][-12:]}

        self.runner.stage("latency_predictor", "latency predictor", train, outputs=[pt])
        return str(pt)

    def budget(self, predictor: str, super_ckpt: str) -> dict:
        """The search's constraints from the baseline: its predicted latency / speedup, its memory."""
        from hat.checkpoint import load_model
        from hat.predictor import LatencyPredictor

        sup = load_model(str(ROOT / super_ckpt))
        base = self.sub_config(self.baseline_yml)
        pred = LatencyPredictor.load(str(ROOT / predictor), sup.space)
        lat = float(pred.predict([base])[0])
        mem = report.memory_mb(base, sup.model.opt, self.protocol)
        b = {"baseline_predicted_ms": lat, "baseline_memory_mb": mem,
             "latency_constraint": round(lat / self.args.speedup, 2), "memory_constraint": round(mem, 3)}
        print(f"\n==> budget: baseline {self.args.baseline} predicted {lat:.1f} ms [predicted], {mem:.2f} MB fp16 "
              f"[memory model]; search for <= {b['latency_constraint']} ms (/{self.args.speedup}) and <= "
              f"{b['memory_constraint']} MB", flush=True)
        return b

    def search(self, super_ckpt: str, predictor: str, budget: dict) -> Path:
        out = self.res / "searched.yml"

        def go():
            self.runner.run([self.py, "evo_search.py", f"--configs={self.space_yml}", f"--evo-configs={self.evo_yml}",
                             "--restore-file", super_ckpt, "--ckpt-path", predictor, "--write-config-path", out,
                             "--latency-constraint", budget["latency_constraint"],
                             "--memory-constraint", budget["memory_constraint"]]
                            + self.profile["search"] + self._device_flags(), "evolutionary search")
            return {"config": str(out)}

        self.runner.stage("search", "evolutionary search", go)
        return out

    def save_dir(self, name: str, yml: Path) -> Path:
        """One directory per SubTransformer (its key in the name): a new search result never resumes from the
        checkpoint_last.pt of another shape."""
        return self.ckpt / f"{name}-{self.sub_config(yml).key()}"

    def train_cmd(self, name: str, yml: Path, super_ckpt: str) -> list:
        extra = ["--inherit-from", super_ckpt] if self.profile["inherit"] else []
        return ([self.py, "train.py", f"--configs={yml}", f"--sub-configs={self.common_yml}", "--save-dir",
                 self.save_dir(name, yml)] + extra + self.profile["sub"] + self._device_flags())

    def train_sub(self, name: str, yml: Path, super_ckpt: str) -> Path:
        env = None
        if self.args.device == "cuda":  # one GPU, as when both train side by side: the same recipe either way
            first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
            env = {"CUDA_VISIBLE_DEVICES": first}

        def go():
            self.runner.run(self.train_cmd(name, yml, super_ckpt), f"training SubTransformer {name} (one GPU)"
                            if env else f"training SubTransformer {name}", env=env)
            return {"checkpoint": str(self.save_dir(name, yml) / "checkpoint_best.pt")}

        return Path(self.runner.stage(f"train_{name}", f"training {name}", go)["checkpoint"])

    def train_subs(self, subs: Dict[str, Path], super_ckpt: str) -> Dict[str, Path]:
        """One after the other; on CUDA with one GPU per SubTransformer, side by side (same recipe each)."""
        gpus = 0
        if self.args.device == "cuda":
            import torch

            gpus = torch.cuda.device_count()
        todo = {n: y for n, y in subs.items() if not self.runner.done(f"train_{n}")}
        if gpus >= len(todo) > 1:
            self.need_device("train_")
            procs = {}
            for i, (n, y) in enumerate(todo.items()):
                cmd = [str(c) for c in self.train_cmd(n, y, super_ckpt)]
                log = ROOT / self.res / f"train_{n}.log"
                print(f"\n==> training SubTransformer {n} on GPU {i} (log {rel(log)})\n    {' '.join(cmd)}", flush=True)
                procs[n] = (self.runner.spawn(cmd, log, env={"CUDA_VISIBLE_DEVICES": str(i)}), time.time())
            for n, (proc, t0) in procs.items():
                if proc.wait() != 0:
                    raise HatError(f"training {n} failed (exit {proc.returncode}); see {rel(ROOT / self.res)}"
                                   f"/train_{n}.log")
                with open(ROOT / self.res / f"train_{n}.log", errors="replace") as f:
                    valid = [ln for ln in f if ":valid:" in ln or "| valid on" in ln]
                print(f"==> {n} trained in {time.time() - t0:.0f} s; last validation: "
                      f"{valid[-1].strip() if valid else 'none'}", flush=True)
                best = self.save_dir(n, todo[n]) / "checkpoint_best.pt"
                self.runner.write_stamp(f"train_{n}", {"checkpoint": str(best), "seconds": round(time.time() - t0, 1)})
            return {n: Path(self.runner.read_stamp(f"train_{n}")["checkpoint"]) for n in subs}
        return {n: self.train_sub(n, y, super_ckpt) for n, y in subs.items()}

    def bleu(self, name: str, yml: Path, ckpt: Path) -> dict:
        def go():
            out = self.runner.run([self.py, "generate.py", f"--configs={yml}", f"--sub-configs={self.common_yml}",
                                   "--path", ckpt, "--gen-subset", "test", "--results-path",
                                   self.res / f"{name}.test.hyp"] + self._device_flags(),
                                  f"BLEU of {name} on the test split")
            line = [ln for ln in out.splitlines() if ln.startswith("BLEU")]
            if not line:
                raise HatError(f"generate.py printed no BLEU line for {name}")
            return {"bleu": float(re.match(r"BLEU = ([\d.]+)", line[-1]).group(1)), "line": line[-1]}

        return self.runner.stage(f"bleu_{name}", f"BLEU of {name}", go)

    def export(self, name: str, yml: Path, ckpt: Path) -> dict:
        onnx_dir = self.res / "onnx"

        def go():
            info = {}
            out = self.runner.run([self.py, "convert2onnx.py", f"--configs={yml}", f"--sub-configs={self.onnx_yml}",
                                   "--model-path", ckpt, "--name", name, "--onnx-dir", onnx_dir],
                                  f"ONNX export of {name}")
            info["onnx"] = [ln.strip() for ln in out.splitlines() if "max |" in ln]
            try:
                import rknn.api  # noqa: F401
            except ImportError:
                print("\n==> RKNN: rknn-toolkit2 is not installed here; skipped (pip install rknn-toolkit2)")
                info["rknn"] = ["skipped: rknn-toolkit2 not installed"]
                return info
            out = self.runner.run([self.py, "convert2rknn.py", f"--configs={self.onnx_yml}", "--onnx-name", name,
                                   "--onnx-dir", onnx_dir, "--rknn-dir", self.res / "rknn", "--verify"],
                                  f"RKNN fp16 build of {name} + simulator check")
            info["rknn"] = [ln.strip() for ln in out.splitlines() if "cosine" in ln or "wrote" in ln][-6:]
            return info

        return self.runner.stage(f"export_{name}", f"export of {name}", go)

    def measure(self, models: Dict[str, Path]) -> dict:
        """Both trained models on the latency dataset's backend and protocol, interleaved rounds (drift hits both)."""

        def go():
            import statistics

            from hat.checkpoint import load_model
            from hat.latency.onnxruntime import OrtBackend
            from hat.latency.protocol import measure_block

            protocol = self.measuring_protocol()
            loaded = {n: load_model(str(ROOT / p)) for n, p in models.items()}
            by_key = {m.sub_config.key(): m.model for m in loaded.values()}
            opt = next(iter(loaded.values())).model.opt
            backend = OrtBackend(opt, protocol, work_dir=None, threads=protocol.threads,
                                 model_for=lambda cfg: by_key[cfg.key()], log=lambda *a, **k: None)
            rounds: Dict[str, List[float]] = {n: [] for n in models}
            handles = {n: backend.load(m.sub_config) for n, m in loaded.items()}
            print(f"\n==> measuring {', '.join(models)} on {backend.source} with the latency dataset's protocol "
                  f"({protocol.describe()}), {self.args.measure_rounds} interleaved rounds", flush=True)
            try:
                names = list(loaded)
                for _ in range(self.args.measure_rounds):  # each round: both models, their passes interleaved
                    ms = measure_block(backend, [loaded[n].sub_config for n in names], protocol,
                                       handles=[handles[n] for n in names])
                    for n, r in zip(names, ms):
                        rounds[n].append(r.total)
            finally:
                for h in handles.values():
                    backend.unload(h)
            return {n: {"latency_ms": statistics.median(v), "rounds_ms": v, "source": backend.source,
                        "detail": backend.detail, "protocol": protocol.to_dict()} for n, v in rounds.items()}

        return self.runner.stage("measure", "latency of the trained models", go)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _device_flags(self) -> List[str]:
        return ["--cpu"] if self.args.device == "cpu" else []

    def sub_config(self, yml: Path):
        from hat.space import SubConfig

        return SubConfig.from_hat_dict(load_yaml(str(ROOT / yml)))

    def measuring_protocol(self):
        """The protocol the latency dataset was measured with, as the predictor carries it: the final models are
        measured exactly so (refused when the predictor has none or another backend)."""
        from hat.predictor import LatencyPredictor

        pred = LatencyPredictor.load(str(ROOT / self.res / "latency_predictor.pt"))
        p = pred.protocol
        if p is None:
            raise HatError(f"{rel(self.res / 'latency_predictor.pt')} records no measuring protocol (an older "
                           f"latency dataset): remove it and its stamp to rebuild both")
        if p.backend != "onnxruntime":
            raise HatError(f"the predictor's dataset was measured on {p.backend}; the demo measures with onnxruntime")
        return p

    @functools.cached_property
    def protocol(self):
        """The latency protocol (shapes, runs) of the task's latency dataset config: used for the final models too.
        Read with the fairseq-free parser, as latency_dataset.py reads it."""
        from hat.args import add_latency_args, parse_args, protocol_of

        return protocol_of(parse_args([f"--configs={ROOT / self.lat_yml}"], description="latency protocol",
                                      hooks=(add_latency_args,)))
