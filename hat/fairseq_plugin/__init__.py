"""The only fairseq-aware code: registers model ``transformersuper`` (+ archs) and task ``translation_hat``.

Use it from fairseq's own tools with ``--user-dir hat/fairseq_plugin``, or ``import hat.fairseq_plugin``.
"""
from hat.fairseq_plugin import models, tasks  # noqa: F401
