"""The main job as a chain of stages (python -m hat.demo, benchmarks/searched_vs_baseline.py).

- :mod:`hat.pipeline.runner`: the generic part: a stage is a top-level script run as a subprocess (its progress bars
  passed through, fairseq's log filtered), a stamp under ``<results>/stages`` per finished stage and a skip on a rerun,
  ``--stage-args STAGE=FLAGS``;
- :mod:`hat.pipeline.recipe`: the demo's recipe: which scripts in which order, with which flags (the profiles), the
  search's budget from the baseline, where everything goes;
- :mod:`hat.pipeline.report`: the table (table.md, table.json; every figure with its source) and the plots.
"""
