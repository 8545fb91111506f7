"""SuperTransformer training recipes and HAT's premise on the demo task (issue 14, items 1-2).

Three steps, run by ``tools/device/supernet_recipe.sh`` on a GPU machine:

  plan    write N SubTransformer YAMLs spread over the space (the largest, the smallest and configs at evenly spaced
          parameter-count quantiles of 2,000 uniform samples), each trained from scratch with one recipe;
  eval    for every SuperTransformer checkpoint (``--supernet NAME=CKPT``) and every planned SubTransformer: the
          validation loss (label-smoothed, base 2, whole valid split; and nll) and test BLEU with inherited weights;
          the same for each SubTransformer trained alone (``--standalone DIR``: DIR/<sub>/checkpoint_best.pt);
  report  Spearman between inherited and from-scratch losses per recipe, the largest's BLEU gap, loss curves of the
          largest and smallest SubTransformer against the standalone runs (from the training logs), a PNG of the
          pairs; a JSON and a text table under --out.

Every figure names its source (inherited:<recipe> / standalone). Nothing here is timed as a speed figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SPACE = os.path.join(ROOT, "configs", "demo.de-en", "supertransformer", "space0.yml")
COMMON = os.path.join(ROOT, "configs", "demo.de-en", "subtransformer", "common.yml")


def _space():
    from hat.args import space_from_args
    from hat.config import load_yaml

    y = load_yaml(SPACE)
    return space_from_args(argparse.Namespace(**{k.replace("-", "_"): v for k, v in y.items()}))


def plan(out: str, n: int, seed: int, between: int = 0, prefix: str = "sub") -> None:
    """``between`` = k > 0: instead of the extremes and n-2 evenly spaced quantiles, the k configs evenly spaced
    strictly between each pair of neighbouring quantiles of an ``n`` plan (same seed and pool), i.e. (n-1)*k new
    SubTransformers that interleave an existing plan by size."""
    import yaml

    space = _space()
    rng = random.Random(seed)
    pool = {c.key(): c for c in (space.sample(rng) for _ in range(2000))}
    ranked = sorted(pool.values(), key=_params)
    if between:
        picks = []
        positions = [(q + j / (between + 1)) / (n - 1) for q in range(n - 1) for j in range(1, between + 1)]
    else:
        picks = [space.largest(), space.smallest()]
        positions = [q / (n - 1) for q in range(1, n - 1)]
    for pos in positions:
        c = ranked[round(pos * (len(ranked) - 1))]
        if all(c != p for p in picks):
            picks.append(c)
    os.makedirs(out, exist_ok=True)
    for i, c in enumerate(sorted(picks, key=_params)):
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.to_hat_dict().items()}
        with open(os.path.join(out, f"{prefix}{i}.yml"), "w") as f:
            f.write(f"# {c.key()}  ({_params(c) / 1e6:.2f} M parameters)\n" + yaml.safe_dump(d, sort_keys=False))
    print(f"| {len(picks)} SubTransformers in {out}")


def _params(cfg) -> int:
    from hat.memory import parameter_count
    from hat.models.transformer import ModelOptions

    return parameter_count(cfg, ModelOptions(src_vocab=7904, tgt_vocab=7904, share_all_embeddings=True))


def _valid_loss(path: str, data: str, cfg=None):
    import torch
    from fairseq import utils

    from hat.fairseq_plugin.checkpoint import load_checkpoint

    model, task, saved = load_checkpoint(path, data)
    if cfg is not None and not model.is_subtransformer:
        model.set_sample_config(cfg)
    crit = task.build_criterion(saved.criterion)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_tokens=8192, required_batch_size_multiple=1,
                                  num_workers=0, seed=1).next_epoch_itr(shuffle=False)
    loss = nll = size = ntok = 0.0
    with torch.no_grad():
        for sample in itr:
            sample = utils.move_to_cuda(sample) if dev.type == "cuda" else sample
            l, s, log = crit(model, sample)
            loss += float(l)
            nll += float(log.get("nll_loss", l))
            size += float(s)
            ntok += float(log["ntokens"])
    return loss / size / math.log(2), nll / ntok / math.log(2)


def _bleu(path: str, sub_yml: str, data: str) -> float:
    cmd = [sys.executable, os.path.join(ROOT, "generate.py"), f"--configs={sub_yml}", f"--sub-configs={COMMON}",
           "--path", path, "--data", data, "--gen-subset", "test", "--required-batch-size-multiple", "1",
           "--max-tokens", "8192"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    m = re.search(r"BLEU = ([0-9.]+)", r.stdout)
    if not m:
        raise RuntimeError(f"generate.py failed for {path} {sub_yml}: {(r.stderr or r.stdout)[-800:]}")
    return float(m.group(1))


def evaluate(args) -> None:
    from hat.args import sub_config_from_args
    from hat.config import load_yaml

    subs = sorted(f for f in os.listdir(args.plan) if f.endswith(".yml"))
    cfgs = {}
    for f in subs:
        y = load_yaml(os.path.join(args.plan, f))
        cfgs[f[:-4]] = sub_config_from_args(argparse.Namespace(**{k.replace("-", "_"): v for k, v in y.items()}))
    rows = []
    jobs = []
    for spec in args.supernet:
        name, path = spec.split("=", 1)
        for sub, cfg in cfgs.items():
            loss, nll = _valid_loss(path, args.data, cfg)
            rows.append({"model": sub, "key": cfg.key(), "source": f"inherited:{name}", "ckpt": path,
                         "valid_loss": loss, "valid_nll": nll, "params": _params(cfg)})
            jobs.append((len(rows) - 1, path, os.path.join(args.plan, sub + ".yml")))
    for sub, cfg in cfgs.items():
        path = os.path.join(args.standalone, sub, "checkpoint_best.pt")
        if not os.path.isfile(path):
            print(f"| no standalone checkpoint {path}", file=sys.stderr)
            continue
        loss, nll = _valid_loss(path, args.data)
        rows.append({"model": sub, "key": cfg.key(), "source": "standalone", "ckpt": path, "valid_loss": loss,
                     "valid_nll": nll, "params": _params(cfg)})
        jobs.append((len(rows) - 1, path, os.path.join(args.plan, sub + ".yml")))
    if not args.no_bleu:
        with ThreadPoolExecutor(args.jobs) as pool:
            for (i, _, _), bleu in zip(jobs, pool.map(lambda j: _bleu(j[1], j[2], args.data), jobs)):
                rows[i]["test_bleu"] = bleu
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    for r in rows:
        print(f"| {r['source']:22s} {r['model']:5s} loss {r['valid_loss']:.3f} nll {r['valid_nll']:.3f} "
              f"BLEU {r.get('test_bleu', float('nan')):.2f}  {r['params'] / 1e6:.2f}M")


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def merge(args) -> None:
    """Rows of several eval outputs in one file: ``--take FILE@SOURCE[@NEW]`` keeps FILE's rows of SOURCE (renamed
    NEW), so that e.g. a second seed's standalone rows become ``standalone:seed2``."""
    rows = []
    for spec in args.take:
        parts = spec.split("@")
        if len(parts) not in (2, 3):
            _fail(f"--take {spec}: FILE@SOURCE[@NEW_SOURCE]")
        try:
            with open(parts[0]) as f:
                got = [dict(r, source=parts[-1]) for r in json.load(f) if r["source"] == parts[1]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            _fail(f"--take {spec}: {parts[0]} is not a rows file of eval ({e})")
        if not got:
            _fail(f"--take {spec}: no rows of source {parts[1]} in {parts[0]}")
        rows += got
    seen = set()
    for r in rows:
        if (r["model"], r["source"]) in seen:
            _fail(f"merge: {r['model']} twice as {r['source']}")
        seen.add((r["model"], r["source"]))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"| {len(rows)} rows in {args.out}")


def _curves(log_path: str):
    """Validation points of a fairseq log: updates, valid loss (of the largest and smallest SubTransformer for a
    SuperTransformer), and training seconds so far (fairseq's per-interval ``train_wall`` of the train_inner lines summed,
    so resumed runs add up; to within log-interval updates)."""
    pts = []
    if not os.path.isfile(log_path):
        return pts
    seconds = 0.0
    num = lambda line, k: (float(m.group(1)) if (m := re.search(rf"\| {k} ([0-9.]+)", line)) else None)
    for line in open(log_path, errors="replace"):
        m = re.search(r"train_inner:.* train_wall=([0-9.]+)", line)
        if m:  # training seconds of the last log-interval updates (validation and checkpointing not counted)
            seconds += float(m.group(1))
        if "valid on" not in line or num(line, "num_updates") is None:
            continue
        pts.append({"updates": int(num(line, "num_updates")), "loss": num(line, "loss"),
                    "loss_largest": num(line, "loss_largest"), "loss_smallest": num(line, "loss_smallest"),
                    "seconds": seconds})
    return pts


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation)


def report(args) -> None:
    rows = json.load(open(args.results))
    by_source = {}  # source -> model -> row
    for r in rows:
        by_source.setdefault(r["source"], {})[r["model"]] = r
    stand = by_source.get("standalone", {})
    inherited = sorted(src for src in by_source if src.startswith("inherited:"))
    out = {"goal": "Spearman >= 0.9 between inherited and from-scratch valid loss over >= 8 SubTransformers; "
                   "largest SubTransformer's inherited BLEU within 2 of its from-scratch BLEU", "recipes": {}}
    lines = []
    for src in inherited:
        inh = by_source[src]
        common = sorted(set(inh) & set(stand))
        rho = _spearman([inh[m]["valid_loss"] for m in common], [stand[m]["valid_loss"] for m in common])
        largest = max(common, key=lambda m: stand[m]["params"])
        gap = (stand[largest].get("test_bleu", float("nan")) - inh[largest].get("test_bleu", float("nan")))
        met = rho >= 0.9 and gap <= 2.0 and len(common) >= 8
        out["recipes"][src] = {"n": len(common), "spearman_valid_loss": rho, "largest": largest,
                               "largest_bleu_inherited": inh[largest].get("test_bleu"),
                               "largest_bleu_standalone": stand[largest].get("test_bleu"), "bleu_gap": gap,
                               "goal_met": met}
        lines.append(f"{src}: n={len(common)} Spearman(valid loss) {rho:.3f}; largest BLEU inherited "
                     f"{inh[largest].get('test_bleu', float('nan')):.2f} vs standalone "
                     f"{stand[largest].get('test_bleu', float('nan')):.2f} (gap {gap:.2f}); goal "
                     f"{'met' if met else 'NOT met'}")
    # other seeds of the standalone runs: how well from-scratch training ranks itself (the ceiling of any Spearman
    # against it), and every recipe against the mean over the seeds where a model has them all
    for extra in sorted(src for src in by_source if src.startswith("standalone:")):
        other = by_source[extra]
        both = sorted(set(other) & set(stand))
        if len(both) < 3:
            continue
        rho = _spearman([stand[m]["valid_loss"] for m in both], [other[m]["valid_loss"] for m in both])
        diff = [abs(stand[m]["valid_loss"] - other[m]["valid_loss"]) for m in both]
        out.setdefault("seeds", {})[extra] = {"n": len(both), "spearman_vs_standalone": rho,
                                              "mean_abs_loss_diff": sum(diff) / len(diff)}
        lines.append(f"{extra} vs standalone (same {len(both)} SubTransformers, another seed): Spearman {rho:.3f}, "
                     f"mean |loss difference| {sum(diff) / len(diff):.3f}")
        mean = {m: (stand[m]["valid_loss"] + other[m]["valid_loss"]) / 2 for m in both}
        for src in inherited:
            inh = by_source[src]
            ms = [m for m in both if m in inh]
            rho = _spearman([inh[m]["valid_loss"] for m in ms], [mean[m] for m in ms])
            out["recipes"][src][f"spearman_vs_seed_mean_{extra}"] = rho
            lines.append(f"{src}: n={len(ms)} Spearman against the mean of standalone and {extra} {rho:.3f}")
    out["curves"] = {os.path.basename(p)[:-4]: _curves(p) for p in args.logs}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"premise{args.tag}.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(args.out, f"premise{args.tag}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, out["curves"], os.path.join(args.out, f"premise{args.tag}.png"))


def _plot(rows, curves, png) -> None:
    from hat.plotting import pyplot, save

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    stand = {r["model"]: r for r in rows if r["source"] == "standalone"}
    for src, marker in zip(sorted({r["source"] for r in rows if r["source"].startswith("inherited:")}), "os^dv"):
        pts = [(stand[r["model"]]["valid_loss"], r["valid_loss"]) for r in rows
               if r["source"] == src and r["model"] in stand]
        a.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=src)
    a.set_xlabel("valid loss, trained from scratch (standalone)")
    a.set_ylabel("valid loss, inherited weights")
    a.set_title("HAT's premise on the demo task (base-2 label-smoothed loss)")
    a.legend()
    for name, pts in curves.items():
        if not pts:
            continue
        if pts[0].get("loss_largest") is not None:
            b.plot([p["seconds"] for p in pts], [p["loss_largest"] for p in pts], label=f"{name}: largest")
            b.plot([p["seconds"] for p in pts], [p["loss_smallest"] for p in pts], "--", label=f"{name}: smallest")
        elif name in ("sub0", "sub7"):  # the smallest and the largest SubTransformer trained alone
            b.plot([p["seconds"] for p in pts], [p["loss"] for p in pts], ":", label=f"{name} alone")
    b.set_xlabel("training seconds (all runs side by side on one H200)")
    b.set_ylabel("valid loss (base 2, label-smoothed)")
    b.set_ylim(4.5, 7.5)
    b.legend(fontsize=7)
    save(fig, png)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("plan")
    a.add_argument("--out", required=True)
    a.add_argument("-n", type=int, default=8)
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--between", type=int, default=0, help="k SubTransformers between neighbouring quantiles of an -n plan")
    a.add_argument("--prefix", default="sub")
    e = sub.add_parser("eval")
    e.add_argument("--plan", required=True)
    e.add_argument("--supernet", action="append", default=[], help="NAME=CKPT (repeat)")
    e.add_argument("--standalone", required=True)
    e.add_argument("--data", default=os.path.join(ROOT, "data-bin", "demo.de-en"))
    e.add_argument("--out", required=True)
    e.add_argument("--jobs", type=int, default=8)
    e.add_argument("--no-bleu", action="store_true")
    m = sub.add_parser("merge")
    m.add_argument("--take", action="append", required=True, help="FILE@SOURCE[@NEW_SOURCE] (repeat)")
    m.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--logs", nargs="*", default=[])
    r.add_argument("--out", required=True)
    r.add_argument("--tag", default="", help="suffix of the output files (premise<TAG>.json/.txt/.png)")
    args = p.parse_args(argv)
    {"plan": lambda: plan(args.out, args.n, args.seed, args.between, args.prefix), "eval": lambda: evaluate(args),
     "report": lambda: report(args), "merge": lambda: merge(args)}[args.cmd]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
