"""One measuring protocol for every backend (HAT's).

Batch 1; the encoder runs once per timed run on a source of ``src_len`` tokens; the decoder runs step by step for
``tgt_len`` steps with its caches, ``beam`` hypotheses wide. ``warmup`` untimed runs, then ``repeats`` timed runs;
the fastest and slowest ``trim`` share of the runs are dropped and mean/std are taken over the rest, for the encoder
and the decoder separately. A backend only knows how to build a model and run one encoder call / one decoder step.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Sequence

from hat.space import SubConfig


@dataclass
class Protocol:
    src_len: int = 30
    tgt_len: int = 30
    beam: int = 4
    warmup: int = 5
    repeats: int = 20
    trim: float = 0.1

    def to_dict(self):
        return asdict(self)


@dataclass
class Measurement:
    encoder_ms: List[float]
    decoder_ms: List[float]
    protocol: Protocol
    source: str  # e.g. measured:cpu, measured:onnxruntime, measured:board
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def encoder(self):
        return trimmed_stats(self.encoder_ms, self.protocol.trim)

    @property
    def decoder(self):
        return trimmed_stats(self.decoder_ms, self.protocol.trim)

    def row(self) -> Dict[str, float]:
        """The dataset's latency columns (:data:`hat.latency.dataset.LATENCY_COLUMNS`)."""
        from hat.latency.dataset import LATENCY_COLUMNS

        (em, es), (dm, ds) = self.encoder, self.decoder
        return dict(zip(LATENCY_COLUMNS, (em, dm, es, ds)))

    def summary(self) -> str:
        (em, es), (dm, ds) = self.encoder, self.decoder
        return (f"encoder {em:.3f} ± {es:.3f} ms, decoder ({self.protocol.tgt_len} steps, beam {self.protocol.beam}) "
                f"{dm:.3f} ± {ds:.3f} ms, total {em + dm:.3f} ms [{self.source}]")


def trimmed_stats(samples: Sequence[float], trim: float) -> tuple:
    """Mean and (population) std after dropping the ``trim`` share of lowest and of highest samples (HAT keeps the
    10%-90% range; at least one sample is dropped at the top once there are 5 or more)."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    lo = int(n * trim)
    hi = n - max(1 if n >= 5 else 0, int(n * trim))
    kept = xs[lo:hi] or xs
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((x - mean) ** 2 for x in kept) / len(kept))
    return mean, std


class Backend:
    """Runs one SubTransformer: ``load`` builds it, ``encoder`` runs one encoder call, ``decoder_step`` one step."""

    name = "backend"
    source = "measured:backend"

    def load(self, cfg: SubConfig):  # -> handle
        raise NotImplementedError

    def encoder(self, handle) -> None:
        raise NotImplementedError

    def start_decoding(self, handle) -> None:
        """Reset the caches before a decoding run (not timed separately: part of the decoder's time)."""

    def decoder_step(self, handle, step: int) -> None:
        raise NotImplementedError

    def timer(self) -> Callable[[], float]:
        """A clock in milliseconds that is valid after the work queued before it (GPU backends synchronise)."""
        return lambda: time.perf_counter() * 1000.0

    def memory(self, handle) -> Dict[str, float]:
        """Measured memory figures (MB) where the backend can give them; empty otherwise."""
        return {}

    def unload(self, handle) -> None:
        pass


def measure(backend: Backend, cfg: SubConfig, protocol: Protocol, handle=None) -> Measurement:
    own = handle is None
    handle = backend.load(cfg) if own else handle
    clock = backend.timer()
    enc, dec = [], []
    try:
        for i in range(protocol.warmup + protocol.repeats):
            t0 = clock()
            backend.encoder(handle)
            t1 = clock()
            backend.start_decoding(handle)
            for step in range(protocol.tgt_len):
                backend.decoder_step(handle, step)
            t2 = clock()
            if i >= protocol.warmup:
                enc.append(t1 - t0)
                dec.append(t2 - t1)
        extra = backend.memory(handle)
    finally:
        if own:
            backend.unload(handle)
    return Measurement(enc, dec, protocol, backend.source, extra)
