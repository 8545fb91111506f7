"""The fairseq plugin and the stage scripts, run as a user runs them (real fairseq, real demo data)."""
import json
import os
import random

import pytest
import torch

from conftest import FIXTURES, run_script

TINY = os.path.join(FIXTURES, "tiny_space.yml")
TINY_SUB = os.path.join(FIXTURES, "tiny_sub.yml")
TINY_COMMON = os.path.join(FIXTURES, "tiny_common.yml")


def _json_logs(output, tag):
    rows = []
    for line in output.splitlines():
        if tag in line and "{" in line:
            try:
                rows.append(json.loads(line[line.index("{"):]))
            except ValueError:
                pass
    return rows


def test_unknown_yaml_key_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(open(TINY).read() + "encoder-embed-dims: 64\n")
    r = run_script("train.py", f"--configs={bad}", "--data", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: unknown key 'encoder-embed-dims' in {bad}"
    assert "Traceback" not in r.stderr


def test_choice_outside_super_dims_fails_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(open(TINY).read().replace("qkv-dim-choice: [64, 32]", "qkv-dim-choice: [128, 32]"))
    save = tmp_path / "ckpt"
    r = run_script("train.py", f"--configs={bad}", "--data", str(tmp_path), "--save-dir", str(save))
    assert r.returncode == 2
    assert "qkv-dim-choice has 128, outside 1..qkv-dim=64" in r.stderr
    assert not save.exists()


def test_command_line_flag_overrides_yaml(demo_data):
    from hat.fairseq_plugin.args import build_args

    args = build_args([f"--configs={TINY}", "--data", demo_data, "--lr", "0.01", "--qkv-dim-choice", "64"])
    assert args.lr == [0.01]
    assert args.qkv_dim_choice == [64]
    assert args.task == "translation_hat"
    assert args.encoder_embed_choice == [64, 32]  # from the YAML


@pytest.mark.slow
def test_task_samples_one_config_per_update_identically_on_two_ranks(demo_data):
    from fairseq import optim, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from hat.fairseq_plugin.args import build_args

    args = build_args([f"--configs={TINY}", "--data", demo_data, "--seed", "11"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=600).next_epoch_itr(shuffle=False)
    sample = next(iter(itr))
    per_rank = []
    for rank in range(2):  # two independently built replicas, other global RNG states
        torch.manual_seed(100 + rank)
        random.seed(rank)
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
        optimizer = optim.build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
        seen = []
        for update in range(6):
            task.train_step(sample, model, criterion, optimizer, update)
            seen.append(model.sample_config)
        per_rank.append(seen)
    assert per_rank[0] == per_rank[1]
    assert len({c.key() for c in per_rank[0]}) > 1
    assert per_rank[0][3] == model.space.sample_for_update(11, 3)
    # validation runs the largest and the smallest SubTransformer
    model.eval()
    _, _, log = task.valid_step(sample, model, criterion)
    assert log["loss_largest"] != log["loss_smallest"]


@pytest.mark.slow
def test_a_few_supertransformer_updates_lower_the_loss(demo_data, tmp_path):
    r = run_script(
        "train.py", f"--configs={TINY}", "--data", demo_data, "--max-update", "30", "--log-interval", "1",
        "--log-format", "json", "--save-dir", str(tmp_path / "ckpt"), "--no-save", "--validate-interval-updates", "30",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [float(row["loss"]) for row in _json_logs(r.stdout + r.stderr, "train_inner")]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    valid = _json_logs(r.stdout + r.stderr, "valid_loss")
    assert valid and "valid_loss_largest" in valid[-1] and "valid_loss_smallest" in valid[-1]


@pytest.mark.slow
def test_subtransformer_training_checkpoint_and_bleu(demo_data, tmp_path):
    from hat.config import load_yaml
    from hat.models import ModelOptions, SuperTransformer, count_parameters
    from hat.space import SubConfig

    save = tmp_path / "sub"
    r = run_script(
        "train.py", f"--configs={TINY_SUB}", f"--sub-configs={TINY_COMMON}", "--data", demo_data,
        "--max-update", "3", "--save-dir", str(save), "--validate-interval-updates", "3",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    sub_cfg = SubConfig.from_hat_dict(load_yaml(TINY_SUB))
    vocab = ckpt["model"]["encoder.core.embed_tokens.weight"].shape[0]
    ref = SuperTransformer(sub_cfg, ModelOptions(vocab, vocab, share_all_embeddings=True)).state_dict()
    saved = {k.split(".core.", 1)[0].split(".")[0] + "." + k.split(".core.", 1)[1]: v for k, v in ckpt["model"].items()}
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    shared = ckpt["model"]["encoder.core.embed_tokens.weight"].numel()
    assert sum(v.numel() for v in ckpt["model"].values()) - shared == count_parameters(
        SuperTransformer(sub_cfg, ModelOptions(vocab, vocab, share_all_embeddings=True))
    )

    hyp = tmp_path / "valid.hyp"
    g = run_script(
        "generate.py", f"--configs={TINY_SUB}", f"--sub-configs={TINY_COMMON}", "--data", demo_data,
        "--path", str(save / "checkpoint_last.pt"), "--gen-subset", "valid", "--max-len-a", "0", "--max-len-b", "4",
        "--batch-size", "256", "--results-path", str(hyp),
    )
    assert g.returncode == 0, g.stderr[-3000:]
    bleu = [line for line in g.stdout.splitlines() if line.startswith("BLEU = ")]
    assert bleu and "nrefs:1" in bleu[0] and "tok:13a" in bleu[0]
    assert len(hyp.read_text().splitlines()) == 1891  # no sentence dropped

    other = tmp_path / "other.yml"
    other.write_text(open(TINY_SUB).read().replace("qkv-dim-subtransformer: 32", "qkv-dim-subtransformer: 64"))
    bad = run_script(
        "generate.py", f"--configs={other}", f"--sub-configs={TINY_COMMON}", "--data", demo_data,
        "--path", str(save / "checkpoint_last.pt"), "--gen-subset", "valid",
    )
    assert bad.returncode == 2 and "but the checkpoint holds" in bad.stderr

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    c = run_script("generate.py", f"--configs={TINY_SUB}", f"--sub-configs={TINY_COMMON}", "--data", demo_data,
                   "--path", str(corrupt))
    assert c.returncode == 2 and "cannot load checkpoint" in c.stderr and "Traceback" not in c.stderr


def test_subtransformer_equals_fairseq_transformer_with_the_same_weights():
    """At qkv dim = embed dim and uniform layers, our model is fairseq's own Transformer: load our weights into
    fairseq's TransformerModel and compare logits (catches any drift in masks, positions, scaling, norm order)."""
    import argparse

    from fairseq.data import Dictionary
    from fairseq.models.transformer import TransformerModel, base_architecture

    from hat.models import ModelOptions, SuperTransformer
    from hat.space import SubConfig

    d = Dictionary()
    for i in range(60):
        d.add_symbol(f"w{i}")
    cfg = SubConfig(
        encoder_embed_dim=32, decoder_embed_dim=32, encoder_layer_num=2, decoder_layer_num=2,
        encoder_ffn_embed_dim=(64, 64), decoder_ffn_embed_dim=(64, 64), encoder_self_attention_heads=(4, 4),
        decoder_self_attention_heads=(4, 4), decoder_ende_attention_heads=(4, 4),
        decoder_arbitrary_ende_attn=(-1, -1), qkv_dim=32,
    )
    torch.manual_seed(0)
    ours = SuperTransformer(cfg, ModelOptions(len(d), len(d), padding_idx=d.pad(), share_all_embeddings=True)).eval()
    args = argparse.Namespace(
        encoder_embed_dim=32, decoder_embed_dim=32, encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64,
        encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        share_all_embeddings=True, dropout=0.0, max_source_positions=256, max_target_positions=256,
    )
    base_architecture(args)

    class _Task:
        source_dictionary = target_dictionary = d

    theirs = TransformerModel.build_model(args, _Task()).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected
    assert all("output_projection" in k or "version" in k or "embed_positions" in k for k in missing), missing
    theirs.decoder.output_projection.weight = theirs.decoder.embed_tokens.weight
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, len(d), (3, 7), generator=g)
    src[1, :2] = d.pad()
    prev = torch.randint(4, len(d), (3, 5), generator=g)
    with torch.no_grad():
        ref, _ = theirs(src, src.ne(d.pad()).sum(1), prev)
        torch.testing.assert_close(ours(src, prev), ref, atol=1e-5, rtol=1e-5)
