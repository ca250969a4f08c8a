"""The figures of Dharmawardena et al. (2022) for a GP fit: figs. 2-5 and B.1.

Every function takes plain numpy arrays and writes one PNG atomically (matplotlib's Agg backend,
imported lazily). Maps are drawn with l increasing to the left, as on the sky.
"""

from __future__ import annotations

import numpy as np

from dustjax.gp.grid import LBDGrid
from dustjax.plots import pyplot, save_figure


def plot_elbo(history, path):
    """Fig. 2: the ELBO against iteration (symmetric-log axis: the ELBO may change sign)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    h = np.asarray(history, np.float64)
    ax.plot(np.arange(1, len(h) + 1), h, lw=0.8)
    ax.set_yscale("symlog", linthresh=max(1.0, 1e-3 * np.nanmax(np.abs(h))) if len(h) else 1.0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("ELBO (nats)")
    ax.set_title("ELBO (fig. 2)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_star_extinctions(predicted, reference, path, *, reference_label="true"):
    """Fig. 3: histograms of reference and predicted star extinctions, and of the residuals."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6))
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    bins = np.linspace(
        min(reference.min(), predicted.min()), max(reference.max(), predicted.max()), 60
    )
    top.hist(reference, bins, histtype="step", label=f"{reference_label} extinction")
    top.hist(predicted, bins, histtype="step", label="predicted extinction (median)")
    top.set_xlabel("A (mag)")
    top.set_ylabel("stars")
    top.legend()
    resid = predicted - reference
    bottom.hist(resid, 80, histtype="step", color="k")
    bottom.axvline(0.0, color="r", lw=0.8)
    bottom.set_xlabel(f"predicted - {reference_label} (mag)")
    bottom.set_ylabel("stars")
    frac = float(np.mean(resid < 0))
    bottom.set_title(f"{100 * frac:.1f}% of stars below the {reference_label} value")
    fig.suptitle("Star extinctions (fig. 3)")
    fig.tight_layout()
    return save_figure(fig, path)


def _extent(grid: LBDGrid):
    l0, l1 = grid.l_range_deg
    b0, b1 = grid.b_range_deg
    return (l1, l0, b0, b1)  # l increasing to the left


def plot_extinction_maps(grid: LBDGrid, predicted, path, *, true=None):
    """Fig. 4: total extinction to d_max, ``(nl, nb)`` arrays: truth, prediction, residual."""
    plt = pyplot()
    panels = [("predicted", predicted)]
    if true is not None:
        panels = [
            ("simulated", true),
            ("predicted", predicted),
            ("predicted - simulated", predicted - true),
        ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.6 * len(panels)), squeeze=False)
    vmax = max(float(np.max(p)) for _, p in panels[:2])
    for ax, (name, img) in zip(axes[:, 0], panels, strict=True):
        resid = name.startswith("predicted -")
        lim = float(np.max(np.abs(img))) if resid else None
        im = ax.imshow(
            np.asarray(img).T,
            origin="lower",
            extent=_extent(grid),
            aspect="auto",
            cmap="RdBu_r" if resid else "viridis",
            vmin=-lim if resid else 0.0,
            vmax=lim if resid else vmax,
        )
        ax.set_title(f"{name}: A(d <= {grid.d_range_pc[1]:g} pc)")
        ax.set_xlabel("l (deg)")
        ax.set_ylabel("b (deg)")
        fig.colorbar(im, ax=ax, label="mag")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_density_slices(grid: LBDGrid, predicted, distances_pc, path, *, true=None):
    """Fig. 5: density at chosen distances; rows truth / prediction / residual.

    ``predicted`` and ``true`` are ``(nl, nb, nd_total)`` cubes (mag/pc) on ``grid``.
    """
    plt = pyplot()
    d_centres = grid.d_centres_pc()
    idx = [int(np.argmin(np.abs(d_centres - d))) for d in distances_pc]
    rows = [("predicted", predicted)]
    if true is not None:
        rows = [("simulated", true), ("predicted", predicted), ("pred - sim", predicted - true)]
    fig, axes = plt.subplots(
        len(rows),
        len(idx),
        figsize=(3.2 * len(idx), 2.4 * len(rows)),
        squeeze=False,
        layout="constrained",
    )
    vmax = max(float(np.max(r[..., idx])) for _, r in rows[:2])
    for r, (name, cube) in enumerate(rows):
        resid = name.startswith("pred -")
        lim = float(np.max(np.abs(cube[..., idx]))) if resid else None
        for c, k in enumerate(idx):
            ax = axes[r, c]
            im = ax.imshow(
                cube[:, :, k].T,
                origin="lower",
                extent=_extent(grid),
                aspect="auto",
                cmap="RdBu_r" if resid else "magma",
                vmin=-lim if resid else 0.0,
                vmax=lim if resid else vmax,
            )
            ax.set_title(f"{name}, d = {d_centres[k]:.0f} pc", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("l (deg)", fontsize=8)
            if c == 0:
                ax.set_ylabel("b (deg)", fontsize=8)
        fig.colorbar(im, ax=axes[r, :].tolist(), label="mag/pc")
    fig.suptitle("Density slices (fig. 5)")
    return save_figure(fig, path)


def plot_los_profiles(
    grid: LBDGrid,
    density_pct,
    extinction_pct,
    sightlines,
    path,
    *,
    true_density=None,
    true_extinction=None,
):
    """Fig. B.1: density and extinction against distance with 16-84% bands for (l, b) pairs.

    ``density_pct`` / ``extinction_pct`` are ``(3, nl, nb, nd_total)``; truths ``(nl, nb, nd)``.
    """
    plt = pyplot()
    d = grid.d_centres_pc()
    lc, bc = grid.l_centres_deg(), grid.b_centres_deg()
    fig, axes = plt.subplots(2, len(sightlines), figsize=(3.2 * len(sightlines), 5), squeeze=False)
    for c, (lon, lat) in enumerate(sightlines):
        i = int(np.argmin(np.abs(((lc - lon + 180) % 360) - 180)))
        j = int(np.argmin(np.abs(bc - lat)))
        for r, (pct, truth, label) in enumerate(
            (
                (density_pct, true_density, "rho (mag/pc)"),
                (extinction_pct, true_extinction, "A (mag)"),
            )
        ):
            ax = axes[r, c]
            ax.fill_between(d, pct[0, i, j], pct[2, i, j], alpha=0.3, label="16-84%")
            ax.plot(d, pct[1, i, j], label="median")
            if truth is not None:
                ax.plot(d, truth[i, j], "k--", lw=0.8, label="simulated")
            ax.set_xlabel("d (pc)")
            ax.set_ylabel(label)
            ax.set_title(f"l = {lc[i]:.1f}, b = {bc[j]:.1f}", fontsize=8)
        axes[0, 0].legend(fontsize=7)
    fig.suptitle("Lines of sight (fig. B.1)")
    fig.tight_layout()
    return save_figure(fig, path)
