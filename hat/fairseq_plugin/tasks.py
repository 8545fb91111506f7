"""fairseq task ``translation_hat``: translation that trains a SuperTransformer one sampled SubTransformer at a time.

Each update samples one SubTransformer from the model's search space, seeded by (seed, update number) only, so every
distributed rank (and every micro-batch of one update, with --update-freq) trains the same architecture.
Validation runs the largest and the smallest SubTransformer and logs both losses (``loss`` is the largest's, so
checkpoint selection keeps HAT's behaviour). A model built with --train-subtransformer trains and validates its one
fixed architecture.
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


@register_task("translation_hat", dataclass=TranslationConfig)
class TranslationHatTask(TranslationTask):
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if _samples(model):
            model.set_sample_config(model.sample_for_update(update_num))
            if _LOG_SAMPLES:
                import torch.distributed as dist

                rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
                # print, not the logger: fairseq silences INFO logging on every rank but the first
                print(f"hat-sample rank={rank} update={update_num} config={model.sample_config.key()}",
                      file=sys.stderr, flush=True)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

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
