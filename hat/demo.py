"""The main job on the embedded demo task, end to end (make demo).

    python -m hat.demo [--device cpu|cuda] [--retrain-super] [--retrain] [--speedup 1.5]

data -> SuperTransformer -> latency dataset (onnxruntime on this machine's CPU, the stand-in hardware) -> latency
predictor -> evolutionary search under a latency AND a memory constraint -> train the searched SubTransformer and a
hand-sized baseline Transformer the same way -> export (ONNX, RKNN fp16 + simulator check) -> measure both on the
backend -> BLEU on the test split -> one table (every figure with its source) and plots under results/<task>/.

The budget of the search is set from the baseline: latency <= predicted baseline latency / ``--speedup``, memory <=
the baseline's (memory model, fp16), so the question the table answers is: how much faster than a hand-sized
Transformer of the same memory does the search get, and at what BLEU?

``--device cpu`` (default; about 20 minutes on 2 cores) starts from the demo SuperTransformer shipped in
``pretrained/`` (trained by this project's train.py on 2 H200s, command and log beside it; ``--retrain-super`` trains
it here instead) and fine-tunes both SubTransformers from its inherited weights for the same few updates.
``--device cuda`` is the full-size demo: the SuperTransformer and both SubTransformers are trained from scratch,
fp16, with a larger latency dataset and search.

Every stage runs the same top-level script a user would run, leaves a stamp under ``results/<task>/stages``, and is
skipped on a rerun; interrupted training resumes from fairseq's checkpoint_last.pt, the latency dataset and the
search resume from their own files.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from hat.config import load_yaml
from hat.errors import HatError

ROOT = Path(__file__).resolve().parents[1]

# Settings of each profile; every value is a flag of the stage script it goes to.
PROFILES: Dict[str, dict] = {
    "cpu": {
        "latency": ["--lat-dataset-size", "100", "--latiter", "10", "--lat-warmup", "3"],
        "search": ["--evo-iter", "5", "--population-size", "12", "--parent-size", "4", "--mutation-size", "4",
                   "--crossover-size", "4", "--valid-cnt-max", "3"],
        # both SubTransformers start from the SuperTransformer's weights and get the same short fine-tuning
        "sub": ["--max-update", "120", "--lr", "0.001", "--warmup-updates", "20", "--save-interval-updates", "60",
                "--validate-interval-updates", "60", "--log-interval", "20"],
        "inherit": True,
        "super": [],
    },
    "cuda": {
        "latency": ["--lat-dataset-size", "300", "--latiter", "20", "--lat-warmup", "5"],
        "search": ["--evo-iter", "15", "--population-size", "40", "--parent-size", "10", "--mutation-size", "15",
                   "--crossover-size", "15"],
        "sub": ["--max-update", "3000", "--warmup-updates", "400", "--save-interval-updates", "1000",
                "--validate-interval-updates", "1000", "--keep-interval-updates", "1", "--log-interval", "200"],
        "inherit": False,
        "super": ["--max-update", "5000", "--warmup-updates", "400", "--save-interval-updates", "1000",
                  "--validate-interval-updates", "1000", "--keep-interval-updates", "1", "--log-interval", "200"],
    },
}
SHIPPED = "pretrained/{task}/{space}.pt"


class Pipeline:
    def __init__(self, args):
        self.args = args
        self.py = sys.executable
        self.task = Path(args.task_dir)
        self.name = self.task.name
        self.profile = {k: (list(v) if isinstance(v, list) else v) for k, v in PROFILES[args.device].items()}
        for item in args.stage_args or []:
            stage, _, flags = item.partition("=")
            if stage not in ("latency", "search", "sub", "super") or not flags.strip():
                raise HatError(f"--stage-args {item!r}: give STAGE='FLAGS' with STAGE latency, search, sub or super")
            self.profile[stage] += flags.split()
        self.res = Path(args.results or f"results/{self.name}")
        self.stages = ROOT / self.res / "stages"
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
        self.figures: Dict[str, dict] = {}

    # -- running stages -------------------------------------------------------------------------------------
    def run(self, cmd: List[str], what: str, env: Optional[Dict[str, str]] = None) -> str:
        cmd = [str(c) for c in cmd]
        print(f"\n==> {what}\n    {' '.join(cmd)}", flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        tail: List[str] = []
        filt = _Filter()
        for text, end in _segments(proc.stdout):
            if end == "\r":  # a progress bar redrawing itself: pass it through as it is
                sys.stdout.write(text + end)
            elif self.args.verbose or not filt.noise(text + end):
                sys.stdout.write(text + end)
                tail = (tail + [text + end])[-80:]
            sys.stdout.flush()
        if proc.wait() != 0:
            raise HatError(f"{what} failed (exit {proc.returncode}); see the output above")
        return "".join(tail)

    def stage(self, key: str, what: str, fn) -> dict:
        stamp = self.stages / f"{key}.json"
        if stamp.exists() and not self.args.retrain:
            info = json.loads(stamp.read_text())
            print(f"\n==> {what}: done before ({_rel(stamp)}, {info.get('seconds', '?')} s), skipped", flush=True)
            return info
        self.need_device(key)
        t0 = time.time()
        info = fn() or {}
        info["seconds"] = round(time.time() - t0, 1)
        self.stages.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, stamp)
        return info

    def need_device(self, key: str) -> None:
        """Stages that train or translate need the device asked for (fairseq would quietly fall back to the CPU);
        the others (latency, predictor, export, table) run anywhere, so a GPU run can be finished on the target."""
        if self.args.device == "cuda" and key.startswith(("supertransformer", "search", "train_", "bleu_")):
            import torch

            if not torch.cuda.is_available():
                raise HatError(f"--device cuda: stage {key} needs a CUDA device and torch sees none here")

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
            print(f"\n==> SuperTransformer: the shipped one, {_rel(shipped)} (how it was made: "
                  f"{_rel(shipped.with_suffix('.md'))}; --retrain-super trains it here)", flush=True)
            return str(shipped.relative_to(ROOT))
        save = self.ckpt / "supertransformer"

        def train():
            self.run([self.py, "train.py", f"--configs={self.space_yml}", "--save-dir", save]
                     + self.profile["super"] + self._device_flags(), "SuperTransformer training")
            return {"checkpoint": str(save / "checkpoint_best.pt")}

        return self.stage("supertransformer", "SuperTransformer training", train)["checkpoint"]

    def latency_dataset(self) -> str:
        csv = Path(self.args.latency_dataset) if self.args.latency_dataset else self.res / "latency_dataset.csv"
        self.stage("latency_dataset", "latency dataset (onnxruntime, this CPU)", lambda: self.run(
            [self.py, "latency_dataset.py", f"--configs={self.lat_yml}", "--lat-dataset-path", csv]
            + self.profile["latency"], "latency dataset: sampled SubTransformers exported and measured") and None)
        return str(csv)

    def predictor(self, csv: str) -> str:
        pt = self.res / "latency_predictor.pt"

        def train():
            out = self.run([self.py, "latency_predictor.py", f"--configs={self.pred_yml}", "--lat-dataset-path", csv,
                            "--ckpt-path", pt, "--scatter-path", self.res / "latency_predictor_scatter.png"],
                           "latency predictor (MLP)")
            return {"report": [ln for ln in out.splitlines() if ln.startswith("|")][-12:]}

        self.stage("latency_predictor", "latency predictor", train)
        return str(pt)

    def budget(self, predictor: str, super_ckpt: str) -> dict:
        """The search's constraints from the baseline: its predicted latency / speedup, its memory."""
        from hat.checkpoint import load_model
        from hat.predictor import LatencyPredictor

        sup = load_model(str(ROOT / super_ckpt))
        base = self.sub_config(self.baseline_yml)
        pred = LatencyPredictor.load(str(ROOT / predictor), sup.space)
        lat = float(pred.predict([base])[0])
        mem = self.memory_mb(base, sup.model.opt)
        b = {"baseline_predicted_ms": lat, "baseline_memory_mb": mem,
             "latency_constraint": round(lat / self.args.speedup, 2), "memory_constraint": round(mem, 3)}
        print(f"\n==> budget: baseline {self.args.baseline} predicted {lat:.1f} ms [predicted], {mem:.2f} MB fp16 "
              f"[memory model]; search for <= {b['latency_constraint']} ms (/{self.args.speedup}) and <= "
              f"{b['memory_constraint']} MB", flush=True)
        return b

    def search(self, super_ckpt: str, predictor: str, budget: dict) -> Path:
        out = self.res / "searched.yml"

        def go():
            self.run([self.py, "evo_search.py", f"--configs={self.space_yml}", f"--evo-configs={self.evo_yml}",
                      "--restore-file", super_ckpt, "--ckpt-path", predictor, "--write-config-path", out,
                      "--latency-constraint", budget["latency_constraint"],
                      "--memory-constraint", budget["memory_constraint"]]
                     + self.profile["search"] + self._device_flags(), "evolutionary search")
            return {"config": str(out)}

        self.stage("search", "evolutionary search", go)
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
            self.run(self.train_cmd(name, yml, super_ckpt), f"training SubTransformer {name} (one GPU)"
                     if env else f"training SubTransformer {name}", env=env)
            return {"checkpoint": str(self.save_dir(name, yml) / "checkpoint_best.pt")}

        return Path(self.stage(f"train_{name}", f"training {name}", go)["checkpoint"])

    def export(self, name: str, yml: Path, ckpt: Path) -> dict:
        onnx_dir = self.res / "onnx"

        def go():
            info = {}
            out = self.run([self.py, "convert2onnx.py", f"--configs={yml}", f"--sub-configs={self.onnx_yml}",
                            "--model-path", ckpt, "--name", name, "--onnx-dir", onnx_dir], f"ONNX export of {name}")
            info["onnx"] = [ln.strip() for ln in out.splitlines() if "max |" in ln]
            try:
                import rknn.api  # noqa: F401
            except ImportError:
                print("\n==> RKNN: rknn-toolkit2 is not installed here; skipped (pip install rknn-toolkit2)")
                info["rknn"] = ["skipped: rknn-toolkit2 not installed"]
                return info
            out = self.run([self.py, "convert2rknn.py", f"--configs={self.onnx_yml}", "--onnx-name", name,
                            "--onnx-dir", onnx_dir, "--rknn-dir", self.res / "rknn", "--verify"],
                           f"RKNN fp16 build of {name} + simulator check")
            info["rknn"] = [ln.strip() for ln in out.splitlines() if "cosine" in ln or "wrote" in ln][-6:]
            return info

        return self.stage(f"export_{name}", f"export of {name}", go)

    def measure(self, models: Dict[str, Path]) -> dict:
        """Both trained models on the latency dataset's backend and protocol, interleaved rounds (drift hits both)."""

        def go():
            import statistics

            from hat.checkpoint import load_model
            from hat.latency.backends import OrtBackend
            from hat.latency.protocol import measure

            protocol = self.protocol
            loaded = {n: load_model(str(ROOT / p)) for n, p in models.items()}
            by_key = {m.sub_config.key(): m.model for m in loaded.values()}
            opt = next(iter(loaded.values())).model.opt
            backend = OrtBackend(opt, protocol, work_dir=None, model_for=lambda cfg: by_key[cfg.key()],
                                 log=lambda *a, **k: None)
            rounds: Dict[str, List[float]] = {n: [] for n in models}
            handles = {n: backend.load(m.sub_config) for n, m in loaded.items()}
            print(f"\n==> measuring {', '.join(models)} on {backend.source} ({backend.detail}; src {protocol.src_len},"
                  f" {protocol.tgt_len} steps, beam {protocol.beam}), {self.args.measure_rounds} interleaved rounds",
                  flush=True)
            try:
                for _ in range(self.args.measure_rounds):
                    for n, m in loaded.items():
                        r = measure(backend, m.sub_config, protocol, handle=handles[n])
                        rounds[n].append(r.encoder[0] + r.decoder[0])
            finally:
                for h in handles.values():
                    backend.unload(h)
            return {n: {"latency_ms": statistics.median(v), "rounds_ms": v, "source": backend.source,
                        "detail": backend.detail} for n, v in rounds.items()}

        return self.stage("measure", "latency of the trained models", go)

    def bleu(self, name: str, yml: Path, ckpt: Path) -> dict:
        def go():
            out = self.run([self.py, "generate.py", f"--configs={yml}", f"--sub-configs={self.common_yml}",
                            "--path", ckpt, "--gen-subset", "test", "--results-path", self.res / f"{name}.test.hyp"]
                           + self._device_flags(), f"BLEU of {name} on the test split")
            line = [ln for ln in out.splitlines() if ln.startswith("BLEU")]
            if not line:
                raise HatError(f"generate.py printed no BLEU line for {name}")
            return {"bleu": float(re.match(r"BLEU = ([\d.]+)", line[-1]).group(1)), "line": line[-1]}

        return self.stage(f"bleu_{name}", f"BLEU of {name}", go)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _device_flags(self) -> List[str]:
        return ["--cpu"] if self.args.device == "cpu" else []

    def sub_config(self, yml: Path):
        from hat.space import SubConfig

        return SubConfig.from_hat_dict(load_yaml(str(ROOT / yml)))

    @functools.cached_property
    def protocol(self):
        """The latency protocol (shapes, runs) of the task's latency dataset config: used for the final models too."""
        from hat.latency.run import protocol_of
        from hat.train import build_args

        return protocol_of(build_args([f"--configs={self.lat_yml}"], extra_parser_hook=_lat_hook,
                                      data_optional=True))

    def memory_mb(self, cfg, opt) -> float:
        from hat.memory import memory_mb

        p = self.protocol
        return memory_mb(cfg, opt, "fp16", {"src_len": p.src_len, "tgt_len": p.tgt_len, "beam": p.beam})

    # -- all of it ------------------------------------------------------------------------------------------------
    def main(self) -> int:
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
        rows = self.table(subs, ckpts, lat, bleu, budget, predictor)
        self.plot(rows)
        for n, e in exports.items():
            for line in e.get("rknn", []) + e.get("onnx", []):
                print(f"  {n}: {line}")
        print(f"\n==> done in {(time.time() - t0) / 60:.1f} min; results under {self.res}/")
        return 0

    def train_subs(self, subs: Dict[str, Path], super_ckpt: str) -> Dict[str, Path]:
        """One after the other; on CUDA with one GPU per SubTransformer, side by side (same recipe each)."""
        gpus = 0
        if self.args.device == "cuda":
            import torch

            gpus = torch.cuda.device_count()
        todo = {n: y for n, y in subs.items() if self.args.retrain or not (self.stages / f"train_{n}.json").exists()}
        if gpus >= len(todo) > 1:
            self.need_device("train_")
            procs = {}
            for i, (n, y) in enumerate(todo.items()):
                cmd = [str(c) for c in self.train_cmd(n, y, super_ckpt)]
                log = ROOT / self.res / f"train_{n}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                print(f"\n==> training SubTransformer {n} on GPU {i} (log {_rel(log)})\n    {' '.join(cmd)}", flush=True)
                env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i), PYTHONUNBUFFERED="1")
                procs[n] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"),
                                             stderr=subprocess.STDOUT), time.time())
            for n, (proc, t0) in procs.items():
                if proc.wait() != 0:
                    raise HatError(f"training {n} failed (exit {proc.returncode}); see {_rel(ROOT / self.res)}"
                                   f"/train_{n}.log")
                valid = [ln for ln in open(ROOT / self.res / f"train_{n}.log") if ":valid:" in ln or "| valid on" in ln]
                print(f"==> {n} trained in {time.time() - t0:.0f} s; last validation: "
                      f"{valid[-1].strip() if valid else 'none'}", flush=True)
                self.stages.mkdir(parents=True, exist_ok=True)
                (self.stages / f"train_{n}.json").write_text(json.dumps(
                    {"checkpoint": str(self.save_dir(n, todo[n]) / "checkpoint_best.pt"),
                     "seconds": round(time.time() - t0, 1)}) + "\n")
            return {n: Path(json.loads((self.stages / f"train_{n}.json").read_text())["checkpoint"]) for n in subs}
        return {n: self.train_sub(n, y, super_ckpt) for n, y in subs.items()}

    def table(self, subs, ckpts, lat, bleu, budget, predictor) -> List[dict]:
        from hat.checkpoint import load_model
        from hat.models.transformer import count_parameters
        from hat.predictor import LatencyPredictor

        rows = []
        for n in subs:
            m = load_model(str(ROOT / ckpts[n]))
            cfg = m.sub_config
            pred = LatencyPredictor.load(str(ROOT / predictor), m.space)
            rows.append({
                "model": n, "config": cfg.key(),
                "params_M": count_parameters(m.model) / 1e6,
                "memory_mb_fp16": self.memory_mb(cfg, m.model.opt),
                "latency_ms": lat[n]["latency_ms"], "latency_source": lat[n]["source"],
                "latency_rounds_ms": lat[n]["rounds_ms"],
                "predicted_ms": float(pred.predict([cfg])[0]),
                "bleu": bleu[n]["bleu"],
            })
        s, b = rows[0], rows[1]
        lines = [
            f"| model | SubTransformer | params (M) [counted] | memory MB fp16 [memory model] | latency ms "
            f"[{s['latency_source']}] | latency ms [predicted] | BLEU test [sacrebleu] |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(f"| {r['model']} | `{r['config']}` | {r['params_M']:.2f} | {r['memory_mb_fp16']:.2f} | "
                         f"{r['latency_ms']:.1f} | {r['predicted_ms']:.1f} | {r['bleu']:.2f} |")
        import statistics

        pairs = list(zip(lat["baseline"]["rounds_ms"], lat["searched"]["rounds_ms"]))
        ratio = statistics.median(bl / sl for bl, sl in pairs)  # paired: both measured in the same round
        lines.append("")
        lines.append(f"searched vs baseline: {ratio:.2f}x faster [{s['latency_source']}, median over {len(pairs)} "
                     f"interleaved rounds of baseline/searched in the same round], BLEU {s['bleu'] - b['bleu']:+.2f}, memory "
                     f"{s['memory_mb_fp16'] / b['memory_mb_fp16']:.2f}x; budget: <= {budget['latency_constraint']} ms "
                     f"[predicted], <= {budget['memory_constraint']:.2f} MB [memory model]; device {self.args.device}"
                     f" ({'fine-tuned from inherited SuperTransformer weights' if self.profile['inherit'] else 'trained from scratch'})")
        best = min(lat["baseline"]["rounds_ms"]) / min(lat["searched"]["rounds_ms"])
        lines.append(f"(fastest round of each: {best:.2f}x; every round in {_rel(ROOT / self.res)}/table.json)")
        text = "\n".join(lines)
        print("\n==> result\n" + text)
        (ROOT / self.res / "table.md").write_text(text + "\n")
        (ROOT / self.res / "table.json").write_text(json.dumps({"rows": rows, "budget": budget, "speedup": ratio,
                                                                "rounds_ms": {n: lat[n]["rounds_ms"] for n in subs}},
                                                               indent=1) + "\n")
        return rows

    def plot(self, rows: List[dict]) -> None:
        import logging

        import matplotlib

        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's imports leave the root at DEBUG

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(5, 4))
        for r, c in zip(rows, ("tab:red", "tab:blue")):
            q = np.percentile(r["latency_rounds_ms"], [25, 75])  # spread of the rounds: the measurement noise
            ax.errorbar([r["latency_ms"]], [r["bleu"]], xerr=[[r["latency_ms"] - q[0]], [q[1] - r["latency_ms"]]],
                        fmt="o", color=c, ms=8, capsize=4,
                        label=f"{r['model']} ({r['params_M']:.1f}M; bar: rounds 25-75%)")
        ax.set_xlabel(f"latency ms [{rows[0]['latency_source']}]")
        ax.set_ylabel("BLEU (test)")
        ax.set_title(f"{self.name}: searched vs baseline")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = ROOT / self.res / "latency_vs_bleu.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        pngs = sorted(p.name for p in (ROOT / self.res).glob("*.png"))
        print(f"plots: {', '.join(str(self.res / p) for p in pngs)}")


def _segments(stream):
    """(text, end) pieces of a child's output as they arrive; end is "\\n" for a line, "\\r" for a progress bar's
    redraw (kept apart so the bar moves in place instead of becoming one line per update)."""
    buf = b""
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while True:
            cuts = [i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0]
            if not cuts:
                break
            i = min(cuts)
            yield buf[:i].decode("utf-8", "replace"), chr(buf[i])
            buf = buf[i + 1:]
    if buf:
        yield buf.decode("utf-8", "replace"), "\n"


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def _lat_hook(parser):
    from hat.latency.run import add_latency_args

    add_latency_args(parser)


_KEEP = ("train_inner", ":valid:", "num. shared model params", "done training", "Stopping", "early stop")


_HYDRA_CHATTER = ("The version_base parameter", "Please specify a compat", "Will assume defaults", "See https://hydra",
                  "This behavior is deprecated", "The strict flag", "'config' is validated")


class _Filter:
    """fairseq's INFO/DEBUG log (and the lines that continue a dropped record, e.g. the model print) and library
    warnings are dropped; progress, validation, results and errors stay. --verbose shows everything."""

    def __init__(self):
        self.dropping = False

    def noise(self, line: str) -> bool:
        if line[:1] in (" ", "\t", ")") and self.dropping:
            return True
        self.dropping = False
        if line.startswith(("INFO:", "DEBUG:", "WARNING:")) and not any(k in line for k in _KEEP):
            self.dropping = True
            return True
        if line.startswith(_HYDRA_CHATTER):
            self.dropping = True
            return True
        if "Warning:" in line or "warnings.warn" in line:
            self.dropping = True
            return True
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hat.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--task-dir", default="configs/demo.de-en", help="configs/<task> laid out as HAT's")
    ap.add_argument("--space", default="space0", help="supertransformer/<space>.yml")
    ap.add_argument("--baseline", default="baseline", help="subtransformer/<baseline>.yml: the hand-sized model")
    ap.add_argument("--device", choices=sorted(PROFILES), default="cpu",
                    help="cpu: ~20 min on 2 cores from the shipped SuperTransformer; cuda: the full-size demo")
    ap.add_argument("--speedup", type=float, default=1.5, help="latency budget = baseline's predicted / speedup")
    ap.add_argument("--measure-rounds", type=int, default=7, help="interleaved latency rounds of the final models")
    ap.add_argument("--results", default=None, help="results directory (default results/<task>)")
    ap.add_argument("--checkpoints", default=None,
                    help="where trained models go (default checkpoints/<task>/demo-<device>)")
    ap.add_argument("--retrain", action="store_true", help="run every stage's script again even where its stamp says done (each still resumes its own "
                         "files: training from checkpoint_last.pt, the latency dataset from its CSV; remove those "
                         "to start a stage from scratch)")
    ap.add_argument("--retrain-super", action="store_true", help="train the SuperTransformer instead of the shipped")
    ap.add_argument("--super", default=None, help="use this SuperTransformer checkpoint (no training)")
    ap.add_argument("--latency-dataset", default=None,
                    help="latency CSV to use/complete (default: results/<task>/latency_dataset.csv, measured here)")
    ap.add_argument("--until", choices=["search", "train", "bleu"], default=None,
                    help="stop after this stage (e.g. train on a GPU machine, measure latency on the target)")
    ap.add_argument("--stage-args", action="append", metavar="STAGE=FLAGS",
                    help="more flags for a stage's script, after the profile's (later flags win): latency, search, "
                         "sub (both SubTransformers) or super; e.g. --stage-args 'search=--evo-iter 10'")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--verbose", action="store_true", help="show fairseq's full log")
    args = ap.parse_args(argv)
    return Pipeline(args).main()


if __name__ == "__main__":
    from hat.cli import run

    run(main)
