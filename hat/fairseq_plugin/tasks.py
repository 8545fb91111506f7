"""fairseq task ``translation_hat``: translation that trains a SuperTransformer one sampled SubTransformer at a time.

Each update samples one SubTransformer from the model's search space, seeded by (seed, update number) only, so every
distributed rank (and every micro-batch of one update, with --update-freq) trains the same architecture.
Validation runs the largest and the smallest SubTransformer and logs both losses (``loss`` is the largest's, so
checkpoint selection keeps HAT's behaviour). A model built with --train-subtransformer trains and validates its one
fixed architecture.

``supernet-sampling: sandwich`` (a YAML key; HAT's uniform sampling stays the default) trains the largest, the smallest
and ``sandwich-random-configs`` sampled SubTransformers on every batch, with in-place distillation from the largest
(``inplace-distill``): the recipe of BigNAS/OFA-style weight sharing, chosen by ``benchmarks/supernet_recipe.py``.
``sandwich-no-smallest: True`` leaves the smallest out (the largest + the sampled ones).
Each SubTransformer gets its own backward, so use a DDP backend that reduces once per update (``legacy_ddp``, as the
configs set).
"""
from __future__ import annotations

import logging
import math
import os
import sys

from fairseq import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask


logger = logging.getLogger(__name__)
_LOG_SAMPLES = bool(os.environ.get("HAT_LOG_SAMPLES"))  # debugging/benchmarks: log every rank's sampled config


def _samples(model):
    return not getattr(model, "is_subtransformer", True) and hasattr(model, "sample_for_update")


def _recipe(model):
    from hat.args import supernet_recipe

    if not _samples(model):
        return None
    if not hasattr(model, "_hat_recipe"):
        model._hat_recipe = supernet_recipe(model.args)
    return model._hat_recipe


def distill_loss(model, net_output, teacher_probs, target, padding_idx):
    """In-place distillation: cross-entropy of the SubTransformer's output against the largest one's (detached)
    distribution, summed over the non-padding target tokens (the same scale as the label loss)."""
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    per_token = -(teacher_probs * lprobs).sum(dim=-1)
    return per_token.masked_fill(target.eq(padding_idx), 0.0).sum()


@register_task("translation_hat", dataclass=TranslationConfig)
class TranslationHatTask(TranslationTask):
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        recipe = _recipe(model)
        if recipe is not None:
            return self._sandwich_step(sample, model, criterion, optimizer, update_num, ignore_grad, recipe)
        if _samples(model):
            model.set_sample_config(model.sample_for_update(update_num))
            if _LOG_SAMPLES:
                import torch.distributed as dist

                rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
                # print, not the logger: fairseq silences INFO logging on every rank but the first
                print(f"hat-sample rank={rank} update={update_num} config={model.sample_config.key()}",
                      file=sys.stderr, flush=True)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def _sandwich_step(self, sample, model, criterion, optimizer, update_num, ignore_grad, recipe):
        """The sandwich rule: the largest, the smallest (unless sandwich-no-smallest) and N sampled SubTransformers
        on the same batch, one backward each (gradients summed); with inplace-distill A > 0 every one but the largest
        learns from A x the largest's detached output distribution + (1 - A) x the criterion's label loss. The
        returned loss and log are the largest's (as HAT's valid loss, so training curves stay comparable)."""
        import torch
        from fairseq.optim.amp_optimizer import AMPOptimizer

        _, n_random, alpha, smallest = recipe
        model.train()
        model.set_num_updates(update_num)
        configs = model.space.sandwich_for_update(model.sample_seed, update_num, n_random, smallest)
        outputs = []
        hook = model.register_forward_hook(lambda _m, _i, out: outputs.append(out))
        teacher = None
        first = None
        try:
            for i, cfg in enumerate(configs):
                model.set_sample_config(cfg)
                outputs.clear()
                with torch.autograd.profiler.record_function("forward"):
                    with torch.cuda.amp.autocast(enabled=isinstance(optimizer, AMPOptimizer)):
                        loss, sample_size, log = criterion(model, sample)
                        if i == 0:
                            first = (loss.detach(), sample_size, log)
                            if alpha > 0:
                                teacher = model.get_normalized_probs(outputs[0], log_probs=False).detach()
                        elif alpha > 0:
                            kd = distill_loss(model, outputs[0], teacher, sample["target"], self.tgt_dict.pad())
                            loss = (1.0 - alpha) * loss + alpha * kd
                if ignore_grad:
                    loss = loss * 0
                with torch.autograd.profiler.record_function("backward"):
                    optimizer.backward(loss)
        finally:
            hook.remove()
            model.set_sample_config(configs[0])
        return first

    def valid_step(self, sample, model, criterion):
        if not _samples(model):
            return super().valid_step(sample, model, criterion)
        results = {}
        for name, cfg in (("smallest", model.space.smallest()), ("largest", model.space.largest())):
            model.set_sample_config(cfg)
            results[name] = super().valid_step(sample, model, criterion)
        loss, sample_size, log = results["largest"]
        log = dict(log)
        for name, (_, _, sub_log) in results.items():
            log[f"loss_{name}"] = sub_log["loss"]
            log[f"nll_loss_{name}"] = sub_log.get("nll_loss", sub_log["loss"])
        return loss, sample_size, log

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not any("loss_largest" in log for log in logging_outputs):
            return
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        for name in ("largest", "smallest"):
            loss = sum(float(log.get(f"loss_{name}", 0)) for log in logging_outputs)
            nll = sum(float(log.get(f"nll_loss_{name}", 0)) for log in logging_outputs)
            metrics.log_scalar(f"loss_{name}", loss / max(sample_size, 1) / math.log(2), sample_size, round=3)
            metrics.log_scalar(f"nll_loss_{name}", nll / max(ntokens, 1) / math.log(2), ntokens, round=3)
