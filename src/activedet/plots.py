"""PNG plots without a display: one place that picks matplotlib's Agg backend and saves figures."""

from __future__ import annotations

from pathlib import Path


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the Agg backend (headless machines, pipeline pods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_png(fig, path: str | Path, *, dpi: int = 100) -> Path:
    """Lay out, write ``fig`` to ``path`` as PNG and release it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
