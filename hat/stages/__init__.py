"""The stage layer: one module per user-facing script, named after it (``train.py`` -> :mod:`hat.stages.train`).

A stage parses its YAML files and flags, builds its context (:func:`hat.args.stage_context`) and calls the libraries;
it holds no algorithm of its own. Nothing imports a stage except the scripts that run it (the top-level shims and the
``python -m`` entry points' ``__main__`` blocks); tests/test_architecture.py checks this.
"""
