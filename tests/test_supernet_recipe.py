"""SuperTransformer training recipes: HAT's uniform sampling (default) and the sandwich rule with in-place
distillation (``supernet-sampling: sandwich``), checked in-process against a gradient computed by hand; and the
regression that a SuperTransformer whose every choice is fixed to its largest value trains exactly like the largest
SubTransformer trained alone."""
import os

import pytest
import torch
import yaml

from conftest import FIXTURES

TINY = os.path.join(FIXTURES, "tiny_space.yml")
TINY_COMMON = os.path.join(FIXTURES, "tiny_common.yml")


def _setup(argv):
    from fairseq import optim, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from hat.fairseq_plugin.args import build_args

    cfg = convert_namespace_to_omegaconf(build_args(argv))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=500).next_epoch_itr(shuffle=False)
    batches = iter(itr)
    torch.manual_seed(3)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    optimizer = optim.build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    return task, model, criterion, optimizer, batches


def _grads(model):
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


@pytest.mark.parametrize("alpha,smallest", [(0.0, True), (0.5, True), (0.5, False)])
def test_sandwich_step_is_the_sum_of_its_configs_gradients(demo_data, alpha, smallest):
    from hat.fairseq_plugin.tasks import distill_loss

    task, model, criterion, optimizer, batches = _setup(
        [f"--configs={TINY}", "--data", demo_data, "--seed", "7", "--supernet-sampling", "sandwich",
         "--sandwich-random-configs", "2", "--inplace-distill", str(alpha)]
        + ([] if smallest else ["--sandwich-no-smallest"]))
    sample = next(batches)
    update = 5
    configs = model.space.sandwich_for_update(7, update, 2, smallest)
    assert configs[0] == model.space.largest() and len(configs) == 3 + smallest
    if smallest:
        assert configs[1] == model.space.smallest()
    else:  # the same random samples as with the smallest, which is gone
        assert configs[1:] == model.space.sandwich_for_update(7, update, 2)[2:]
        assert model.space.smallest() not in configs
    assert len({c.key() for c in configs}) >= 2 + smallest

    optimizer.zero_grad()
    loss, sample_size, log = task.train_step(sample, model, criterion, optimizer, update)
    got = _grads(model)
    assert model.sample_config == configs[0]  # left at the largest (the teacher), as validation expects nothing else

    # by hand: the largest on the labels, every other one on (1 - a) labels + a x the largest's detached output
    optimizer.zero_grad()
    model.train()
    model.set_sample_config(configs[0])
    out = model(**sample["net_input"])
    ref_loss, _ = criterion.compute_loss(model, out, sample)
    ref_loss.backward()
    teacher = model.get_normalized_probs(out, log_probs=False).detach()
    for cfg in configs[1:]:
        model.set_sample_config(cfg)
        out = model(**sample["net_input"])
        ce, _ = criterion.compute_loss(model, out, sample)
        kd = distill_loss(model, out, teacher, sample["target"], task.target_dictionary.pad())
        ((1 - alpha) * ce + alpha * kd).backward()
    want = _grads(model)

    ref = float(ref_loss.detach())
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert sample_size == sample["ntokens"] and float(log["loss"]) == pytest.approx(ref, rel=1e-5)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-6), name


def test_distillation_pulls_towards_the_teacher_not_the_labels(demo_data):
    from hat.fairseq_plugin.tasks import distill_loss

    task, model, criterion, _, batches = _setup([f"--configs={TINY}", "--data", demo_data])
    sample = next(batches)
    model.eval()
    model.set_sample_config(model.space.smallest())
    out = model(**sample["net_input"])
    own = model.get_normalized_probs(out, log_probs=False).detach()
    pad = task.target_dictionary.pad()
    uniform = torch.full_like(own, 1.0 / own.size(-1))
    # cross-entropy against a distribution is smallest for that distribution itself (Gibbs' inequality)
    assert distill_loss(model, out, own, sample["target"], pad) < distill_loss(model, out, uniform,
                                                                              sample["target"], pad)
    # padding positions do not count
    target = sample["target"].clone()
    target[:] = pad
    assert float(distill_loss(model, out, own, target, pad)) == 0.0


def test_uniform_stays_hats_default_and_bad_recipe_keys_are_one_line_errors(demo_data, tmp_path):
    from hat.args import supernet_recipe
    from hat.errors import ConfigError
    from hat.fairseq_plugin.args import build_args

    assert supernet_recipe(build_args([f"--configs={TINY}", "--data", demo_data])) is None
    assert supernet_recipe(build_args([f"--configs={TINY}", "--data", demo_data, "--supernet-sampling",
                                       "sandwich"])) == ("sandwich", 2, 0.5, True)
    assert supernet_recipe(build_args([f"--configs={TINY}", "--data", demo_data, "--supernet-sampling", "sandwich",
                                       "--sandwich-no-smallest"])) == ("sandwich", 2, 0.5, False)
    for bad, word in ((["--supernet-sampling", "sandwich", "--inplace-distill", "1.5"], "inplace-distill"),
                      (["--supernet-sampling", "sandwich", "--sandwich-random-configs", "-1"], "sandwich-random"),
                      (["--inplace-distill", "0.5"], "need supernet-sampling"),
                      (["--sandwich-no-smallest"], "need supernet-sampling"),
                      (["--supernet-sampling", "sandwich", "--sandwich-no-smallest", "--sandwich-random-configs", "0"],
                       "sandwich-random-configs >= 1")):
        with pytest.raises(ConfigError, match=word):
            supernet_recipe(build_args([f"--configs={TINY}", "--data", demo_data] + bad))
    yml = tmp_path / "sub.yml"
    yml.write_text("supernet-sampling: sandwich\n")
    with pytest.raises(ConfigError, match="not one SubTransformer"):
        build_args([f"--configs={os.path.join(FIXTURES, 'tiny_sub.yml')}", f"--sub-configs={TINY_COMMON}",
                    "--supernet-sampling", "sandwich", "--data", demo_data])


def test_fixed_largest_supernet_trains_exactly_like_the_largest_subtransformer_alone(demo_data, tmp_path):
    """Regression for the weight sharing (issue 14): with every choice fixed to its largest value, the
    SuperTransformer's updates are the standalone largest SubTransformer's, loss for loss."""
    from hat.space import SearchSpace

    space = yaml.safe_load(open(TINY))
    fixed = {k: ([max(v)] if k.endswith("-choice") else v) for k, v in space.items()}
    fixed_yml = tmp_path / "fixed.yml"
    fixed_yml.write_text(yaml.safe_dump(fixed))
    largest = SearchSpace.from_dict({k: v for k, v in space.items() if k.endswith("-choice") or k in (
        "encoder-embed-dim", "decoder-embed-dim", "encoder-ffn-embed-dim", "decoder-ffn-embed-dim", "encoder-layers",
        "decoder-layers", "encoder-attention-heads", "decoder-attention-heads", "qkv-dim")}).largest()
    sub_yml = tmp_path / "largest.yml"
    sub_yml.write_text(yaml.safe_dump({k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in largest.to_hat_dict().items()}))

    init, runs = None, []
    for argv in ([f"--configs={fixed_yml}"], [f"--configs={sub_yml}", f"--sub-configs={TINY_COMMON}"]):
        task, model, criterion, optimizer, batches = _setup(argv + ["--data", demo_data, "--seed", "3"])
        if init is None:
            init = {k: v.clone() for k, v in model.state_dict().items()}
        else:  # same initial weights (the standalone model is built at the largest shape = the super dims)
            model.load_state_dict(init)
        losses = []
        for update, sample in zip(range(4), batches):
            optimizer.zero_grad()
            loss, sample_size, _ = task.train_step(sample, model, criterion, optimizer, update)
            optimizer.multiply_grads(1.0 / sample_size)
            optimizer.step()
            losses.append(float(loss))
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (super_losses, super_final), (sub_losses, sub_final) = runs
    assert getattr(model, "is_subtransformer", False)
    assert sub_losses == pytest.approx(super_losses, rel=1e-6)
    assert super_losses[-1] != super_losses[0]
    assert set(super_final) == set(sub_final)
    for k, v in super_final.items():
        assert torch.allclose(v, sub_final[k], atol=1e-6), k
