"""The main job on the embedded demo task, end to end (make demo): ``python -m hat.demo``.

The command line is :mod:`hat.stages.demo` (its docstring tells the whole job), the recipe :mod:`hat.pipeline.recipe`,
the stage runner :mod:`hat.pipeline.runner`, the table and plots :mod:`hat.pipeline.report`.
"""

if __name__ == "__main__":
    from hat.cli import run
    from hat.stages.demo import main

    run(main)
