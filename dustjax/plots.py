"""Shared figure helpers: `pyplot()` and `save_figure()`, used by every method's plots.

matplotlib is imported inside `pyplot()` with the non-interactive Agg backend, so importing this
module costs nothing and plotting works on headless machines. `save_figure` writes atomically
(`dustjax.io.atomic_path`) and closes the figure.

`loss_curve` (the training engine's, Chen, Qin & Li fig. 6) is drawn here too; each method's own
figures live with it (`dustjax.vnet.plots`, `dustjax.gp.plots`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dustjax.io import atomic_path


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110, **kwargs) -> Path:
    """Write `fig` as a PNG atomically (a temporary file, then a rename) and close it.

    Keyword arguments go to `fig.savefig` (`bbox_inches` defaults to "tight"). Returns the path.
    """
    path = Path(path)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **kwargs)
    pyplot().close(fig)
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
