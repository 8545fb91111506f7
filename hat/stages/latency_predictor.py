"""latency_predictor.py: train a latency predictor on a latency dataset (ours or HAT's CSV), save it with its
normalisation and the dataset's measuring protocol.

    python latency_predictor.py --configs=configs/wmt14.en-de/latency_predictor/cpu_raspberrypi.yml
    python latency_predictor.py --configs=configs/demo.de-en/latency_predictor/onnxruntime.yml

HAT's keys (``lat-dataset-path``, ``lat-dataset-size``, ``feature-norm``, ``lat-norm``, ``feature-dim``,
``hidden-dim``, ``hidden-layer-num``, ``ckpt-path``, ``train-steps``, ``bsz``, ``lr``) keep their meaning; the search
space comes from the same YAML (HAT's latency_dataset layout: super dims + ``*-choice`` keys) or from the YAML that
``space-configs`` names. Prints test-split metrics next to a scikit-learn baseline on the same split, writes the
checkpoint atomically and a predicted-vs-measured scatter PNG next to it. The model: :mod:`hat.predictor`.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from hat.errors import ConfigError, HatError

BASELINES = ("gbr", "rf", "none")


def build_parser():
    from hat.config import int_at_least, stage_parser
    from hat.space import CHOICE_KEYS, SUPER_KEYS

    p = stage_parser("Train a latency predictor (HAT's latency_predictor.py)")
    g = p.add_argument_group("HAT's keys")
    g.add_argument("--lat-dataset-path", help="latency CSV: latency_dataset.py's (config column) or HAT's layout")
    g.add_argument("--lat-dataset-size", type=int_at_least(1), default=None, help="use the first N rows only")
    g.add_argument("--feature-norm", type=float, nargs="+", default=None,
                   help="HAT's per-feature divisors; used only when no search space is given")
    g.add_argument("--lat-norm", type=float, default=None,
                   help="HAT's latency divisor; ignored: latency is normalised from the training split")
    g.add_argument("--feature-dim", type=int, default=None,
                   help="number of features (10: HAT's ten; 11: + qkv dim); default: all the dataset has")
    g.add_argument("--hidden-dim", type=int_at_least(1), default=64, help="width of the MLP")
    g.add_argument("--hidden-layer-num", type=int_at_least(0), default=1,
                   help="hidden-to-hidden layers after the first layer (HAT's Net)")
    g.add_argument("--ckpt-path", default="latency_dataset/predictors/predictor.pt", help="checkpoint to write")
    g.add_argument("--train-steps", type=int_at_least(1), default=1000, help="optimizer steps")
    g.add_argument("--bsz", type=int_at_least(1), default=256, help="batch size per ensemble member")
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one cycle)")
    o = p.add_argument_group("ours")
    o.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    o.add_argument("--ensemble", type=int_at_least(1), default=5, help="MLPs averaged (trained together, batched)")
    o.add_argument("--seed", type=int, default=1, help="seed of the split and of the training")
    o.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1], help="train/valid/test fractions")
    o.add_argument("--no-engineered-features", action="store_true",
                   help="only the normalised features, no products of them")
    o.add_argument("--baseline", choices=BASELINES, default="gbr",
                   help="scikit-learn baseline on the same split: gradient boosting, random forest or none")
    o.add_argument("--scatter-path", default=None, help="PNG to write (default: next to the checkpoint)")
    o.add_argument("--space-configs", default=None,
                   help="YAML whose search space keys define the space (a supertransformer or latency_dataset config)")
    o.add_argument("--threads", type=int_at_least(1), default=1,
                   help="torch CPU threads (small matrices: 1 is fastest)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = p.add_argument_group("search space (HAT's latency_dataset keys)")
    for key in SUPER_KEYS:
        s.add_argument(f"--{key}", type=int, default=None)
    for key in CHOICE_KEYS:
        s.add_argument(f"--{key}", type=int, nargs="+", default=None)
    return p


def parse_args(argv: Sequence[str]):
    from hat.config import parse_stage

    return parse_stage(build_parser(), list(argv))


def space_of(args):
    """The search space from the YAML's own keys or from ``space-configs``; None when neither gives one."""
    from hat.config import load_yaml
    from hat.space import CHOICE_KEYS, SUPER_KEYS, SearchSpace

    inline = {k: getattr(args, k.replace("-", "_")) for k in SUPER_KEYS + CHOICE_KEYS}
    inline = {k: v for k, v in inline.items() if v is not None}
    if inline and args.space_configs:
        raise ConfigError("give the search space either as keys of the config or with space-configs, not both")
    if args.space_configs:
        d = load_yaml(args.space_configs)
        d = {k.replace("_", "-"): v for k, v in d.items()}
        d = {k: v for k, v in d.items() if k in SUPER_KEYS + CHOICE_KEYS}
        if not d:
            raise ConfigError(f"{args.space_configs} has no search space keys (*-choice, super dims)")
        return SearchSpace.from_dict(d, source=args.space_configs)
    if inline:
        return SearchSpace.from_dict(inline, source=args.configs or "command line")
    return None


def train_params(args):
    from hat.predictor import TrainParams

    for name in ("hidden_dim", "train_steps", "bsz", "ensemble"):
        if getattr(args, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.hidden_layer_num < 0:
        raise ConfigError(f"hidden-layer-num must be >= 0, got {args.hidden_layer_num}")
    if args.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {args.lr}")
    return TrainParams(
        hidden_dim=args.hidden_dim,
        hidden_layer_num=args.hidden_layer_num,
        ensemble=args.ensemble,
        train_steps=args.train_steps,
        bsz=args.bsz,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        split=tuple(args.split),
        engineered_features=not args.no_engineered_features,
        feature_norm=args.feature_norm,
    )


def baseline_predictions(kind: str, data, split, seed: int):
    """scikit-learn baseline fitted on the training split (raw features, latency in ms); predictions for all rows."""
    if kind == "none":
        return None, None
    if kind == "gbr":
        from sklearn.ensemble import GradientBoostingRegressor

        model, label = GradientBoostingRegressor(random_state=seed), "gbr (scikit-learn GradientBoostingRegressor)"
    else:
        from sklearn.ensemble import RandomForestRegressor

        model = RandomForestRegressor(n_estimators=200, random_state=seed, n_jobs=1)
        label = "rf (scikit-learn RandomForestRegressor)"
    tr = split["train"]
    model.fit(data.features[tr], data.latency[tr])
    return model.predict(data.features), label


def metrics_table(rows: List[Dict[str, object]], measured: str) -> str:
    """One line per prediction, each figure labelled with what it compares: ``predicted:<model>`` against
    ``measured:<source>``."""
    w = max(len(measured), len("measured"))
    n = max(len(f"predicted:{r['name']}") for r in rows)
    lines = [f"{'prediction':<{n}}  {'measured':<{w}}  {'RMSE ms':>10}  {'MRE %':>6}  {'within ±10 %':>12}  "
             f"{'Spearman':>8}"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"{'predicted:' + str(r['name']):<{n}}  {measured:<{w}}  {m['rmse_ms']:>10.3f}  "
                     f"{100 * m['mape']:>6.2f}  {100 * m['within10']:>12.1f}  {m['spearman']:>8.4f}")
    return "\n".join(lines)


def write_scatter(path: str, measured, predicted, baseline, source: str, title: str, mape: float,
                  baseline_name: str = "baseline") -> str:
    import numpy as np

    from hat.plotting import pyplot, save

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.2, 5))
    lo = float(min(np.min(measured), np.min(predicted)))
    hi = float(max(np.max(measured), np.max(predicted)))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="predicted = measured")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="±10 %")
    if baseline is not None:
        ax.scatter(measured, baseline, s=8, marker="x", color="tab:orange", alpha=0.6,
                   label=f"predicted:{baseline_name}")
    ax.scatter(measured, predicted, s=10, color="tab:blue", alpha=0.8,
               label=f"predicted:mlp (MRE {100 * mape:.2f} %)")
    ax.set_xlabel(f"{source} latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save(fig, path)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    import numpy as np
    import torch

    from hat import predictor as P

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.lat_dataset_path:
        raise ConfigError("lat-dataset-path is required (the latency CSV to train on)")
    if not os.path.isfile(args.lat_dataset_path):
        how = (f"python latency_dataset.py --configs={args.space_configs} writes it" if args.space_configs else
               "python latency_dataset.py --configs=configs/<task>/latency_dataset/<hardware>.yml writes it")
        raise ConfigError(f"latency dataset not found: {args.lat_dataset_path} ({how})")
    torch.set_num_threads(max(1, args.threads))
    space = space_of(args)
    params = train_params(args)
    data = P.read_dataset(args.lat_dataset_path, space=space, feature_dim=args.feature_dim,
                          size=args.lat_dataset_size)
    print(f"| {len(data)} SubTransformers from {data.path} ({data.layout} layout), latency {data.source}, "
          f"{len(data.feature_names)} features: {', '.join(data.feature_names)}")
    if data.protocols:
        from hat.latency.protocol import Protocol

        print(f"| measured with one protocol: {Protocol.from_json(data.protocols[0]).describe()}")
    elif data.layout == "ours":
        print("| the dataset records no measuring protocol (older format): the predictor will carry none")
    if space is not None:
        print(f"| search space {space.fingerprint()} from {space.source}: features normalised by its largest values")
        if args.feature_norm is not None:
            print("| feature-norm ignored: the normalisation comes from the search space (saved in the checkpoint)")
    elif args.feature_norm is None:
        print("| no search space given: features normalised by the training split's largest values")
    if args.lat_norm is not None:
        print(f"| lat-norm {args.lat_norm:g} ignored: latency is normalised from the training split "
              f"(saved in the checkpoint)")

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=params.train_steps, unit="step", desc="training", file=sys.stderr, leave=False)

    def progress(step, info):
        if bar is not None:
            bar.update(step - bar.n)
            if np.isfinite(info["valid_mape"]):
                bar.set_postfix(valid_mre=f"{100 * info['valid_mape']:.2f}%")

    t0 = time.time()
    pred, report = P.train(data, space=space, params=params, on_progress=progress, threads=args.threads)
    if bar is not None:
        bar.close()
    took = time.time() - t0
    tr, va, te = report.split["train"], report.split["valid"], report.split["test"]
    print(f"| split (seed {params.seed}): {len(tr)} train / {len(va)} valid / {len(te)} test; trained "
          f"{params.ensemble} x MLP {pred.net.weights[0].shape[1]}->{params.hidden_dim}x{params.hidden_layer_num + 1}"
          f"->1 for {params.train_steps} steps in {took:.1f}s; valid MRE {100 * report.metrics['valid']['mape']:.2f} % "
          f"(model selection on valid)")

    base_pred, base_label = baseline_predictions(args.baseline, data, report.split, params.seed)
    rows = [{"name": "mlp", "metrics": report.metrics["test"]}]
    if base_pred is not None:
        base_metrics = P.metrics(data.latency[te], base_pred[te])
        rows.append({"name": args.baseline, "metrics": base_metrics})
        pred.meta["baseline"] = {"name": base_label, "test": base_metrics}
    print(f"| test split: {len(te)} SubTransformers, mean latency {data.latency[te].mean():.3f} ms ({data.source}); "
          f"predicted:mlp = ours{'' if base_pred is None else f', predicted:{args.baseline} = {base_label}'}")
    for line in metrics_table(rows, data.source).splitlines():
        print(f"| {line}")

    try:
        pred.save(args.ckpt_path)
    except RuntimeError as e:  # torch's C++ writer failed (a full disk): not an OSError, and its text is cryptic
        raise HatError(f"cannot write {args.ckpt_path}: torch's writer failed ({str(e).splitlines()[0]}); is the "
                       f"disk full? nothing was written") from None
    scatter = args.scatter_path or os.path.splitext(args.ckpt_path)[0] + "_scatter.png"
    write_scatter(scatter, data.latency[te], report.predictions[te], None if base_pred is None else base_pred[te],
                  data.source, f"{os.path.basename(data.path)}: test split ({len(te)})", report.metrics["test"]["mape"],
                  args.baseline)
    print(f"| wrote {args.ckpt_path} and {scatter}")
    if space is not None:
        for name, cfg in (("largest", space.largest()), ("smallest", space.smallest())):
            print(f"| {name} SubTransformer of the space: {pred.predict(cfg):.3f} ms (predicted)")
    return 0
