"""Shared figure helpers: `pyplot()` and `save_figure()`, used by every method's plots.

matplotlib is imported inside `pyplot()` with the non-interactive Agg backend, so importing this
module costs nothing and plotting works on headless machines. `save_figure` writes atomically
(`dustjax.io.atomic_path`) and closes the figure.

The V-net paper's figures (Chen, Qin & Li: loss curves, fig. 6; density PDFs, fig. 7; predicted vs
true density, fig. 8; c_r(k), fig. 9) still live below until they move to `dustjax.vnet.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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


# The V-net figures below are drawn at 120 dpi (the others at 110), as they always were.
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


def density_pdfs(
    edges: np.ndarray, pdf_true: np.ndarray, pdf_pred: np.ndarray, path, title: str = ""
) -> None:
    """Fig. 7: probability densities of the true (pink) and predicted (green) density."""
    plt = pyplot()
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(centres, pdf_true, where="mid", color="tab:pink", label=r"true $\rho_t$")
    ax.step(centres, pdf_pred, where="mid", color="tab:green", label=r"predicted $\rho_p$")
    ax.set_xlabel(r"$\rho$ (mag pc$^{-1}$)")
    ax.set_ylabel("probability density")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    save_figure(fig, path, dpi=120)


def density_scatter(edges: np.ndarray, hist_2d: np.ndarray, path, title: str = "") -> None:
    """Fig. 8: predicted against true density as a 2D histogram (log counts), with y = x."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(5, 5))
    counts = np.where(hist_2d > 0, hist_2d, np.nan)
    mesh = ax.pcolormesh(edges, edges, counts.T, norm=LogNorm(), cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label="cells")
    ax.plot([edges[0], edges[-1]], [edges[0], edges[-1]], "k--", lw=1)
    ax.set_xlabel(r"true $\rho_t$ (mag pc$^{-1}$)")
    ax.set_ylabel(r"predicted $\rho_p$ (mag pc$^{-1}$)")
    ax.set_title(title)
    save_figure(fig, path, dpi=120)


def cross_correlation(
    k: np.ndarray,
    c_r,
    path,
    title: str = "",
    paper_range: tuple[float, float] | None = None,
    threshold: float | None = 0.9,
) -> None:
    """Fig. 9: c_r(k) (eq. 4) against k (pc^-1, log axis).

    ``c_r`` is one curve, or a mapping ``label -> curve`` (all on the same `k`) to compare runs.
    """
    plt = pyplot()
    curves = dict(c_r) if isinstance(c_r, dict) else {None: c_r}
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        if np.shape(values) != np.shape(k):
            raise ValueError(
                f"c_r curve {label or ''} has shape {np.shape(values)}, k has {np.shape(k)}"
            )
        ax.plot(k, values, "o-", ms=3, label=label)
    if threshold is not None:
        ax.axhline(threshold, color="0.5", ls="--", lw=1)
    if paper_range is not None:
        ax.axvspan(*paper_range, color="0.9", zorder=0, label="paper's quoted range")
    if paper_range is not None or len(curves) > 1:
        ax.legend(loc="lower left")
    ax.set_xscale("log")
    ax.set_xlabel(r"$k$ (pc$^{-1}$)")
    ax.set_ylabel(r"$c_r(k)$")
    ax.set_title(title)
    save_figure(fig, path, dpi=120)


def slices(true: np.ndarray, pred: np.ndarray, extinction: np.ndarray, path, title="") -> None:
    """Mid-plane XY slices of one test cube: extinction (mag), true and predicted density
    (mag/pc), and their difference."""
    plt = pyplot()
    z = true.shape[2] // 2
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), layout="constrained")
    vmax = float(max(true[:, :, z].max(), pred[:, :, z].max()))
    panels = [
        (extinction[:, :, z], "extinction E (mag)", "magma", None),
        (true[:, :, z], r"true $\rho_t$ (mag/pc)", "viridis", (0, vmax)),
        (pred[:, :, z], r"predicted $\rho_p$ (mag/pc)", "viridis", (0, vmax)),
        (pred[:, :, z] - true[:, :, z], r"$\rho_p - \rho_t$ (mag/pc)", "RdBu_r", None),
    ]
    for ax, (img, label, cmap, lims) in zip(axes, panels, strict=True):
        if label.startswith(r"$\rho_p -"):
            m = float(np.abs(img).max()) or 1.0
            lims = (-m, m)
        im = ax.imshow(img.T, origin="lower", cmap=cmap, vmin=None if lims is None else lims[0],
                       vmax=None if lims is None else lims[1])  # fmt: skip
        ax.set_title(label)
        ax.set_xlabel("X cell")
        ax.set_ylabel("Y cell")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    save_figure(fig, path, dpi=120)
