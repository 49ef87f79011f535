"""How smalllm draws figures: a ``Figure`` on an Agg canvas, never pyplot.

Such a figure holds no global state and opens no window, so a report can be drawn in any process
(at a run's end, in a notebook, in a sweep worker) without ``matplotlib.use`` or ``plt.close``, and
it is freed like any object. Only report code imports this module: training never loads matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """An empty ``width`` x ``height`` inch figure on an Agg canvas, laid out by matplotlib's
    constrained layout (titles, labels and colour bars kept inside it)."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (the format from its suffix) at the figure's dpi; returns ``path``."""
    fig.savefig(path, dpi=fig.dpi)
    return path
