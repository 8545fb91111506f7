#!/usr/bin/env python
"""Training throughput of the SuperTransformer at a sampled SubTransformer vs a dense plain-PyTorch Transformer.

Both models get the same architecture (the sampled SubTransformer's per-layer shapes), the same batch, the same
device, precision and optimizer (Adam, ``--adam fused`` by default on both sides); one training step is forward +
backward + Adam. Per config the candidates run in rounds, each round timing ``--steps`` steps of every candidate in
turn (the order rotates between rounds), so that drift on a shared machine hits all alike. Candidates:

* ``supernet``: this checkout's SuperTransformer, sampled at the config (Adam over all super weights, as HAT);
* ``dense``: a dense Transformer of exactly that shape, eager (SDPA's default backend choice unless
  ``--no-cudnn-sdpa``; the supernet's attention never takes cuDNN's, see ``hat.modules.elastic.attention``);
* ``dense_compiled`` (``--compile``): the same dense model and loss under ``torch.compile`` (default mode);
* ``supernet_before`` (``--before DIR``): the SuperTransformer of an earlier commit, unpacked in DIR
  (``git archive COMMIT hat/modules hat/models | tar -x -C DIR``), same weights.

Prints tokens/s of each, the ratios per config and their geometric means (goal: supernet / dense >= 0.95; moonshot:
supernet / dense_compiled >= 0.9), with the spread of the geometric mean over rounds.

    python benchmarks/supernet_throughput.py [--space configs/demo.de-en/supertransformer/space0.yml]
        [--device cpu|cuda] [--bf16] [--tokens 4096] [--configs 3] [--rounds 3] [--steps 10] [--compile]
        [--before DIR] [--adam fused|foreach] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hat.config import load_yaml  # noqa: E402
from hat.models import ModelOptions, SuperTransformer  # noqa: E402
from hat.space import SearchSpace, ende_layers  # noqa: E402


# ---- a dense reference written with plain PyTorch only (no elastic code) ------------------------------------------
class DenseAttention(nn.Module):
    """Separate q, k, v projections, as fairseq's (and HAT's) attention."""

    def __init__(self, emb, kv_emb, qkv, heads):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(emb, qkv), nn.Linear(kv_emb, qkv), nn.Linear(kv_emb, qkv)
        self.o = nn.Linear(qkv, emb)
        self.heads = heads

    def forward(self, x, mem, mask):
        b, t, _ = x.shape
        s = mem.shape[1]
        h = self.heads
        q = self.q(x).view(b, t, h, -1).transpose(1, 2)
        k = self.k(mem).view(b, s, h, -1).transpose(1, 2)
        v = self.v(mem).view(b, s, h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class DenseLayer(nn.Module):
    def __init__(self, emb, ffn, qkv, heads, enc_emb=None, ende_heads=None):
        super().__init__()
        self.self_attn, self.ln1 = DenseAttention(emb, emb, qkv, heads), nn.LayerNorm(emb)
        self.cross = DenseAttention(emb, enc_emb, qkv, ende_heads) if enc_emb else None
        self.ln2 = nn.LayerNorm(emb) if enc_emb else None
        self.fc1, self.fc2, self.ln3 = nn.Linear(emb, ffn), nn.Linear(ffn, emb), nn.LayerNorm(emb)

    def forward(self, x, self_mask, mem=None, mem_mask=None):
        x = self.ln1(x + F.dropout(self.self_attn(x, x, self_mask), 0.1, self.training))
        if self.cross is not None:
            x = self.ln2(x + F.dropout(self.cross(x, mem, mem_mask), 0.1, self.training))
        return self.ln3(x + F.dropout(self.fc2(F.relu(self.fc1(x))), 0.1, self.training))


class DenseTransformer(nn.Module):
    def __init__(self, cfg, vocab, pad=1, max_pos=1024):
        super().__init__()
        e, d = cfg.encoder_embed_dim, cfg.decoder_embed_dim
        self.emb = nn.Embedding(vocab, max(e, d), padding_idx=pad)
        self.e, self.d, self.pad = e, d, pad
        self.enc = nn.ModuleList(
            DenseLayer(e, f, cfg.qkv_dim, h) for f, h in zip(cfg.encoder_ffn_embed_dim, cfg.encoder_self_attention_heads)
        )
        self.dec = nn.ModuleList(
            DenseLayer(d, f, cfg.qkv_dim, h, e, eh)
            for f, h, eh in zip(cfg.decoder_ffn_embed_dim, cfg.decoder_self_attention_heads, cfg.decoder_ende_attention_heads)
        )
        self.arb = cfg.decoder_arbitrary_ende_attn
        half = lambda dim: torch.exp(torch.arange(dim // 2) * -(math.log(10000) / (dim // 2 - 1)))
        pos = torch.arange(max_pos).float()[:, None]
        self.register_buffer("pe_e", torch.cat([torch.sin(pos * half(e)), torch.cos(pos * half(e))], 1), persistent=False)
        self.register_buffer("pe_d", torch.cat([torch.sin(pos * half(d)), torch.cos(pos * half(d))], 1), persistent=False)

    def forward(self, src, tgt):
        pad = src.eq(self.pad)
        x = math.sqrt(self.e) * self.emb.weight[:, : self.e][src] + self.pe_e[: src.size(1)]
        x = F.dropout(x, 0.1, self.training)
        m = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, float("-inf"))[:, None, None, :]
        states = []
        for layer in self.enc:
            x = layer(x, m)
            states.append(x)
        t = tgt.size(1)
        causal = torch.full((t, t), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        y = math.sqrt(self.d) * self.emb.weight[:, : self.d][tgt] + self.pe_d[:t]
        y = F.dropout(y, 0.1, self.training)
        for i, layer in enumerate(self.dec):
            k = ende_layers(self.arb[i])
            mem = torch.cat([states[-1 - j] for j in range(k)], 1)
            y = layer(y, causal, mem, torch.cat([m] * k, -1))
        return F.linear(y, self.emb.weight[:, : self.d])


# ---- the SuperTransformer of an earlier commit, side by side with this checkout's --------------------------------
def load_before(root: str):
    """``SuperTransformer`` and ``ModelOptions`` from ``root/hat/models/transformer.py`` with that tree's
    ``hat/modules/elastic.py`` (everything else, e.g. ``hat.space``, from this checkout)."""
    mods = {}
    for name, rel in (("elastic", "hat/modules/elastic.py"), ("transformer", "hat/models/transformer.py")):
        path = os.path.join(root, rel)
        src = open(path).read().replace("from hat.modules.elastic import", "from hat_before_elastic import")
        mod = types.ModuleType(f"hat_before_{name}")
        mod.__file__ = path
        sys.modules[mod.__name__] = mod
        exec(compile(src, path, "exec"), mod.__dict__)
        mods[name] = mod
    return mods["transformer"].SuperTransformer, mods["transformer"].ModelOptions


# ---- measurement --------------------------------------------------------------------------------------------------
def make_batch(tokens, vocab, device, gen):
    src_len, tgt_len = 24, 26
    bsz = max(1, tokens // tgt_len)
    src = torch.randint(4, vocab, (bsz, src_len), generator=gen)
    lens = torch.randint(src_len // 2, src_len + 1, (bsz,), generator=gen)
    for i, n in enumerate(lens.tolist()):
        src[i, : src_len - n] = 1  # left padding as fairseq batches sources
    tgt = torch.randint(4, vocab, (bsz, tgt_len + 1), generator=gen)
    return src.to(device), tgt[:, :-1].to(device), tgt[:, 1:].to(device)


def loss_of(model, src, prev, target):
    logits = model(src, prev)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), target.reshape(-1))


class Candidate:
    """A model, its optimizer and its step function (``loss_fn(src, prev, target)``; compiled or eager)."""

    def __init__(self, name, model, optimizer, loss_fn):
        self.name, self.model, self.opt, self.loss_fn = name, model, optimizer, loss_fn
        self.seconds, self.steps = 0.0, 0
        self.round_seconds = []

    def step(self, batch, device, bf16):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = self.loss_fn(*batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def adam(params, kind, device):
    kw = dict(lr=1e-4, betas=(0.9, 0.98))
    if kind == "fused":
        kw["fused"] = True
    elif kind == "foreach":
        kw["foreach"] = True
    return torch.optim.Adam(params, **kw)


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="configs/demo.de-en/supertransformer/space0.yml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--tokens", type=int, default=4096, help="target tokens per batch")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per candidate and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per config (the spread is over rounds)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--configs", type=int, default=3, help="SubTransformers to measure (the largest, then sampled)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--adam", choices=["fused", "foreach", "default"], default="fused",
                    help="torch.optim.Adam variant, the same on every side (default: fused)")
    ap.add_argument("--compile", action="store_true", help="also the dense model + loss under torch.compile")
    ap.add_argument("--compile-budget", type=float, default=600.0,
                    help="seconds of compilation after which later configs skip the compiled candidate")
    ap.add_argument("--before", help="directory with hat/modules and hat/models of an earlier commit")
    ap.add_argument("--no-cudnn-sdpa", action="store_true",
                    help="turn SDPA's cuDNN backend off for every candidate (the supernet's attention never uses it: "
                         "hat.modules.elastic.attention); by default the dense model gets PyTorch's default choice")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.no_cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if args.compile:
        import torch._dynamo as dynamo  # one graph per config: room for all of them

        for key in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                    "accumulated_recompile_limit"):
            if hasattr(dynamo.config, key):
                setattr(dynamo.config, key, 256)
    space = SearchSpace.from_dict(load_yaml(args.space), source=args.space)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    sup = SuperTransformer(space.super_config(), ModelOptions(args.vocab, args.vocab, share_all_embeddings=True))
    sup = sup.to(device)
    before = None
    if args.before:
        BeforeModel, BeforeOptions = load_before(args.before)
        before = BeforeModel(space.super_config(), BeforeOptions(args.vocab, args.vocab, share_all_embeddings=True))
        before.load_state_dict(sup.state_dict())
        before = before.to(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    head = (f"device {device} ({gpu or platform.processor() or 'cpu'}), threads {torch.get_num_threads()}, bf16 "
            f"{args.bf16}, torch {torch.__version__}, adam {args.adam} (every side), space {args.space}, vocab "
            f"{args.vocab}, {args.rounds} rounds x {args.steps} steps per candidate and config, cuDNN SDPA for the "
            f"dense model {'on' if torch.backends.cuda.cudnn_sdp_enabled() else 'off'}")
    print(head, flush=True)
    results, compile_spent = [], 0.0
    sup_c = Candidate("supernet", sup, adam(sup.parameters(), args.adam, device), lambda *b: loss_of(sup, *b))
    bef_c = None
    if before is not None:
        bef_c = Candidate("supernet_before", before, adam(before.parameters(), args.adam, device),
                          lambda *b: loss_of(before, *b))
    for c in range(args.configs):
        cfg = space.largest() if c == 0 else space.sample(rng)
        sup.set_sample_config(cfg).train()
        if before is not None:
            before.set_sample_config(cfg).train()
        dense = DenseTransformer(cfg, args.vocab).to(device).train()
        dense_opt = adam(dense.parameters(), args.adam, device)
        cands = [sup_c, Candidate("dense", dense, dense_opt, lambda *b, m=dense: loss_of(m, *b))]
        if bef_c is not None:
            cands.append(bef_c)
        compile_s = None
        if args.compile and compile_spent < args.compile_budget:
            compiled = torch.compile(lambda *b, m=dense: loss_of(m, *b))
            cands.append(Candidate("dense_compiled", dense, dense_opt, compiled))
        batch = make_batch(args.tokens, args.vocab, device, gen)
        ntok = batch[1].numel()
        for cand in cands:
            cand.seconds, cand.steps, cand.round_seconds = 0.0, 0, []
            sync(device)
            t = time.perf_counter()
            for _ in range(args.warmup):
                cand.step(batch, device, args.bf16)
            sync(device)
            if cand.name == "dense_compiled":
                compile_s = time.perf_counter() - t
                compile_spent += compile_s
        for r in range(args.rounds):
            order = cands[r % len(cands):] + cands[: r % len(cands)]
            for cand in order:
                sync(device)
                t = time.perf_counter()
                for _ in range(args.steps):
                    cand.step(batch, device, args.bf16)
                sync(device)
                dt = time.perf_counter() - t
                cand.seconds += dt
                cand.steps += args.steps
                cand.round_seconds.append(dt)
        row = {"config": cfg.key(), "kind": "largest" if c == 0 else "sampled",
               "params_dense": sum(p.numel() for p in dense.parameters()), "tokens_per_batch": ntok,
               "compile_seconds": compile_s}
        for cand in cands:
            row[f"{cand.name}_tok_s"] = ntok * cand.steps / cand.seconds
            row[f"{cand.name}_round_tok_s"] = [ntok * args.steps / s for s in cand.round_seconds]
        for num, den, key in (("supernet", "dense", "ratio"), ("supernet", "dense_compiled", "ratio_compiled"),
                              ("supernet_before", "dense", "ratio_before"),
                              ("dense_compiled", "dense", "compiled_speedup")):
            if f"{num}_tok_s" in row and f"{den}_tok_s" in row:
                row[key] = row[f"{num}_tok_s"] / row[f"{den}_tok_s"]
                row[key + "_rounds"] = [a / b for a, b in zip(row[f"{num}_round_tok_s"], row[f"{den}_round_tok_s"])]
        results.append(row)
        if args.json:  # after every config, so that a run stopped by a time limit keeps what it measured
            write_json(args.json, head, device, gpu, args, results, summarize(results, args.rounds))
        figures = ", ".join(f"{cand.name} {row[f'{cand.name}_tok_s']:,.0f}" for cand in cands)
        ratios = ", ".join(f"{k} {row[k]:.3f}" for k in ("ratio", "ratio_compiled", "ratio_before") if k in row)
        print(f"config {row['config']} ({row['kind']}, {row['params_dense'] / 1e6:.2f}M params, {ntok} tgt "
              f"tokens/batch): {figures} tok/s; {ratios}"
              + (f"; compile {compile_s:.0f} s" if compile_s is not None else "") + f"  [measured:{device.type}]",
              flush=True)
        del dense, dense_opt, cands
    summary = summarize(results, args.rounds)
    tag = f"[measured:{device.type}{'+bf16' if args.bf16 else ''}]"
    names = {"ratio": "supernet/dense (eager)", "ratio_compiled": "supernet/dense compiled",
             "ratio_before": "supernet before/dense (eager)", "compiled_speedup": "dense compiled/dense eager"}
    for key, s in summary.items():
        print(f"{names[key]}: geometric mean {s['geomean']:.3f} over {s['configs']} configs (rounds "
              f"{s['spread'][0]:.3f}-{s['spread'][1]:.3f}) {tag}")
    if "ratio" in summary:
        print(f"goal supernet/dense >= 0.95: {'met' if summary['ratio']['geomean'] >= 0.95 else 'not met'}"
              + (f"; moonshot supernet/dense compiled >= 0.9: "
                 f"{'met' if summary['ratio_compiled']['geomean'] >= 0.9 else 'not met'}"
                 if "ratio_compiled" in summary else ""))
    if args.json:
        write_json(args.json, head, device, gpu, args, results, summary)
    return 0


def summarize(results, rounds):
    """Geometric mean over configs of each ratio, and its spread over rounds (each round's geometric mean)."""
    summary = {}
    for key in ("ratio", "ratio_compiled", "ratio_before", "compiled_speedup"):
        rows = [r for r in results if key in r]
        if not rows:
            continue
        per_round = [geomean([r[key + "_rounds"][i] for r in rows]) for i in range(rounds)]
        summary[key] = {"geomean": geomean([r[key] for r in rows]), "configs": len(rows),
                        "round_geomeans": per_round, "spread": [min(per_round), max(per_round)]}
    return summary


def write_json(path, head, device, gpu, args, results, summary):
    with open(path, "w") as f:
        json.dump({"header": head, "device": str(device), "gpu": gpu, "torch": torch.__version__, "bf16": args.bf16,
                   "adam": args.adam, "space": args.space, "vocab": args.vocab, "tokens": args.tokens,
                   "rounds": args.rounds, "steps": args.steps, "rows": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
