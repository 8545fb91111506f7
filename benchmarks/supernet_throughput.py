#!/usr/bin/env python
"""Training throughput of the SuperTransformer at a sampled SubTransformer vs a dense plain-PyTorch Transformer.

Both models get the same architecture (the sampled SubTransformer's per-layer shapes), the same batch, the same
device and precision; steps (forward + backward + Adam) alternate between the two so that drift on a shared machine
hits both alike. Prints tokens/s of each and the ratio (goal: supernet / dense >= 0.9).

    python benchmarks/supernet_throughput.py [--space configs/demo.de-en/supertransformer/space0.yml]
        [--device cpu|cuda] [--bf16] [--tokens 4096] [--steps 20] [--seed 1]
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

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hat.config import load_yaml  # noqa: E402
from hat.models import ModelOptions, SuperTransformer  # noqa: E402
from hat.space import SearchSpace, ende_layers  # noqa: E402


# ---- a dense reference written with plain PyTorch only (no elastic code) ------------------------------------------
class DenseAttention(nn.Module):
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


def step(model, opt, batch, device, bf16):
    src, prev, target = batch
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(src, prev)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), target.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="configs/demo.de-en/supertransformer/space0.yml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--tokens", type=int, default=4096, help="target tokens per batch")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--configs", type=int, default=3, help="sampled SubTransformers to measure")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    space = SearchSpace.from_dict(load_yaml(args.space), source=args.space)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    opt_kw = dict(lr=1e-4, betas=(0.9, 0.98))
    sup = SuperTransformer(space.super_config(), ModelOptions(args.vocab, args.vocab, share_all_embeddings=True)).to(device)
    sup_opt = torch.optim.Adam(sup.parameters(), **opt_kw)
    results = []
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"threads {torch.get_num_threads()}, bf16 {args.bf16}, torch {torch.__version__}, space {args.space}")
    for c in range(args.configs):
        cfg = space.largest() if c == 0 else space.sample(rng)
        sup.set_sample_config(cfg).train()
        dense = DenseTransformer(cfg, args.vocab).to(device).train()
        dense_opt = torch.optim.Adam(dense.parameters(), **opt_kw)
        batch = make_batch(args.tokens, args.vocab, device, gen)
        ntok = batch[1].numel()
        for _ in range(args.warmup):
            step(sup, sup_opt, batch, device, args.bf16)
            step(dense, dense_opt, batch, device, args.bf16)
        ts, td = 0.0, 0.0
        for _ in range(args.steps):  # interleaved
            ts += timed(lambda: step(sup, sup_opt, batch, device, args.bf16), device)
            td += timed(lambda: step(dense, dense_opt, batch, device, args.bf16), device)
        row = {
            "config": cfg.key(),
            "params_dense": sum(p.numel() for p in dense.parameters()),
            "tokens_per_batch": ntok,
            "supernet_tok_s": ntok * args.steps / ts,
            "dense_tok_s": ntok * args.steps / td,
        }
        row["ratio"] = row["supernet_tok_s"] / row["dense_tok_s"]
        results.append(row)
        print(f"config {row['config']} ({'largest' if c == 0 else 'sampled'}, {row['params_dense'] / 1e6:.2f}M params, "
              f"{ntok} tgt tokens/batch): supernet {row['supernet_tok_s']:,.0f} tok/s, dense {row['dense_tok_s']:,.0f} "
              f"tok/s, ratio {row['ratio']:.3f}  [measured:{device.type}]")
    geo = math.exp(sum(math.log(r["ratio"]) for r in results) / len(results))
    print(f"supernet/dense throughput ratio (geometric mean over {len(results)} configs): {geo:.3f} (goal >= 0.9) "
          f"[measured:{device.type}{'+bf16' if args.bf16 else ''}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "bf16": args.bf16, "rows": results, "ratio_geomean": geo}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
