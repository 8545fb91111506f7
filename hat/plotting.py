"""matplotlib set up once for every plot the project writes: no display (Agg), quiet logger, atomic PNG save."""
from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, with matplotlib's logger at WARNING (fairseq's imports leave the root
    logger at DEBUG, which makes matplotlib list every font it looks at)."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` atomically and close it."""
    from hat.io import atomic_output

    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
