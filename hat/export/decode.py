"""Host side of the exported graphs: source preparation, and greedy / beam search driven step by step.

This is the model of the board runner: everything here is numpy (the host's inputs come from
:mod:`hat.export.runtime`; torch is imported only by the torch runners), and the graphs are called only through
``Runner.encode`` / ``Runner.step``. Three runners share the same search:

* :class:`OrtRunner`   the exported ``<name>_enc.onnx`` / ``<name>_dec.onnx`` in onnxruntime (fixed shapes, caches
                       as fixed buffers passed in and out);
* :class:`GraphRunner` the same graph modules in torch (what was exported, before export);
* :class:`TorchRunner` the plain model's own incremental decoding (``model.decoder(..., cache=dict)``, growing
                       caches), i.e. the reference the exported graphs must reproduce.

The search is fairseq 0.12's ``SequenceGenerator`` + ``BeamSearch`` (pad never chosen, EOS forbidden before
``min_len``, forced at ``max_len``, finished hypotheses scored ``sum log p / len ** lenpen``, a sentence is done when
it has ``beam`` finished hypotheses), except that finished sentences stay in the batch: shapes are static.
Greedy decoding is the same search with ``beam=1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hat.export import PARTS, ExportError, onnx_path, read_sidecar
from hat.export.runtime import ort_session, prepare_source, self_mask
from hat.vocab import EOS, PAD, UNK


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ---- runners ------------------------------------------------------------------------------------------------------------
class FixedShapeRunner:
    """Common host logic for the fixed-shape graphs: caches are numpy buffers, reordered between steps."""

    def __init__(self, enc_meta: dict, dec_meta: dict):
        for key in ("batch_size", "beam", "src_len", "tgt_len"):
            if enc_meta["shapes"][key] != dec_meta["shapes"][key]:
                raise ExportError(f"encoder and decoder were exported with different {key}: "
                                  f"{enc_meta['shapes'][key]} vs {dec_meta['shapes'][key]}")
        self.enc_meta, self.dec_meta = enc_meta, dec_meta
        sh = dec_meta["shapes"]
        self.batch_size, self.beam, self.src_len, self.tgt_len = sh["batch_size"], sh["beam"], sh["src_len"], sh["tgt_len"]
        self.rows = sh["rows"]
        self.pad = dec_meta["tokens"]["pad"]
        self.offset = dec_meta["position_offset"]
        self.self_specs = [i for i in dec_meta["inputs"] if i["name"].startswith(("self_k_", "self_v_"))]

    # the graphs, implemented by subclasses
    def run_encoder(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def run_decoder(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def start(self, tokens, positions, mask, beam: int):
        if beam != self.beam or tokens.shape != (self.batch_size, self.src_len):
            raise ExportError(f"graphs were exported for batch {self.batch_size} x beam {self.beam}, src-len "
                              f"{self.src_len}; asked for batch {tokens.shape[0]} x beam {beam}, src-len "
                              f"{tokens.shape[1]}")
        enc = self.run_encoder({"src_tokens": tokens, "src_positions": positions, "src_mask": mask})
        state = {k: np.repeat(v, beam, axis=0) for k, v in enc.items()}  # cross_k_i / cross_v_i per hypothesis
        state["src_mask"] = mask  # per sentence
        for spec in self.self_specs:
            state[spec["name"]] = np.zeros(spec["shape"], np.float32)
        return state

    def step(self, state, tokens: np.ndarray, step: int) -> np.ndarray:
        feeds = {
            "prev_token": tokens[:, step : step + 1].astype(np.int64),
            "position": np.full((1, 1), self.offset + step, np.int64),
            "self_mask": self_mask(self.tgt_len, step),
        }
        feeds.update(state)
        out = self.run_decoder(feeds)
        for spec in self.self_specs:
            state[spec["name"]] = out["new_" + spec["name"]]
        return out["logits"]

    def reorder(self, state, order: np.ndarray):
        for spec in self.self_specs:
            state[spec["name"]] = state[spec["name"]][order]


class OrtRunner(FixedShapeRunner):
    """The exported graphs ``<onnx_dir>/<name>_{enc,dec}.onnx`` in onnxruntime."""

    def __init__(self, onnx_dir: str, name: str, threads: int = 1):
        metas = {p: read_sidecar(onnx_dir, name, p) for p in PARTS}
        super().__init__(metas["enc"], metas["dec"])
        self.sessions = {p: ort_session(onnx_path(onnx_dir, name, p), threads) for p in PARTS}

    def _run(self, part, feeds):
        sess = self.sessions[part]
        names = [o.name for o in sess.get_outputs()]
        wanted = {i.name for i in sess.get_inputs()}
        return dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted})))

    def run_encoder(self, feeds):
        return self._run("enc", feeds)

    def run_decoder(self, feeds):
        return self._run("dec", feeds)


class GraphRunner(FixedShapeRunner):
    """The graph modules of :mod:`hat.export.graphs` in torch, at the shapes of ``settings``."""

    def __init__(self, model, settings):
        from hat.export.graphs import DecoderStepGraph, EncoderGraph, sidecar_io_only

        super().__init__(*sidecar_io_only(model, settings))
        self.enc = EncoderGraph(model, settings.src_len).eval()
        self.dec = DecoderStepGraph(model, settings.tgt_len, settings.batch_size).eval()

    @staticmethod
    def _run(module, specs, feeds):
        import torch

        with torch.no_grad():
            outs = module(*[torch.from_numpy(np.ascontiguousarray(feeds[s["name"]])) for s in specs["inputs"]])
        return {s["name"]: o.numpy() for s, o in zip(specs["outputs"], outs)}

    def run_encoder(self, feeds):
        return self._run(self.enc, self.enc_meta, feeds)

    def run_decoder(self, feeds):
        return self._run(self.dec, self.dec_meta, feeds)


class TorchRunner:
    """The plain model's incremental decoding (dict caches that grow by one position per step): the reference."""

    def __init__(self, model):
        self.model = model.eval()

    def start(self, tokens, positions, mask, beam: int):
        import torch

        with torch.no_grad():
            enc = self.model.encoder(torch.from_numpy(tokens))
        order = torch.arange(tokens.shape[0]).repeat_interleave(beam)
        enc = {"states": [s.index_select(0, order) for s in enc["states"]],
               "padding_mask": enc["padding_mask"].index_select(0, order)}
        return {"enc": enc, "cache": {}}

    def step(self, state, tokens: np.ndarray, step: int) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = self.model.decoder(torch.from_numpy(tokens[:, : step + 1]), state["enc"], cache=state["cache"])
        return logits[:, -1].float().numpy()

    def reorder(self, state, order: np.ndarray):
        import torch

        idx = torch.from_numpy(order)

        def re(x):
            return x.index_select(0, idx) if isinstance(x, torch.Tensor) else {k: re(v) for k, v in x.items()}

        state["cache"] = re(state["cache"])


# ---- search -------------------------------------------------------------------------------------------------------------
@dataclass
class Hypothesis:
    tokens: List[int]  # generated tokens, ending with EOS (without the initial EOS fed to the decoder)
    score: float  # sum of log-probs / len ** lenpen
    positional_scores: List[float] = field(default_factory=list)


def beam_search(runner, tokens: np.ndarray, positions: np.ndarray, mask: np.ndarray, beam: int, tgt_len: int,
                lenpen: float = 1.0, max_len_a: float = 0.0, max_len_b: Optional[int] = None, min_len: int = 1,
                pad: int = PAD, eos: int = EOS, unk: int = UNK, unk_penalty: float = 0.0) -> List[List[Hypothesis]]:
    """fairseq's beam search over ``runner`` for the sentences of one (static) batch; per sentence, its finished
    hypotheses best first. At most ``tgt_len`` tokens (the decoder cache size) are generated, EOS included."""
    bsz = tokens.shape[0]
    src_lengths = (tokens != pad).sum(axis=1)
    max_len_b = tgt_len - 1 if max_len_b is None else max_len_b
    max_len = min(int(max_len_a * int(src_lengths.max()) + max_len_b), tgt_len - 1)
    if max_len < 1:
        raise ExportError(f"max length {max_len} too small (tgt-len {tgt_len})")
    rows, cand_size = bsz * beam, 2 * beam
    state = runner.start(tokens, positions, mask, beam)
    out_tokens = np.full((rows, max_len + 2), pad, np.int64)
    out_tokens[:, 0] = eos
    scores = np.zeros((rows, max_len + 1), np.float32)
    finalized: List[List[Hypothesis]] = [[] for _ in range(bsz)]
    finished = np.zeros(bsz, bool)
    cands_to_ignore = np.zeros((bsz, beam), bool)
    bbsz_offsets = (np.arange(bsz) * beam)[:, None]
    reorder_state = None
    for step in range(max_len + 1):
        if reorder_state is not None:
            runner.reorder(state, reorder_state)
        lprobs = log_softmax(runner.step(state, out_tokens, step))
        lprobs[np.isnan(lprobs)] = -np.inf
        lprobs[:, pad] = -np.inf
        lprobs[:, unk] -= unk_penalty
        if step >= max_len:
            lprobs[:, :eos] = -np.inf
            lprobs[:, eos + 1 :] = -np.inf
        elif step < min_len:
            lprobs[:, eos] = -np.inf
        vocab = lprobs.shape[1]
        lp = lprobs.reshape(bsz, beam, vocab)
        if step == 0:
            lp = lp[:, :1, :]
        else:
            lp = lp + scores.reshape(bsz, beam, -1)[:, :, step - 1][:, :, None]
        flat = lp.reshape(bsz, -1)
        k = min(cand_size, flat.shape[1] - 1)
        top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        cand_scores = np.take_along_axis(flat, top, axis=1)
        cand_beams, cand_indices = top // vocab, top % vocab
        cand_bbsz_idx = cand_beams + bbsz_offsets
        eos_mask = (cand_indices == eos) & (cand_scores != -np.inf)
        head = eos_mask[:, :beam]
        head[cands_to_ignore] = False
        head[finished] = False  # fairseq drops finished sentences from the batch; here they only ride along

        if head.any():
            sel = np.nonzero(head)
            bbsz_idx = cand_bbsz_idx[:, :beam][sel]
            eos_scores = cand_scores[:, :beam][sel].astype(np.float32)
            toks = out_tokens[bbsz_idx, 1 : step + 2].copy()
            toks[:, step] = eos
            pos_scores = scores[bbsz_idx, : step + 1].copy()
            pos_scores[:, step] = eos_scores
            pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
            eos_scores = eos_scores / np.float32((step + 1) ** lenpen)
            seen = []
            for i, idx in enumerate(bbsz_idx):
                sent = int(idx) // beam
                if len(finalized[sent]) < beam:
                    finalized[sent].append(Hypothesis(toks[i].tolist(), float(eos_scores[i]), pos_scores[i].tolist()))
                if sent not in seen:
                    seen.append(sent)
            for sent in seen:
                if len(finalized[sent]) == beam or step == max_len:
                    finished[sent] = True
        if finished.all():
            break
        assert step < max_len
        eos_mask[:, :beam] = ~((~cands_to_ignore) & (~eos_mask[:, :beam]))
        active_mask = eos_mask.astype(np.int64) * cand_size + np.arange(eos_mask.shape[1])[None, :]
        active_hypos = np.argsort(active_mask, axis=1, kind="stable")[:, :beam]
        cands_to_ignore = np.take_along_axis(active_mask, active_hypos, axis=1) >= cand_size
        active_bbsz_idx = np.take_along_axis(cand_bbsz_idx, active_hypos, axis=1).reshape(-1)
        out_tokens[:, : step + 1] = out_tokens[active_bbsz_idx, : step + 1]
        out_tokens.reshape(bsz, beam, -1)[:, :, step + 1] = np.take_along_axis(cand_indices, active_hypos, axis=1)
        if step > 0:
            scores[:, :step] = scores[active_bbsz_idx, :step]
        scores.reshape(bsz, beam, -1)[:, :, step] = np.take_along_axis(cand_scores, active_hypos, axis=1)
        reorder_state = active_bbsz_idx
    return [sorted(f, key=lambda h: -h.score) for f in finalized]


def translate(runner, sentences: Sequence[Sequence[int]], beam: int, src_len: int, tgt_len: int,
              batch_size: Optional[int] = None, **search) -> List[Hypothesis]:
    """Best hypothesis per sentence; sentences go in static batches of ``batch_size`` (default: the runner's, else 1;
    the last batch is filled up with copies of its first sentence)."""
    batch_size = batch_size or getattr(runner, "batch_size", 1)
    best: List[Hypothesis] = []
    for start in range(0, len(sentences), batch_size):
        chunk = list(sentences[start : start + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        tokens, positions, mask = prepare_source(chunk, src_len, search.get("pad", PAD), search.get("eos", EOS))
        hyps = beam_search(runner, tokens, positions, mask, beam, tgt_len, **search)
        best += [h[0] for h in hyps[:real]]
    return best
