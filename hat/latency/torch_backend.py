"""torch eager backends: ``cpu`` (wall clock) and ``gpu`` (CUDA, synchronised before each clock read)."""
from __future__ import annotations

import time
from typing import Optional

import torch

from hat.errors import HatError
from hat.latency.protocol import Backend, Protocol
from hat.models.transformer import ModelOptions, SuperTransformer
from hat.space import SubConfig
from hat.vocab import EOS

TOKEN = 7  # HAT's dummy sentence: [eos] + [7] * (len - 1)


class TorchBackend(Backend):
    def __init__(self, opt: ModelOptions, protocol: Protocol, device: str = "cpu", threads: Optional[int] = None,
                 model: Optional[SuperTransformer] = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HatError("gpu backend: no CUDA device is available")
        self.opt, self.protocol, self.device = opt, protocol, torch.device(device)
        self.name = "gpu" if self.device.type == "cuda" else "cpu"
        self.source = f"measured:{self.name}"
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.supernet = model  # measure inside a given model (e.g. a trained checkpoint) instead of a fresh one
        if threads:
            torch.set_num_threads(int(threads))

    def load(self, cfg: SubConfig):
        torch.manual_seed(0)
        if self.supernet is not None:
            model = self.supernet.set_sample_config(cfg)
        else:
            model = SuperTransformer(cfg, self.opt)  # weights do not change the latency
        model = model.to(self.device).eval()
        p = self.protocol
        src = torch.tensor([[EOS] + [TOKEN] * (p.src_len - 1)], device=self.device)
        prev = torch.tensor([[TOKEN] * (p.tgt_len - 1) + [EOS]] * p.beam, device=self.device)
        return {"model": model, "src": src, "prev": prev, "enc": None, "cache": None}

    @torch.no_grad()
    def encoder(self, h):
        enc = h["model"].encoder(h["src"])
        order = torch.zeros(self.protocol.beam, dtype=torch.long, device=self.device)
        h["enc"] = {"states": [s.index_select(0, order) for s in enc["states"]],
                    "padding_mask": enc["padding_mask"].index_select(0, order)}

    def start_decoding(self, h):
        h["cache"] = {}

    @torch.no_grad()
    def decoder_step(self, h, step):
        h["model"].decoder(h["prev"][:, : step + 1], h["enc"], cache=h["cache"])

    def timer(self):
        if self.device.type == "cuda":
            def clock():
                torch.cuda.synchronize(self.device)
                return time.perf_counter() * 1000.0
            return clock
        return super().timer()

    def memory(self, h):
        if self.device.type == "cuda":
            return {"measured_peak_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        return {}

    def unload(self, h):
        h.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
