"""The demo's result: one table (``table.md`` for people, ``table.json`` with every round) and the plots, every figure
with its source: ``[counted]`` parameters, ``[memory model]`` fp16 memory, ``[measured:<backend>]`` latency (median
of interleaved rounds), ``[predicted]`` latency (the latency predictor), ``[sacrebleu]`` BLEU on the test split.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List

from hat.io import write_json, write_text
from hat.pipeline.runner import ROOT, rel


def memory_source() -> str:
    from hat.memory import model_source

    return model_source("fp16")


def memory_mb(cfg, opt, protocol) -> float:
    """The memory model's fp16 footprint of SubTransformer ``cfg`` at the protocol's shapes (MB)."""
    from hat.memory import memory_mb as model_memory_mb

    return model_memory_mb(cfg, opt, "fp16", protocol)


def rows(ckpts: Dict[str, Path], lat: dict, bleu: dict, predictor: str, protocol) -> List[dict]:
    """One row per trained model (in the order of ``ckpts``) with every figure of the table."""
    from hat.checkpoint import load_model
    from hat.models.transformer import count_parameters
    from hat.predictor import LatencyPredictor

    out = []
    for n, ckpt in ckpts.items():
        m = load_model(str(ROOT / ckpt))
        cfg = m.sub_config
        pred = LatencyPredictor.load(str(ROOT / predictor), m.space)
        out.append({
            "model": n, "config": cfg.key(),
            "params_M": count_parameters(m.model) / 1e6,
            "memory_mb_fp16": memory_mb(cfg, m.model.opt, protocol),
            "latency_ms": lat[n]["latency_ms"], "latency_source": lat[n]["source"],
            "latency_rounds_ms": lat[n]["rounds_ms"],
            "predicted_ms": float(pred.predict([cfg])[0]),
            "bleu": bleu[n]["bleu"],
        })
    return out


def table(res: Path, rows: List[dict], lat: dict, budget: dict, device: str, inherit: bool) -> float:
    """Print the table and write ``<res>/table.md`` and ``<res>/table.json``; ``rows`` are the searched model's then
    the baseline's. Returns the speedup (median over the rounds of baseline / searched in the same round)."""
    s, b = rows[0], rows[1]
    lines = [
        f"| model | SubTransformer | params (M) [counted] | memory MB fp16 [{memory_source()}] | latency ms "
        f"[{s['latency_source']}] | latency ms [predicted] | BLEU test [sacrebleu] |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | `{r['config']}` | {r['params_M']:.2f} | {r['memory_mb_fp16']:.2f} | "
                     f"{r['latency_ms']:.1f} | {r['predicted_ms']:.1f} | {r['bleu']:.2f} |")
    pairs = list(zip(lat["baseline"]["rounds_ms"], lat["searched"]["rounds_ms"]))
    ratio = statistics.median(bl / sl for bl, sl in pairs)  # paired: both measured in the same round
    how = "fine-tuned from inherited SuperTransformer weights" if inherit else "trained from scratch"
    lines.append("")
    lines.append(f"searched vs baseline: {ratio:.2f}x faster [{s['latency_source']}, median over {len(pairs)} "
                 f"interleaved rounds of baseline/searched in the same round], BLEU {s['bleu'] - b['bleu']:+.2f}, "
                 f"memory {s['memory_mb_fp16'] / b['memory_mb_fp16']:.2f}x; budget: <= "
                 f"{budget['latency_constraint']} ms [predicted], <= {budget['memory_constraint']:.2f} MB "
                 f"[{memory_source()}]; device {device} ({how})")
    ok = lambda v, lim: "pass" if v <= lim else "FAIL"
    lines.append(f"budget check of the searched model: latency {s['latency_ms']:.2f} ms [{s['latency_source']}] <= "
                 f"{budget['latency_constraint']} ms: {ok(s['latency_ms'], budget['latency_constraint'])}; memory "
                 f"{s['memory_mb_fp16']:.3f} MB [{memory_source()}] <= {budget['memory_constraint']:.3f} MB: "
                 f"{ok(s['memory_mb_fp16'], budget['memory_constraint'])}")
    best = min(lat["baseline"]["rounds_ms"]) / min(lat["searched"]["rounds_ms"])
    lines.append(f"(fastest round of each: {best:.2f}x; every round in {rel(ROOT / res)}/table.json)")
    text = "\n".join(lines)
    print("\n==> result\n" + text)
    write_text(str(ROOT / res / "table.md"), text + "\n")
    write_json(str(ROOT / res / "table.json"), {"rows": rows, "budget": budget, "speedup": ratio,
                                                "rounds_ms": {r["model"]: lat[r["model"]]["rounds_ms"] for r in rows}},
               indent=1)
    return ratio


def plot(res: Path, rows: List[dict], name: str) -> None:
    """``<res>/latency_vs_bleu.png``: BLEU over measured latency, the bar the spread of the rounds; then list every
    plot under ``res`` (the stages' own: the predictor's scatter, the search's Pareto front)."""
    import numpy as np

    from hat.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for r, c in zip(rows, ("tab:red", "tab:blue")):
        q = np.percentile(r["latency_rounds_ms"], [25, 75])  # spread of the rounds: the measurement noise
        ax.errorbar([r["latency_ms"]], [r["bleu"]], xerr=[[r["latency_ms"] - q[0]], [q[1] - r["latency_ms"]]],
                    fmt="o", color=c, ms=8, capsize=4,
                    label=f"{r['model']} ({r['params_M']:.1f}M; bar: rounds 25-75%)")
    ax.set_xlabel(f"latency ms [{rows[0]['latency_source']}]")
    ax.set_ylabel("BLEU (test)")
    ax.set_title(f"{name}: searched vs baseline")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, str(ROOT / res / "latency_vs_bleu.png"))
    pngs = sorted(p.name for p in (ROOT / res).glob("*.png"))
    print(f"plots: {', '.join(str(Path(res) / p) for p in pngs)}")
