"""Every YAML that train.py reads loads with known keys only, fits its SuperTransformer and builds; HAT's published
SubTransformers fit their spaces and reproduce the parameter and FLOP counts of HAT's README.

Stage dirs other engineers own (latency_*, evo_search, convert_onnx) are tested with their stages.
"""
import glob
import os
import re

import pytest

from conftest import ROOT

pytest.importorskip("fairseq")
torch = pytest.importorskip("torch")

from hat.args import options_from_args, space_from_args, sub_config_from_args  # noqa: E402
from hat.config import load_yaml  # noqa: E402
from hat.models.transformer import SuperTransformer  # noqa: E402
from hat.paper_table import PUBLISHED, flops, load_arch, parameters, sentence_length  # noqa: E402
from hat.space import SearchSpace  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs")
PAPER_TASKS = ("wmt14.en-de", "wmt14.en-fr", "wmt19.en-de", "iwslt14.de-en")
TASKS = sorted(d for d in os.listdir(CONFIGS) if os.path.isdir(os.path.join(CONFIGS, d, "supertransformer")))
SUPER_FILES = sorted(glob.glob(os.path.join(CONFIGS, "*", "supertransformer", "*.yml")))
COMMON_FILES = sorted(glob.glob(os.path.join(CONFIGS, "*", "subtransformer", "common*.yml")))
ARCH_FILES = sorted(
    p for p in glob.glob(os.path.join(CONFIGS, "*", "subtransformer", "*.yml"))
    if not os.path.basename(p).startswith("common")
)
HAT_ARCHS = [p for p in ARCH_FILES if os.path.basename(p).startswith("HAT_")]


def rel(path):
    return os.path.relpath(path, ROOT)


def task_of(path):
    return rel(path).split(os.sep)[1]


def space_file(task):
    files = sorted(glob.glob(os.path.join(CONFIGS, task, "supertransformer", "*.yml")))
    assert files, f"no supertransformer config for {task}"
    return files[0]


_ARGS = {}


def args_for(configs, sub_configs=None):
    """hat.fairseq_plugin.args.build_args exactly as train.py parses (unknown keys raise ConfigError); cached per pair."""
    from hat.fairseq_plugin.args import build_args

    key = (configs, sub_configs)
    if key not in _ARGS:
        argv = [f"--configs={configs}", "--data", ROOT]
        if sub_configs:
            argv.append(f"--sub-configs={sub_configs}")
        _ARGS[key] = build_args(argv)
    return _ARGS[key]


def build_meta(args, shape):
    opt = options_from_args(args, 16, 16, 1)
    with torch.device("meta"):
        return SuperTransformer(shape, opt)


def test_tree_is_complete():
    for task in PAPER_TASKS:
        names = {rel(p) for p in glob.glob(os.path.join(CONFIGS, task, "**", "*"), recursive=True)}
        space = "space1" if task.startswith("iwslt") else "space0"
        for need in (f"supertransformer/{space}.yml", "subtransformer/common.yml", "subtransformer/common64.yml",
                     "get_preprocessed.sh", "preprocess.sh"):
            assert f"configs/{task}/{need}" in names
    # every published architecture file of HAT's repository (37) is here, under HAT's name
    assert len(HAT_ARCHS) == 37
    assert all(os.path.basename(p)[:-4] in PUBLISHED for p in HAT_ARCHS)


@pytest.mark.parametrize("path", SUPER_FILES, ids=rel)
def test_supertransformer_config(path):
    args = args_for(path)
    space = space_from_args(args, source=rel(path))  # choices fit the super dims (ConfigError otherwise)
    model = build_meta(args, space.super_config())
    for cfg in (space.largest(), space.smallest()):
        model.set_sample_config(cfg)
    assert args.save_dir.startswith("checkpoints/")


# HAT's SuperTransformers (facts from HAT's configs/<task>/supertransformer/*.yml) + our qkv-dim-choice
WMT_SPACE = {
    "encoder_embed_choice": [512, 640], "decoder_embed_choice": [512, 640],
    "encoder_ffn_embed_dim_choice": [1024, 2048, 3072], "decoder_ffn_embed_dim_choice": [1024, 2048, 3072],
    "encoder_layer_num_choice": [6], "decoder_layer_num_choice": [1, 2, 3, 4, 5, 6],
    "encoder_self_attention_heads_choice": [4, 8], "decoder_self_attention_heads_choice": [4, 8],
    "decoder_ende_attention_heads_choice": [4, 8], "decoder_arbitrary_ende_attn_choice": [-1, 1, 2],
}
IWSLT_SPACE = dict(WMT_SPACE, encoder_ffn_embed_dim_choice=[512, 1024, 2048],
                   decoder_ffn_embed_dim_choice=[512, 1024, 2048], encoder_self_attention_heads_choice=[2, 4],
                   decoder_self_attention_heads_choice=[2, 4], decoder_ende_attention_heads_choice=[2, 4])


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_paper_spaces_and_training_settings(task):
    wmt = task.startswith("wmt")
    args = args_for(space_file(task))
    space = space_from_args(args)
    expected = WMT_SPACE if wmt else IWSLT_SPACE
    for key, val in expected.items():
        assert space.choices[key.replace("_", "-")] == val, key
    assert space.super_dims == {
        "encoder-embed-dim": 640, "decoder-embed-dim": 640,
        "encoder-ffn-embed-dim": 3072 if wmt else 2048, "decoder-ffn-embed-dim": 3072 if wmt else 2048,
        "encoder-layers": 6, "decoder-layers": 6,
        "encoder-attention-heads": 8 if wmt else 4, "decoder-attention-heads": 8 if wmt else 4, "qkv-dim": 512,
    }
    assert space.choices["qkv-dim-choice"] == [256, 512]
    common = args_for(ARCH_FOR_TASK[task], os.path.join(CONFIGS, task, "subtransformer", "common.yml"))
    for a, warmup in ((args, 10000), (common, 4000)):
        assert a.warmup_updates == warmup and a.max_tokens == 4096 and a.optimizer == "adam"
        assert a.criterion == "label_smoothed_cross_entropy" and a.label_smoothing == 0.1
        if wmt:  # cosine from 1e-7 up to 1e-3, back down to 1e-7 (HAT's max-lr/lr in fairseq 0.12's names)
            assert a.lr_scheduler == "cosine" and a.lr == [0.001] and a.min_lr == 1e-7
            assert a.update_freq == [16] and a.max_update == 40000 and a.fp16 and a.ddp_backend == "legacy_ddp"
            assert a.dropout == 0.3 and a.attention_dropout == 0.1 and a.weight_decay == 0.0
            assert a.share_all_embeddings
        else:
            assert a.lr_scheduler == "inverse_sqrt" and a.lr == [0.0005] and a.max_update == 50000
            assert a.dropout == 0.375 and a.weight_decay == 0.0001 and not a.fp16
            assert (a.source_lang, a.target_lang) == ("de", "en")


ARCH_FOR_TASK = {task_of(p): p for p in HAT_ARCHS}


def arch_common_pairs():
    pairs = []
    for arch in ARCH_FILES:
        for common in sorted(glob.glob(os.path.join(CONFIGS, task_of(arch), "subtransformer", "common*.yml"))):
            pairs.append(pytest.param(arch, common, id=f"{rel(arch)}+{os.path.basename(common)}"))
    return pairs


@pytest.mark.parametrize("arch,common", arch_common_pairs())
def test_subtransformer_with_common(arch, common):
    args = args_for(arch, common)  # known keys only; sub config fits the common file's super dims
    assert args.train_subtransformer
    sub = sub_config_from_args(args, source=rel(arch))
    model = build_meta(args, sub)
    assert model.config == sub
    if os.path.basename(common) == "common64.yml":
        assert sub.qkv_dim == 64  # common64 overrides the architecture's qkv dim
    else:
        assert sub.qkv_dim == load_yaml(arch)["qkv-dim-subtransformer"]


def test_common_files_all_used():
    used = {c for c in COMMON_FILES if any(task_of(a) == task_of(c) for a in ARCH_FILES)}
    assert used == set(COMMON_FILES)


@pytest.mark.parametrize("arch", HAT_ARCHS, ids=lambda p: os.path.basename(p)[:-4])
def test_published_subtransformer(arch):
    """Fits its task's search space; reproduces HAT's README #Params (M, no embeddings / output layer) and FLOPs (G)."""
    task = task_of(arch)
    space = space_from_args(args_for(space_file(task)))
    cfg = load_arch(arch)
    space.validate(cfg, source=rel(arch))
    assert cfg.qkv_dim == 512  # HAT's fixed value
    params_m, gflops, _, _ = PUBLISHED[os.path.basename(arch)[:-4]]
    assert round(parameters(cfg, share_all_embeddings=task.startswith("wmt")) / 1e6, 2) == params_m
    assert round(flops(cfg, sentence_length(task)) / 1e9, 2) == gflops


# a few architectures with HAT's README numbers written out (not through our transcription of the table)
@pytest.mark.parametrize("name,params", [
    ("wmt14.en-de/subtransformer/HAT_wmt14ende_raspberrypi@3.5s_bleu@25.8", 25_217_536),  # README: 25.22M
    ("wmt14.en-de/subtransformer/HAT_wmt14ende_titanxp@146.7ms_bleu@28.1", 51_200_000),  # README: 51.20M
    ("wmt19.en-de/subtransformer/HAT_wmt19ende_titanxp@55.7ms_bleu@42.4", 36_892_672),  # README: 36.89M
    ("iwslt14.de-en/subtransformer/HAT_iwslt14deen_titanxp@45.6ms_bleu@33.4", 16_820_736),  # README: 16.82M
])
def test_readme_parameter_counts(name, params):
    task = name.split("/")[0]
    cfg = load_arch(os.path.join(CONFIGS, name + ".yml"))
    got = parameters(cfg, share_all_embeddings=task.startswith("wmt"))
    assert abs(got - params) < 5_000  # the README rounds to 10k
    # the meta-device count is the model train.py trains: the same number from the core model
    args = args_for(os.path.join(CONFIGS, name + ".yml"), os.path.join(CONFIGS, task, "subtransformer", "common.yml"))
    model = build_meta(args, sub_config_from_args(args))
    total = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "output_projection" not in n)
    assert total == got


# ---- the RK3588 fork's files and HAT's per-hardware files of the paper tasks (issue 13) -----------------------------
# task -> (short name, ONNX name of convert_onnx/super.yml, HAT's hardware for it (HAT's own config trees))
FORK = {
    "wmt14.en-de": ("wmt14ende", "wmt14_en_de", ("raspberrypi", "xeon", "titanxp")),
    "wmt14.en-fr": ("wmt14enfr", "wmt14_en_fr", ("raspberrypi", "xeon", "titanxp")),
    "wmt19.en-de": ("wmt19ende", "wmt19_en_de", ("titanxp",)),
    "iwslt14.de-en": ("iwslt14deen", "iwslt14_de_en", ("titanxp",)),
}
HW_STEM = {"raspberrypi": "cpu_raspberrypi", "xeon": "cpu_xeon", "titanxp": "gpu_titanxp"}
HAT_EVO_LATENCY = {"raspberrypi": 6000, "xeon": 200, "titanxp": 200}  # HAT's configs/<task>/evo_search/*.yml


def _latency_args(path, *extra):
    from hat.args import add_latency_args, parse_args

    return parse_args([f"--configs={path}", "--lat-vocab-size", "1000", *extra], "latency_dataset.py",
                      hooks=(add_latency_args,))


def _evo_args(task, evo):
    from hat.args import add_evo_args, add_latency_args
    from hat.fairseq_plugin.args import build_args

    def hook(p):
        add_latency_args(p)
        add_evo_args(p)

    return build_args([f"--configs={space_file(task)}", f"--evo-configs={evo}", "--data", ROOT],
                      extra_parser_hook=hook, extra_config_flags=("--evo-configs",))


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_fork_and_hat_hardware_files_are_there(task):
    short, _, hardware = FORK[task]
    names = {rel(p) for p in glob.glob(os.path.join(CONFIGS, task, "**", "*.yml"), recursive=True)}
    need = ["convert_onnx/super.yml", "convert_onnx/common.yml", "convert_onnx/common64.yml", "latency_dataset/npu.yml",
            "latency_predictor/npu.yml", f"evo_search/{short}_npu.yml", f"evo_search/{short}_npu_test0.yml",
            f"subtransformer/{short}_npu@200ms.yml", f"subtransformer/{short}_npu_test0@200ms.yml"]
    for hw in hardware:
        need += [f"latency_dataset/{HW_STEM[hw]}.yml", f"latency_predictor/{HW_STEM[hw]}.yml",
                 f"evo_search/{short}_{hw}.yml"]
    assert not [n for n in need if f"configs/{task}/{n}" not in names]


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_latency_dataset_configs(task):
    """npu.yml: the npu backend, a space covering the task's search space and qkv 64 (the test0 search), the
    export's shapes; HAT's hardware files: HAT's backend flag and protocol, HAT's sampling space + the qkv gene."""
    from hat.args import backend_name, space_from_args, stage_context
    from hat.search import coverage_problems

    iwslt = task.startswith("iwslt")
    search = space_from_args(args_for(space_file(task)))
    for path in sorted(glob.glob(os.path.join(CONFIGS, task, "latency_dataset", "*.yml"))):
        args = _latency_args(path)
        ctx = stage_context(args)  # known keys only, choices fit the super dims
        hw = os.path.basename(path)[:-4]
        assert backend_name(args) == {"npu": "npu", "gpu_titanxp": "gpu"}.get(hw, "cpu"), path
        assert (ctx.protocol.src_len, ctx.protocol.tgt_len) == ((23, 23) if iwslt else (30, 30))  # HAT's sentence
        assert not coverage_problems(search, ctx.space), path
        assert args.lat_dataset_path.startswith("latency_dataset/")
        if hw == "npu":
            assert 64 in ctx.space.choices["qkv-dim-choice"] and args.latency_backend == "npu"
            sup = os.path.join(CONFIGS, task, "convert_onnx", "super.yml")
            export = parse_stage(c2o_parser(), [f"--configs={sup}"])
            assert (export.src_len, export.tgt_len, export.beam) == (ctx.protocol.src_len, ctx.protocol.tgt_len,
                                                                    ctx.protocol.beam)
        else:  # HAT's protocol: trimmed mean, beam 5 (fairseq's default), RPi 2 runs
            assert ctx.protocol.estimator == "trimmed-mean" and ctx.protocol.beam == 5
            assert ctx.protocol.repeats == (2 if hw == "cpu_raspberrypi" else 20)


def c2o_parser():
    from hat.stages.convert2onnx import build_parser

    return build_parser()


def parse_stage(parser, argv):
    from hat.config import parse_stage as parse

    return parse(parser, argv, ("--configs", "--sub-configs"))


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_convert_onnx_configs(task):
    """super.yml exports HAT's downloaded SuperTransformer under the name the fork's convert2rknn.py command reads,
    in the folder convert2rknn.py reads without --configs; common64.yml exports what common64.yml trained."""
    from hat.download import load_registry
    from hat.stages.convert2rknn import build_parser as rknn_parser

    short, onnx_name, _ = FORK[task]
    folder = os.path.join(CONFIGS, task, "convert_onnx")
    sup = parse_stage(c2o_parser(), [f"--configs={os.path.join(folder, 'super.yml')}"])
    default = parse_stage(rknn_parser(), [f"--onnx-name={onnx_name}"])
    assert sup.name == onnx_name and sup.onnx_dir == default.onnx_dir == "onnx"
    entry = load_registry()[f"HAT_{short}_super_{os.path.basename(space_file(task))[:-4]}"]
    assert entry.kind == "supertransformer" and sup.model_path == f"downloaded_models/{entry.filename}"
    for common in ("common.yml", "common64.yml"):
        args = parse_stage(c2o_parser(), [f"--configs={os.path.join(folder, common)}"])
        assert args.model_path is None and args.name is None and args.onnx_dir == "onnx"
        assert (args.src_len, args.tgt_len, args.beam) == (sup.src_len, sup.tgt_len, sup.beam)
        assert args.qkv_dim_subtransformer == (64 if common == "common64.yml" else None)


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_evo_search_configs(task):
    """Every search has a latency AND a memory constraint; HAT's hardware files keep HAT's predictor, SuperTransformer
    and latency constraint, searching qkv 512 (all HAT's measurements and checkpoints know); the npu files use the
    npu predictor, whose dataset's space covers what they search."""
    from hat.args import space_from_args
    from hat.search import coverage_problems

    short, _, hardware = FORK[task]
    npu_space = space_from_args(_latency_args(os.path.join(CONFIGS, task, "latency_dataset", "npu.yml")))
    for hw in ("npu", "npu_test0") + hardware:
        evo = os.path.join(CONFIGS, task, "evo_search", f"{short}_{hw}.yml")
        args = _evo_args(task, evo)
        assert args.latency_constraint > 0 and args.memory_constraint > 0, evo
        assert args.write_config_path.startswith(f"configs/{task}/subtransformer/{short}_{hw}@")
        space = space_from_args(args)
        if hw.startswith("npu"):
            pred = load_yaml(os.path.join(CONFIGS, task, "latency_predictor", "npu.yml"))
            assert args.ckpt_path == pred["ckpt-path"] and args.latency_constraint == 200
            assert args.memory_precision == "fp16"
            assert os.path.basename(args.write_config_path) == f"{short}_{hw}@200ms.yml"
            assert space.choices["qkv-dim-choice"] == ([64] if hw == "npu_test0" else [256, 512])
            assert not coverage_problems(space, npu_space)
        else:
            pred = load_yaml(os.path.join(CONFIGS, task, "latency_predictor", f"{HW_STEM[hw]}.yml"))
            assert args.ckpt_path == pred["ckpt-path"] and args.latency_constraint == HAT_EVO_LATENCY[hw]
            assert args.restore_file.startswith("downloaded_models/HAT_") and args.memory_precision == "fp32"
            assert space.choices["qkv-dim-choice"] == [512]
            from hat.stages import latency_predictor as cli

            predictor_yml = os.path.join(CONFIGS, task, "latency_predictor", HW_STEM[hw] + ".yml")
            hat_space = cli.space_of(cli.parse_args([f"--configs={predictor_yml}"]))
            assert not coverage_problems(space, hat_space)


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_standin_npu_architectures(task):
    """The *_npu@200ms.yml files come from the stand-in chain: they fit the task's space (test0: qkv 64), and their
    header says what stood in for the board and the data, points to re-running on a board, and claims no NPU figure."""
    from hat.args import space_from_args

    short = FORK[task][0]
    space = space_from_args(args_for(space_file(task)))
    for variant, qkv in (("npu", (256, 512)), ("npu_test0", (64,))):
        path = os.path.join(CONFIGS, task, "subtransformer", f"{short}_{variant}@200ms.yml")
        cfg = load_arch(path)
        assert cfg.qkv_dim in qkv
        if variant == "npu":
            space.validate(cfg, source=rel(path))  # a SubTransformer of the searched space
        else:
            space.fits(cfg, source=rel(path))  # the same space with qkv 64
        with open(path) as f:
            header = "".join(l for l in f if l.startswith("#"))
        assert header.startswith("# STAND-IN, NOT AN RK3588 RESULT: re-run the chain on a board")
        assert "measured:cpu" in header and "measured:board" not in header and "[predicted, stand-in cpu" in header
        for named in re.findall(r"latency_dataset/standin_\w+\.(?:csv|pt)", header):
            assert os.path.isfile(os.path.join(ROOT, named)), named
        assert f"--evo-configs=configs/{task}/evo_search/{short}_{variant}.yml" in header
