"""convert2onnx.py: trained SubTransformer -> static-shape ONNX encoder and decoder-step graphs, checked.

    python convert2onnx.py --configs=<SubTransformer YAML> --sub-configs=configs/<task>/convert_onnx/common.yml \
        --model-path CKPT [--enc | --dec] [--name NAME]

``CKPT`` is a train.py checkpoint: a SubTransformer's own (``--sub-configs`` at training), which the YAML must match
if it is given, or a SuperTransformer's, from which the SubTransformer the YAML describes is extracted (its weight
slices, :meth:`SuperTransformer.extract`). Every shape comes from the YAML keys (``batch-size``, ``src-len``,
``tgt-len``, ``beam``); see :mod:`hat.export` for the file names and :mod:`hat.export.graphs` for the graphs.

Each graph is checked before it is moved into place: no op the NPU lacks (:data:`FORBIDDEN_OPS`), no dynamic dim
(after ONNX shape inference), ``onnx.checker`` (full check), and onnxruntime's outputs equal the torch module's
(max abs difference <= :data:`PARITY_ATOL`).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hat.errors import CheckpointError, ConfigError
from hat.export import ExportError, UnsupportedOpError, onnx_path, sidecar_path
from hat.export.runtime import ort_session, prepare_source, self_mask
from hat.io import atomic_output, sha256_file, write_json
from hat.vocab import EOS

FORBIDDEN_OPS = ("CumSum", "Range", "Trilu", "TopK", "Neg")  # absent from the RK3588 NPU
PARITY_ATOL = 1e-4
DEFAULT_OPSET = 17


# ---- checks ---------------------------------------------------------------------------------------------------------
def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # control-flow subgraphs (If/Loop/Scan)
            if attr.g is not None and len(attr.g.node):
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def scan_ops(model, source: str = "graph", forbidden: Sequence[str] = FORBIDDEN_OPS) -> Dict[str, int]:
    """Op histogram of ``model`` (an onnx ModelProto or a path); raises :class:`UnsupportedOpError` naming the first
    forbidden op found."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    counts: Counter = Counter()
    for node in _all_nodes(model.graph):
        counts[node.op_type] += 1
        if node.op_type in forbidden:
            raise UnsupportedOpError(
                f"{source}: op {node.op_type} (node '{node.name or node.output[0]}') is not supported by the NPU"
            )
    return dict(sorted(counts.items()))


def _dims(value_info) -> List[object]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return [None]
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in t.shape.dim]


def check_static(model, source: str = "graph") -> None:
    """Every input, output and inferred intermediate tensor has a fully static shape."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # onnx raises InferenceError / ValidationError / RuntimeError depending on the cause
        raise ExportError(f"{source}: shape inference failed: {str(e).strip().splitlines()[0]}") from None
    g = inferred.graph
    for kind, infos in (("input", g.input), ("output", g.output), ("tensor", g.value_info)):
        for vi in infos:
            dims = _dims(vi)
            if any(not isinstance(d, int) for d in dims):
                raise ExportError(f"{source}: {kind} '{vi.name}' has a dynamic shape {dims}")


def check_graph(path: str, source: str) -> Dict[str, int]:
    """Op scan, static shapes, onnx.checker (full). Returns the op histogram."""
    import onnx

    model = onnx.load(path)
    ops = scan_ops(model, source)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{source}: onnx.checker failed: {str(e).splitlines()[0]}") from None
    check_static(model, source)
    return ops


# ---- model selection --------------------------------------------------------------------------------------------------
def select_model(model_path: Optional[str], wanted, source: str, log=print):
    """(standalone model at the SubTransformer's shape, eval mode; its SubConfig) from a train.py checkpoint."""
    from hat.checkpoint import load_model

    if not model_path:
        raise ConfigError("--model-path CKPT is required (a train.py checkpoint)")
    lm = load_model(model_path)
    if lm.is_subtransformer:
        own = lm.sub_config
        if wanted is not None and wanted != own:
            raise CheckpointError(f"{source} describes SubTransformer {wanted.key()} but {model_path} holds "
                                  f"SubTransformer {own.key()}")
        return lm.model.eval(), own
    if wanted is None:
        wanted = lm.space.largest()
        log(f"| no SubTransformer config given: exporting the largest SubTransformer of {model_path}")
    try:
        sub = lm.model.extract(wanted)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e} (checkpoint {model_path})") from None
    return sub.eval(), wanted


# ---- export -------------------------------------------------------------------------------------------------------------
@dataclass
class ExportSettings:
    batch_size: int = 1
    src_len: int = 32
    tgt_len: int = 32
    beam: int = 4
    opset: int = DEFAULT_OPSET
    simplify: str = "auto"  # auto: onnxslim / onnxsim if installed; no: never
    lenpen: float = 1.0

    @property
    def rows(self) -> int:
        return self.batch_size * self.beam

    def validate(self, model) -> "ExportSettings":
        for key, val, low in (("batch-size", self.batch_size, 1), ("src-len", self.src_len, 2),
                              ("tgt-len", self.tgt_len, 2), ("beam", self.beam, 1), ("opset", self.opset, 14)):
            if val < low:
                raise ConfigError(f"{key} must be >= {low}, got {val}")
        if self.src_len > model.opt.max_source_positions:
            raise ConfigError(f"src-len {self.src_len} exceeds the model's max source positions "
                              f"{model.opt.max_source_positions}")
        if self.tgt_len > model.opt.max_target_positions:
            raise ConfigError(f"tgt-len {self.tgt_len} exceeds the model's max target positions "
                              f"{model.opt.max_target_positions}")
        if self.simplify not in ("auto", "no"):
            raise ConfigError(f"simplify must be auto or no, got {self.simplify!r}")
        return self


@contextlib.contextmanager
def _static_attention_scale():
    """Trace SDPA with its scale as a Python float: the default scale is otherwise exported as Shape/Slice/Sqrt ops
    on the query (dynamic-looking, and Shape is pointless on an NPU). Numerically the same scale."""
    import torch.nn.functional as F

    orig = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if scale is None:
            scale = 1.0 / float(q.shape[-1]) ** 0.5
        return orig(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


def sample_inputs(model, part: str, s: ExportSettings, seed: int = 0):
    """Plausible inputs for tracing and parity: random tokens with some padding, masks/positions as the host makes
    them, random caches (dict name -> numpy array, in graph input order)."""
    from hat.export.graphs import decoder_io, encoder_io

    rng = np.random.default_rng(seed)
    pad = model.opt.padding_idx
    vocab = model.opt.src_vocab
    lengths = [max(2, s.src_len - 2 - (3 * i) % s.src_len) for i in range(s.batch_size)]  # some padding
    sents = [list(rng.integers(4, vocab, n - 1)) + [EOS] for n in lengths]
    tokens, positions, mask = prepare_source(sents, s.src_len, pad, EOS)
    if part == "enc":
        ins, _ = encoder_io(model, s.batch_size, s.src_len)
        arrays = [tokens, positions, mask]
        return {spec["name"]: a for spec, a in zip(ins, arrays)}
    ins, _ = decoder_io(model, s.rows, s.src_len, s.tgt_len, s.batch_size)
    step = min(3, s.tgt_len - 1)
    feeds = {
        "prev_token": rng.integers(4, model.opt.tgt_vocab, (s.rows, 1)).astype(np.int64),
        "position": np.full((1, 1), pad + 1 + step, np.int64),
        "self_mask": self_mask(s.tgt_len, step),
        "src_mask": mask,
    }
    for spec in ins[4:]:
        feeds[spec["name"]] = rng.standard_normal(spec["shape"]).astype(np.float32)
    return feeds


def _simplify(path: str, log) -> Optional[str]:
    """onnxslim or onnxsim if installed (never required). Returns the tool's name or None."""
    import onnx

    for tool in ("onnxslim", "onnxsim"):
        try:
            mod = __import__(tool)
        except ImportError:
            continue
        try:
            if tool == "onnxslim":
                out = mod.slim(onnx.load(path))
            else:
                out, ok = mod.simplify(onnx.load(path))
                if not ok:
                    raise RuntimeError("simplified model failed its check")
            onnx.save(out, path)
            return tool
        except Exception as e:  # optional step: keep the unsimplified graph
            log(f"| {tool} failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); graph left as exported")
            return None
    return None


def _graph_module(model, part: str, s: ExportSettings):
    from hat.export.graphs import DecoderStepGraph, EncoderGraph, decoder_io, encoder_io

    if part == "enc":
        return EncoderGraph(model, s.src_len).eval(), encoder_io(model, s.batch_size, s.src_len)
    return (DecoderStepGraph(model, s.tgt_len, s.batch_size).eval(),
            decoder_io(model, s.rows, s.src_len, s.tgt_len, s.batch_size))


def torch_outputs(module, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    import torch

    with torch.no_grad():
        outs = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()])
    return [o.numpy() for o in outs]


def export_part(model, part: str, path: str, s: ExportSettings, log=print) -> Tuple[Dict[str, int], float, Optional[str]]:
    """Trace one graph to ``path`` (via a temporary file), check it and compare onnxruntime with torch.
    Returns (op histogram, parity max abs diff, simplifier used)."""
    import torch

    module, (ins, outs) = _graph_module(model, part, s)
    feeds = sample_inputs(model, part, s)
    source = os.path.basename(path)
    with atomic_output(path) as tmp:
        args = tuple(torch.from_numpy(a) for a in feeds.values())
        with torch.no_grad(), _static_attention_scale(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module, args, tmp, input_names=[i["name"] for i in ins], output_names=[o["name"] for o in outs],
                    opset_version=s.opset, dynamo=False, do_constant_folding=True,
                )
            except Exception as e:  # an op without an ONNX symbolic at this opset, mostly
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ExportError(f"{source}: torch.onnx.export failed: {msg}") from None
        simplified = _simplify(tmp, log) if s.simplify == "auto" else None
        ops = check_graph(tmp, source)
        got = ort_session(tmp).run(None, feeds)
        want = torch_outputs(module, feeds)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
        if not diff <= PARITY_ATOL:
            raise ExportError(f"{source}: onnxruntime differs from torch by {diff:.3g} > {PARITY_ATOL}")
    return ops, diff, simplified


def sidecar(model, part: str, name: str, path: str, s: ExportSettings, ops, diff, checkpoint, simplified) -> dict:
    import onnx
    import torch

    from hat.export.graphs import graph_meta

    meta = graph_meta(model, part, s)
    meta.update({
        "name": name,
        "onnx": os.path.basename(path),
        "sha256": sha256_file(path),
        "opset": s.opset,
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "ops": ops,
        "simplified_with": simplified,
        "parity": {"max_abs_diff": diff, "atol": PARITY_ATOL, "source": "measured:onnxruntime vs torch"},
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
    })
    return meta


def export_model(model, onnx_dir: str, name: str, s: ExportSettings, parts=("enc", "dec"),
                 checkpoint: Optional[str] = None, log=print) -> Dict[str, dict]:
    """Export ``parts`` of a standalone model; returns part -> sidecar (also written next to each .onnx)."""
    s.validate(model)
    model.eval()
    result = {}
    for part in parts:
        path = onnx_path(onnx_dir, name, part)
        ops, diff, simplified = export_part(model, part, path, s, log)
        meta = sidecar(model, part, name, path, s, ops, diff, checkpoint, simplified)
        write_json(sidecar_path(onnx_dir, name, part), meta)
        shapes = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in meta["inputs"][:4])
        log(f"| wrote {path} ({sum(ops.values())} nodes, opset {s.opset}; inputs {shapes}, ...)")
        log(f"| {part}: max |onnxruntime - torch| = {diff:.2e} [measured:onnxruntime vs torch]")
        result[part] = meta
    return result


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """The graphs are small: one thread avoids OpenMP oversubscription on a shared machine (and is what the
    per-core figures measure)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
