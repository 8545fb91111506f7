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
import glob
import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hat.errors import CheckpointError, ConfigError
from hat.export import ExportError, UnsupportedOpError, check_name, onnx_path, read_sidecar, sidecar_path
from hat.export.runtime import ort_session, prepare_source, self_mask
from hat.io import atomic_output, sha256_file
from hat.vocab import EOS

FORBIDDEN_OPS = ("CumSum", "Range", "Trilu", "TopK", "Neg")  # absent from the RK3588 NPU
PARITY_ATOL = 1e-4
DEFAULT_OPSET = 17
MIN_OPSET = 14  # scaled_dot_product_attention and Trilu-free masks need 14


def max_opset() -> int:
    """The highest opset both torch's TorchScript exporter and the installed onnx know."""
    import onnx
    import torch.onnx._constants as tc

    torch_max = getattr(tc, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(tc, "ONNX_MAX_OPSET", DEFAULT_OPSET))
    return min(int(torch_max), int(onnx.defs.onnx_opset_version()))


def check_opset(opset: int) -> int:
    """``opset`` within [MIN_OPSET, max_opset()], else one :class:`ConfigError` line (before anything is traced:
    torch prints the whole TorchScript graph when it meets an opset it does not know)."""
    hi = max_opset()
    if not MIN_OPSET <= int(opset) <= hi:
        raise ConfigError(f"opset must be between {MIN_OPSET} and {hi} (torch's ONNX exporter and onnx here), got "
                          f"{opset}")
    return int(opset)


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
    """Every input, output and inferred intermediate tensor has a fully static shape. The shape inference is strict
    and checks types (what ``onnx.checker``'s full check runs), so :func:`check_graph` needs no second one."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # onnx raises InferenceError / ValidationError / RuntimeError depending on the cause
        raise ExportError(f"{source}: shape inference failed: {str(e).strip().splitlines()[0]}") from None
    g = inferred.graph
    for kind, infos in (("input", g.input), ("output", g.output), ("tensor", g.value_info)):
        for vi in infos:
            dims = _dims(vi)
            if any(not isinstance(d, int) for d in dims):
                raise ExportError(f"{source}: {kind} '{vi.name}' has a dynamic shape {dims}")


def _copy_fields(src, dst, skip: str) -> None:
    """Every field of protobuf message ``src`` but ``skip`` into the empty message ``dst`` of the same type."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def shapes_only(model):
    """``model`` with its float weights as graph inputs of the same type and shape: all that shape inference reads of
    them, in kilobytes instead of the weights' megabytes (onnx passes a model to its C++ side serialized). Built
    field by field without the weights (a copy of the whole model would copy them once more)."""
    import onnx
    from onnx import TensorProto, helper

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    g, lg = model.graph, light.graph
    _copy_fields(g, lg, skip="initializer")
    weights = [t for t in g.initializer if t.data_type in floats and len(t.dims) > 0]
    lg.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    lg.initializer.extend(t for t in g.initializer if not (t.data_type in floats and len(t.dims) > 0))
    return light


def check_graph(path: str, source: str, model=None, data: Optional[bytes] = None) -> Dict[str, int]:
    """Op scan, onnx.checker (full: its checks and strict, type-checking shape inference), static shapes.
    ``model``: the graph at ``path``, already loaded; ``data``: the file's bytes, already in memory. Returns the op
    histogram."""
    import onnx

    if model is None:
        data = _read(path) if data is None else data
        model = onnx.load_model_from_string(data)
    ops = scan_ops(model, source)
    try:
        # the checks of full_check=True but its shape inference, which check_static runs (strict, types checked)
        # on the graph without its weights: the same inference, once
        onnx.checker.check_model(data if data is not None else path, full_check=False)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{source}: onnx.checker failed: {str(e).splitlines()[0]}") from None
    check_static(shapes_only(model), source)
    return ops


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


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
                              ("tgt-len", self.tgt_len, 2), ("beam", self.beam, 1)):
            if val < low:
                raise ConfigError(f"{key} must be >= {low}, got {val}")
        check_opset(self.opset)
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


def tidy(model):
    """``model`` (an onnx ModelProto, changed in place and returned) without the nodes torch's exporter leaves that
    compute nothing: ``Constant`` nodes become initializers, and ``Identity`` nodes (torch's de-duplicated weights)
    are bypassed, their consumers reading the identity's input. Graph inputs and outputs are kept as they are.
    rknn-toolkit2 folds these too, but pays for each (its build time grows with the graph it is given)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    subgraphs = any(a.type in (a.GRAPH, a.GRAPHS) for n in g.node for a in n.attribute)
    rename: Dict[str, str] = {}
    keep = []
    for node in g.node:
        if node.output and node.output[0] in outputs:
            keep.append(node)
        elif node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            tensor.name = node.output[0]
            g.initializer.append(tensor)
        elif node.op_type == "Identity" and not subgraphs:
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    for node in keep:
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
    del g.node[:]
    g.node.extend(keep)
    return model


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


def _export_to(model, part: str, tmp: str, source: str, s: ExportSettings, log=print):
    """Trace one graph to the file ``tmp``, check it and compare onnxruntime with torch.
    Returns (op histogram, parity max abs diff, simplifier used, sha256 of the file).

    The graph is written once: traced into memory, tidied, serialized, and those bytes are what is written, hashed,
    checked and run in onnxruntime (the same bytes as the file, not read back from it)."""
    import io

    import onnx
    import torch

    module, (ins, outs) = _graph_module(model, part, s)
    feeds = sample_inputs(model, part, s)
    args = tuple(torch.from_numpy(a) for a in feeds.values())
    traced = io.BytesIO()
    with torch.no_grad(), _static_attention_scale(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, args, traced, input_names=[i["name"] for i in ins], output_names=[o["name"] for o in outs],
                opset_version=s.opset, dynamo=False, do_constant_folding=True,
            )
        except Exception as e:  # an op without an ONNX symbolic at this opset, mostly
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"{source}: torch.onnx.export failed: {msg}") from None
    graph = tidy(onnx.load_model_from_string(traced.getvalue()))
    del traced
    data = graph.SerializeToString()  # what onnx.save(graph, tmp) writes
    with open(tmp, "wb") as f:
        f.write(data)
    simplified = _simplify(tmp, log) if s.simplify == "auto" else None
    if simplified:
        data, graph = _read(tmp), None
    ops = check_graph(tmp, source, graph, data)
    del graph
    got = ort_session(data).run(None, feeds)
    want = torch_outputs(module, feeds)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
    if not diff <= PARITY_ATOL:
        raise ExportError(f"{source}: onnxruntime differs from torch by {diff:.3g} > {PARITY_ATOL}")
    return ops, diff, simplified, hashlib.sha256(data).hexdigest()


def export_part(model, part: str, path: str, s: ExportSettings, log=print) -> Tuple[Dict[str, int], float, Optional[str]]:
    """Trace one graph to ``path`` (via a temporary file), check it and compare onnxruntime with torch.
    Returns (op histogram, parity max abs diff, simplifier used)."""
    with atomic_output(path) as tmp:
        return _export_to(model, part, tmp, os.path.basename(path), s, log)[:3]


def weights_digest(model) -> str:
    """A digest of every parameter and buffer of ``model`` (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.blake2b(digest_size=20)
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the tensor's bytes, read in place (no copy)
    return h.hexdigest()


def export_id(model, s: ExportSettings) -> str:
    """What makes an encoder and a decoder graph belong together: the model's weights, its SubConfig and token ids,
    and the static shapes. Stamped into both sidecars; a re-export of one graph of the same model keeps the id."""
    from hat.export.graphs import graph_meta

    meta = graph_meta(model, "dec", s)
    what = {"weights": weights_digest(model), "config": meta["config_key"], "tokens": meta["tokens"],
            "shapes": {k: meta["shapes"][k] for k in ("batch_size", "beam", "src_len", "tgt_len")},
            "position_offset": meta["position_offset"]}
    return hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=16).hexdigest()


def sidecar(model, part: str, name: str, path: str, s: ExportSettings, ops, diff, checkpoint, simplified,
            export_id: Optional[str] = None, onnx_file: Optional[str] = None, sha256: Optional[str] = None) -> dict:
    """The sidecar of graph ``path``; ``onnx_file`` is where the graph is now (a temporary name before it is moved
    to ``path``), default ``path``; ``sha256``: that file's, when already known."""
    import onnx
    import torch

    from hat.export.graphs import graph_meta

    meta = graph_meta(model, part, s)
    meta.update({
        "name": name,
        "export_id": export_id,
        "onnx": os.path.basename(path),
        "sha256": sha256 or sha256_file(onnx_file or path),
        "opset": s.opset,
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "ops": ops,
        "simplified_with": simplified,
        "parity": {"max_abs_diff": diff, "atol": PARITY_ATOL, "source": "measured:onnxruntime vs torch"},
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
    })
    return meta


@contextlib.contextmanager
def export_lock(onnx_dir: str, name: str):
    """One export of ``name`` in ``onnx_dir`` at a time (``flock`` on ``.<name>.export.lock``, released by the kernel
    when the process dies, even by kill -9); a second one is refused in one line. While the lock is held, temporary
    files left by an export of ``name`` that was killed are removed."""
    import fcntl

    os.makedirs(onnx_dir, exist_ok=True)
    path = os.path.join(onnx_dir, f".{name}.export.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ExportError(f"another export of {name!r} is running in {onnx_dir} (lock {path}); wait for it or "
                              f"choose another --name") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # the previous holder removed it between our open and flock
            same = False
        if same:
            break
        os.close(fd)
    try:
        remove_partials(onnx_dir, name)
        yield
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
        os.close(fd)


def remove_partials(onnx_dir: str, name: str) -> List[str]:
    """Remove the temporary files (``.<name>_<part>.onnx.*.partial`` and of the sidecars) an interrupted export of
    ``name`` left behind; only call this holding :func:`export_lock`. Returns what was removed."""
    gone = []
    for part in ("enc", "dec"):
        for final in (onnx_path(onnx_dir, name, part), sidecar_path(onnx_dir, name, part)):
            pattern = os.path.join(onnx_dir, f".{glob.escape(os.path.basename(final))}.*.partial")
            for p in glob.glob(pattern):
                try:
                    os.remove(p)
                    gone.append(p)
                except OSError:
                    pass
    return gone


def export_model(model, onnx_dir: str, name: str, s: ExportSettings, parts=("enc", "dec"),
                 checkpoint: Optional[str] = None, log=print) -> Dict[str, dict]:
    """Export ``parts`` of a standalone model; returns part -> sidecar (also written next to each .onnx).

    Every file is first written under a temporary name; they are moved into place together once every graph has
    passed its checks, so an interrupted or failed export leaves the files of ``name`` as they were (a kill between
    the final renames at worst leaves graphs whose ``export_id`` differs, which :func:`hat.export.read_pair`
    refuses)."""
    check_name(name)
    s.validate(model)
    model.eval()
    eid = export_id(model, s)
    result, lines = {}, []
    with export_lock(onnx_dir, name), contextlib.ExitStack() as stack:
        for part in parts:
            path = onnx_path(onnx_dir, name, part)
            tmp = stack.enter_context(atomic_output(path))
            ops, diff, simplified, sha = _export_to(model, part, tmp, os.path.basename(path), s, log)
            meta = sidecar(model, part, name, path, s, ops, diff, checkpoint, simplified, export_id=eid,
                           onnx_file=tmp, sha256=sha)
            side = stack.enter_context(atomic_output(sidecar_path(onnx_dir, name, part)))
            with open(side, "w", encoding="utf-8") as f:
                f.write(json.dumps(meta, indent=2) + "\n")
            shapes = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in meta["inputs"][:4])
            lines.append(f"| wrote {path} ({sum(ops.values())} nodes, opset {s.opset}; inputs {shapes}, ...)")
            lines.append(f"| {part}: max |onnxruntime - torch| = {diff:.2e} [measured:onnxruntime vs torch]")
            result[part] = meta
    for line in lines:  # once the files are in place
        log(line)
    for other in ("enc", "dec"):
        if other not in parts and os.path.isfile(sidecar_path(onnx_dir, name, other)):
            try:
                old = read_sidecar(onnx_dir, name, other).get("export_id")
            except ExportError:
                old = None
            if old != eid:
                log(f"| note: {name}_{other} in {onnx_dir} is from another model or shapes (export id differs): "
                    f"export it too before convert2rknn.py")
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
