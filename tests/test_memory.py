import random

import pytest
import torch

from conftest import ROOT
from hat import memory
from hat.config import load_yaml
from hat.errors import ConfigError
from hat.models.transformer import ModelOptions, SuperTransformer, count_parameters
from hat.space import SearchSpace

DEMO = f"{ROOT}/configs/demo.de-en/supertransformer/space0.yml"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops: one thread (on shared CPUs more threads are several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_dict(load_yaml(DEMO), source=DEMO)


def _configs(space, n, seed=0):
    rng = random.Random(seed)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n)]


OPTIONS = [
    dict(share_all_embeddings=True),
    dict(share_all_embeddings=False),
    dict(share_all_embeddings=False, share_decoder_input_output_embed=True),
    dict(share_all_embeddings=True, encoder_normalize_before=True, decoder_normalize_before=True),
]


@pytest.mark.parametrize("kw", OPTIONS, ids=["shared", "unshared", "shared-dec-io", "normalize-before"])
def test_weight_bytes_equal_parameters_of_the_built_model(space, kw):
    vocab_src, vocab_tgt = (1200, 1200) if kw.get("share_all_embeddings") else (1100, 900)
    opt = ModelOptions(vocab_src, vocab_tgt, **kw)
    for cfg in _configs(space, 6):
        with torch.device("meta"):
            model = SuperTransformer(cfg, opt)
        n = count_parameters(model)
        assert memory.parameter_count(cfg, opt) == n, cfg
        for precision, b in (("fp32", 4), ("fp16", 2), ("int8", 1)):
            assert memory.weight_bytes(cfg, opt, precision) == n * b


def test_weight_bytes_equal_an_extracted_subtransformer(space):
    """The model extract() returns (real weights, not the meta device) has exactly the counted parameters."""
    for kw in OPTIONS[:2]:
        opt = ModelOptions(300, 300, **kw)
        sup = SuperTransformer(space.super_config(), opt)
        for cfg in _configs(space, 2, seed=3):
            sub = sup.extract(cfg)
            assert memory.weight_bytes(cfg, opt, "fp16") == count_parameters(sub) * 2


def test_shared_embedding_is_counted_once(space):
    cfg = space.largest().replace(decoder_embed_dim=128)  # encoder 192, decoder 128
    v = 1000
    shared = memory.parameter_breakdown(cfg, ModelOptions(v, v, share_all_embeddings=True))
    unshared = memory.parameter_breakdown(cfg, ModelOptions(v, v, share_all_embeddings=False))
    assert shared["embeddings"] == v * 192 and shared["output_projection"] == 0
    assert unshared["embeddings"] == v * 192 + v * 128 and unshared["output_projection"] == 128 * v
    assert shared["encoder"] == unshared["encoder"] and shared["decoder"] == unshared["decoder"]


def test_kv_cache_estimate_equals_the_decoder_caches(space):
    """After tgt_len incremental steps at batch*beam hypotheses, the decoder's caches hold exactly the estimate."""
    opt = ModelOptions(64, 64, share_all_embeddings=True, dropout=0.0)
    shapes = memory.Shapes(batch=2, src_len=7, tgt_len=5, beam=3)
    rng = random.Random(5)
    cfgs = [space.largest(), space.smallest(), space.sample(rng)]
    cfgs.append(space.largest().replace(decoder_arbitrary_ende_attn=(1, -1, 1)))
    for cfg in cfgs:
        model = SuperTransformer(cfg, opt).eval()
        n = shapes.batch * shapes.beam
        src = torch.randint(4, 64, (n, shapes.src_len))
        cache = {}
        with torch.no_grad():
            enc = model.encoder(src)
            prev = torch.full((n, 1), 2, dtype=torch.long)
            for _ in range(shapes.tgt_len):
                logits = model.decoder(prev, enc, cache=cache)
                prev = torch.cat([prev, logits[:, -1:].argmax(-1)], dim=1)
        held = sum(t.numel() for layer in cache.values() for part in layer.values() for t in part.values())
        assert memory.kv_cache_elements(cfg, shapes) == held, cfg


def test_memory_mb_grows_with_shapes_and_precision(space):
    cfg, opt = space.largest(), ModelOptions(8000, 8000, share_all_embeddings=True)
    base = dict(batch=1, src_len=30, tgt_len=30, beam=4)
    m = {p: memory.memory_mb(cfg, opt, p, base, model="fairseq") for p in ("fp32", "fp16", "int8")}
    assert m["fp32"] > m["fp16"] > m["int8"] > 0
    for key in ("batch", "src_len", "tgt_len", "beam"):
        assert memory.memory_mb(cfg, opt, "fp16", dict(base, **{key: base[key] * 2}), model="fairseq") > m["fp16"], key
        assert memory.memory_mb(cfg, opt, "fp16", dict(base, **{key: base[key] * 2})) > memory.memory_mb(
            cfg, opt, "fp16", base), key
    rep = memory.memory_report(cfg, opt, "fp16", base)
    assert rep.weights_mb == memory.weight_bytes(cfg, opt, "fp16") / 2**20
    assert rep.total_mb == pytest.approx(rep.weights_mb + rep.activation_mb)
    assert rep.activation_mb == max(rep.encoder_activation_mb, rep.decoder_activation_mb)
    assert rep.kv_cache_mb < rep.decoder_activation_mb
    assert memory.memory_mb(space.smallest(), opt, "fp16", base, model="fairseq") < m["fp16"]
    assert "weights" in rep.summary() and rep.to_dict()["shapes"] == base


def test_shapes_from_protocol_and_errors(space):
    class Protocol:  # what hat.latency passes: attributes, no batch
        src_len, tgt_len, beam = 23, 20, 5

    assert memory.Shapes.of(Protocol()) == memory.Shapes(batch=1, src_len=23, tgt_len=20, beam=5)
    cols = memory.dataset_columns(space.smallest(), ModelOptions(100, 100), Protocol())
    assert set(cols) == set(memory.MODEL_COLUMNS)
    assert all(cols[k] > 0 for k in ("weight_mb", "activation_mb", "memory_model_mb"))
    assert cols["memory_model_source"] == "memory model (exported graphs, fp32, onnxruntime)"
    with pytest.raises(ConfigError, match="unknown precision 'bf8'"):
        memory.weight_bytes(space.smallest(), ModelOptions(100, 100), "bf8")
    with pytest.raises(ConfigError, match="beam must be >= 1"):
        memory.Shapes.of({"beam": 0})


# -- the exported-graph model ----------------------------------------------------------------------------------------
def _perturbed(cfg, opt, seed=0):
    """A standalone model whose every parameter is distinct (export merges identical constants, e.g. layer norms at
    their initial 1 and 0; a trained model has none)."""
    torch.manual_seed(seed)
    model = SuperTransformer(cfg, opt).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def _graph_float_elements(path):
    """Float elements a graph stores: initializers and Constant-node tensors (scalars left out)."""
    import onnx
    from onnx import TensorProto

    m = onnx.load(path)
    tensors = list(m.graph.initializer) + [a.t for n in m.graph.node if n.op_type == "Constant"
                                           for a in n.attribute if a.name == "value"]
    total = 0
    for t in tensors:
        numel = 1
        for d in t.dims:
            numel *= d
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and numel > 1:
            total += numel
    return total


@pytest.mark.parametrize("kw", OPTIONS[:3], ids=["shared", "unshared", "shared-dec-io"])
def test_exported_weights_equal_what_the_exported_graphs_store(space, tmp_path, kw):
    """Each graph's initializers and constants are exactly the model's count (export folds slices and transposes)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from hat.export import onnx_path
    from hat.export.onnx import ExportSettings, export_model

    opt = ModelOptions(300, 300 if kw.get("share_all_embeddings") else 260, **kw)
    s = ExportSettings(batch_size=1, src_len=7, tgt_len=6, beam=2, simplify="no")
    shapes = memory.Shapes(batch=1, src_len=7, tgt_len=6, beam=2)
    cfgs = [space.largest().replace(decoder_embed_dim=128), space.smallest().replace(encoder_embed_dim=192)]
    for i, cfg in enumerate(cfgs):
        export_model(_perturbed(cfg, opt), str(tmp_path), f"m{i}", s, log=lambda *_: None)
        want = memory.exported_weight_elements(cfg, opt, shapes)
        got = {p: _graph_float_elements(onnx_path(str(tmp_path), f"m{i}", p)) for p in ("enc", "dec")}
        assert got == {"enc": want["encoder_graph"], "dec": want["decoder_graph"]}, cfg


def test_exported_buffers_equal_the_graphs_inputs_and_outputs(space):
    """The counted buffers are the exported graphs' I/O shapes (hat.export.graphs.encoder_io / decoder_io)."""
    from hat.export.graphs import decoder_io, encoder_io

    opt = ModelOptions(120, 120, share_all_embeddings=True)
    shapes = memory.Shapes(batch=2, src_len=9, tgt_len=7, beam=3)
    rows = shapes.batch * shapes.beam
    for cfg in _configs(space, 4, seed=11):
        with torch.device("meta"):
            model = SuperTransformer(cfg, opt)
        _, enc_out = encoder_io(model, shapes.batch, shapes.src_len)
        dec_in, dec_out = decoder_io(model, rows, shapes.src_len, shapes.tgt_len, shapes.batch)

        def numel(specs, *prefixes):
            total = 0
            for spec in specs:
                if spec["name"].startswith(prefixes):
                    n = 1
                    for d in spec["shape"]:
                        n *= d
                    total += n
            return total

        a = memory.exported_activation_elements(cfg, opt, shapes)
        assert a["encoder_outputs"] == numel(enc_out, "cross_")
        assert a["cross_kv"] == numel(dec_in, "cross_")
        assert a["self_cache"] == numel(dec_in, "self_k_", "self_v_") == numel(dec_out, "new_self_")
        assert a["logits"] == numel(dec_out, "logits")


def test_doubling_tgt_len_grows_the_cache_terms_by_the_exact_bytes(space):
    cfg, opt = space.largest(), ModelOptions(8004, 8004, share_all_embeddings=True)
    base = memory.Shapes(batch=1, src_len=30, tgt_len=30, beam=4)
    long = memory.Shapes(batch=1, src_len=30, tgt_len=60, beam=4)
    a, b = memory.exported_activation_elements(cfg, opt, base), memory.exported_activation_elements(cfg, opt, long)
    n, q, layers = 4, cfg.qkv_dim, cfg.decoder_layer_num
    assert b["self_cache"] - a["self_cache"] == 2 * layers * n * 30 * q
    assert b["caches_held"] - a["caches_held"] == memory.CACHE_SETS_HELD * 2 * layers * n * 30 * q
    for unchanged in ("cross_kv", "logits", "encoder_outputs"):
        assert b[unchanged] == a[unchanged]
    wa, wb = memory.exported_weight_elements(cfg, opt, base), memory.exported_weight_elements(cfg, opt, long)
    assert wb["encoder_graph"] == wa["encoder_graph"]
    pad = opt.padding_idx
    d = cfg.decoder_embed_dim
    assert wb["decoder_graph"] - wa["decoder_graph"] == 30 * d + (pad + 1 + 60) * 60 - (pad + 1 + 30) * 30
    ra = memory.exported_memory_report(cfg, opt, "fp32", base)
    rb = memory.exported_memory_report(cfg, opt, "fp32", long)
    grow = (b["total"] - a["total"]) * 4 + (wb["total"] - wa["total"]) * 4
    assert (rb.total_mb - ra.total_mb) * 2**20 == pytest.approx(grow)


def test_fp16_halves_weights_and_buffers_and_names_its_runtime(space):
    cfg, opt = space.largest(), ModelOptions(8004, 8004, share_all_embeddings=True)
    r32 = memory.exported_memory_report(cfg, opt, "fp32")
    r16 = memory.exported_memory_report(cfg, opt, "fp16")
    assert r16.weights_mb == r32.weights_mb / 2 and r16.activation_mb == r32.activation_mb / 2
    assert r32.runtime == "onnxruntime" and r32.overhead_mb > 0
    assert r16.runtime == "npu" and r16.overhead_mb == 0 and r16.total_mb == r16.weights_mb + r16.activation_mb
    assert r32.weights_mb == memory.exported_weight_elements(cfg, opt)["total"] * 4 / 2**20
    # each graph keeps its own embedding table, and the decoder the transposed output projection besides
    assert r32.weights_mb > memory.weight_bytes(cfg, opt, "fp32") / 2**20
    assert "fp16" in r16.source and "npu" in r16.source and "not measured" in r16.source
    assert r32.source == memory.model_source("fp32") == "memory model (exported graphs, fp32, onnxruntime)"
    # the dataset's columns follow the backend's precision
    npu = memory.dataset_columns(cfg, opt, memory.Shapes(), backend="npu")
    ort = memory.dataset_columns(cfg, opt, memory.Shapes(), backend="onnxruntime")
    assert npu["weight_mb"] == pytest.approx(ort["weight_mb"] / 2) and "fp16" in npu["memory_model_source"]
    assert memory.measured_columns(12.5) == {"measured_memory_mb": 12.5,
                                             "measured_memory_source": "measured:onnxruntime"}
    assert memory.measured_columns(None)["measured_memory_source"] == ""


def test_memory_mb_defaults_to_the_exported_graphs(space):
    cfg, opt = space.smallest(), ModelOptions(8004, 8004, share_all_embeddings=True)
    assert memory.memory_mb(cfg, opt, "fp16") == memory.exported_memory_report(cfg, opt, "fp16").total_mb
    assert memory.memory_mb(cfg, opt, "fp32", model="fairseq") == memory.memory_report(cfg, opt, "fp32").total_mb
    with pytest.raises(ConfigError, match="unknown model 'x'"):
        memory.memory_mb(cfg, opt, model="x")
    with pytest.raises(ConfigError, match="unknown runtime 'tpu'"):
        memory.exported_memory_report(cfg, opt, runtime="tpu")


@pytest.mark.slow
def test_model_within_15_percent_of_onnxruntime_measured_in_fresh_processes(space, tmp_path):
    """Three demo configs exported and measured by hat.latency.memory_probe (a fresh process each)."""
    pytest.importorskip("onnxruntime")
    from hat.latency.memory_probe import measure_memory
    from hat.latency.protocol import Protocol

    opt, protocol = ModelOptions(8004, 8004, share_all_embeddings=True), Protocol()
    cfgs = [space.largest(), space.smallest(), space.sample(random.Random(23))]
    for cfg in cfgs:
        r = measure_memory(cfg, opt, protocol, str(tmp_path))
        model = memory.memory_mb(cfg, opt, "fp32", protocol, runtime="onnxruntime")
        assert r.source == "measured:onnxruntime" and r.runs >= 1
        assert abs(model - r.measured_mb) <= 0.15 * r.measured_mb, (cfg.key(), model, r.to_dict())
