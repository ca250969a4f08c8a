"""Shared figure helpers: `pyplot()` and `save_figure()`, used by every method's plots.

Figures are made with matplotlib's object API (`matplotlib.figure.Figure`), never through pyplot's
state machine: no backend is chosen or switched, so the library draws on headless machines and
leaves a notebook's own backend (and its ``plt.show()``) alone; no figure stays open in pyplot.
matplotlib is imported on first use. `save_figure` writes atomically (`dustjax.io.atomic_path`).

`loss_curve` (the training engine's, Chen, Qin & Li fig. 6) is drawn here too; each method's own
figures live with it (`dustjax.vnet.plots`, `dustjax.gp.plots`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dustjax.io import atomic_path


class _Figures:
    """The figure-making part of pyplot's interface (``subplots``, ``figure``, ``close``) on the
    object API: each call makes a new `matplotlib.figure.Figure` that no backend or pyplot owns."""

    _SUBPLOT_KEYS = frozenset(
        ("sharex", "sharey", "squeeze", "width_ratios", "height_ratios", "subplot_kw")
        + ("gridspec_kw",)
    )

    @staticmethod
    def figure(**kwargs):
        from matplotlib.figure import Figure

        return Figure(**kwargs)

    def subplots(self, nrows: int = 1, ncols: int = 1, **kwargs):
        """``(figure, axes)`` as `matplotlib.pyplot.subplots` returns them."""
        grid_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in self._SUBPLOT_KEYS}
        fig = self.figure(**kwargs)
        return fig, fig.subplots(nrows, ncols, **grid_kw)

    @staticmethod
    def close(fig=None) -> None:
        """Nothing to release: pyplot never held the figure (kept for pyplot-style callers)."""


_FIGURES = _Figures()


def pyplot() -> _Figures:
    """Figure factory with pyplot's ``subplots``/``figure``/``close`` signatures, on the object API
    (no backend switch, nothing registered with pyplot; see the module's docstring)."""
    return _FIGURES


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110, **kwargs) -> Path:
    """Write `fig` as a PNG atomically (a temporary file, then a rename).

    Keyword arguments go to `fig.savefig` (`bbox_inches` defaults to "tight"). Returns the path.
    """
    path = Path(path)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **kwargs)
    return path


# drawn at 120 dpi (the other figures at 110), as it always was
def loss_curve(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Fig. 6: training (blue) and validation (orange) loss (eq. 3) against epoch, log scale."""
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in history], color="tab:blue", label="training")
    ax.plot(epochs, [r["val_loss"] for r in history], color="tab:orange", label="validation")
    best = min(history, key=lambda r: r["val_loss"])
    ax.axvline(best["epoch"], color="0.6", ls=":", lw=1, label=f"best (epoch {best['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss: MSE of normalised density (eq. 3)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    save_figure(fig, path, dpi=120)
