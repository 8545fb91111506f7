"""The only fairseq-aware code: registers model ``transformersuper`` (+ archs) and task ``translation_hat``; also
fairseq's argument parser for the stages (args.py), checkpoints with a task (checkpoint.py), the search's fitness
(valid_loss.py), generation, the training launch and binarized splits (data.py).

Use it from fairseq's own tools with ``--user-dir hat/fairseq_plugin``, or ``import hat.fairseq_plugin``.
"""
from hat.fairseq_plugin.args import quiet_fairseq_imports

quiet_fairseq_imports()  # before fairseq's first import

from hat.fairseq_plugin import models, tasks  # noqa: E402,F401
