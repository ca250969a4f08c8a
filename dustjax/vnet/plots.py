"""The V-net's figures: the paper evaluation's (Chen, Qin & Li figs. 7-9 and a slice of a test
cube) and the apply pipeline's (slices, face-on map, consistency, truth vs prediction, edge
effect; figs. 10-11, A1-A8). matplotlib is imported on first use (`dustjax.plots.pyplot`).

The evaluation figures are written at 120 dpi, the apply figures at 110, as they always were.
"""

from __future__ import annotations

import math

import numpy as np

from dustjax.geometry import Region
from dustjax.plots import pyplot, save_figure
from dustjax.vnet.apply import ApplyError, MapResult


# ==== the paper evaluation (dustjax.vnet.evaluate) ================================================
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


# ==== the apply pipeline (dustjax.vnet.apply, written by dustjax.vnet.output) =====================
def sun_slab_index(region: Region, axis: int) -> int:
    """Index of the slab whose lower edge is at 0 along `axis` (the paper's "0 to 6 pc" slice),
    or the middle slab when the region does not reach 0."""
    e = region.edges_pc(axis)
    i = int(np.searchsorted(e, 0.0, side="right") - 1)
    return i if 0 <= i < region.shape[axis] else region.shape[axis] // 2


def plot_slices(result: MapResult):
    """XY (Z in the slab at Z = 0) and XZ (Y in the slab at Y = 0) maps, figs. A1-A4, A6."""
    plt = pyplot()
    region = result.region
    panels = [("extinction (mag)", result.extinction, "viridis")]
    if result.truth is not None:
        panels.append(("true density (mag/pc)", result.truth, "magma"))
    panels.append(("predicted density (mag/pc)", result.density, "magma"))
    if result.truth is not None:
        panels.append(("residual pred - true (mag/pc)", result.density - result.truth, "RdBu_r"))
    if result.density_std is not None:
        panels.append(("MC dispersion (mag/pc)", result.density_std, "cividis"))
    iz, iy = sun_slab_index(region, 2), sun_slab_index(region, 1)
    ez, ey = region.edges_pc(2), region.edges_pc(1)
    fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 6.6), squeeze=False)
    ex = region.edges_pc(0)
    for col, (title, cube, cmap) in enumerate(panels):
        cube = np.asarray(cube, np.float64)
        for row, (plane, label, extent) in enumerate(
            [
                (cube[:, :, iz], f"Z in [{ez[iz]:g}, {ez[iz + 1]:g}] pc", (ey[0], ey[-1])),
                (cube[:, iy, :], f"Y in [{ey[iy]:g}, {ey[iy + 1]:g}] pc", (ez[0], ez[-1])),
            ]
        ):
            ax = axes[row, col]
            kw = {}
            if cmap == "RdBu_r":
                vmax = float(np.nanmax(np.abs(cube))) or 1.0
                kw = dict(vmin=-vmax, vmax=vmax)
            im = ax.imshow(
                plane.T,
                origin="lower",
                extent=(ex[0], ex[-1], *extent),
                cmap=cmap,
                aspect="equal",
                **kw,
            )
            fig.colorbar(im, ax=ax, shrink=0.8)
            if result.inside_mask is not None:
                m = result.inside_mask[:, :, iz] if row == 0 else result.inside_mask[:, iy, :]
                ax.contour(
                    np.asarray(m, float).T,
                    levels=[0.5],
                    colors="w",
                    linewidths=0.8,
                    extent=(ex[0], ex[-1], *extent),
                    origin="lower",
                )
            ax.set_title(f"{title}\n{label}", fontsize=8)
            ax.set_xlabel("X (pc)")
            ax.set_ylabel("Y (pc)" if row == 0 else "Z (pc)")
    fig.suptitle(f"{region}", fontsize=9)
    fig.tight_layout()
    return fig


def face_on_map(density, region: Region, z_max_pc: float = 400.0) -> np.ndarray:
    """Fig. A5: sum over the cells with |Z_centre| < z_max of density x cell height (mag):
    the extinction through the slab seen from above the Galactic plane, ``(nx, ny)``."""
    zc = region.centres_pc(2)
    sel = np.abs(zc) < z_max_pc
    if not sel.any():
        raise ApplyError(f"no cell of {region} has |Z| < {z_max_pc} pc")
    return np.asarray(density, np.float64)[:, :, sel].sum(axis=2) * region.cell_size_pc[2]


def plot_face_on(result: MapResult, z_max_pc: float = 400.0):
    """Fig. A5: face-on map with Galactic longitude lines and distance circles around the Sun."""
    plt = pyplot()
    region = result.region
    try:
        image = face_on_map(result.density, region, z_max_pc)
    except ApplyError:
        return None
    ex, ey = region.edges_pc(0), region.edges_pc(1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(image.T, origin="lower", extent=(ex[0], ex[-1], ey[0], ey[-1]), cmap="magma")
    fig.colorbar(im, ax=ax, label=f"sum of density x dZ over |Z| < {z_max_pc:g} pc (mag)")
    reach = float(np.max(np.abs([ex[0], ex[-1], ey[0], ey[-1]])) * math.sqrt(2))
    # Longitude lines every 45 deg from the Sun (the paper draws 135, 180 and 225 deg for LR).
    for lon in range(0, 360, 45):
        lr = math.radians(lon)
        ax.plot([0, reach * math.cos(lr)], [0, reach * math.sin(lr)], "w-", lw=0.7, alpha=0.8)
        tx, ty = 0.9 * reach * math.cos(lr), 0.9 * reach * math.sin(lr)
        if ex[0] <= tx <= ex[-1] and ey[0] <= ty <= ey[-1]:
            ax.text(tx, ty, f"{lon}°", color="w", fontsize=7)
    # Distance circles at round steps (1 and 2 kpc for LR).
    extent = max(ex[-1] - ex[0], ey[-1] - ey[0])
    step = 10 ** math.floor(math.log10(extent / 2))
    if extent / step > 4:
        step *= 2 if extent / step < 10 else 5
    for r in np.arange(step, reach + step, step):
        t = np.linspace(0, 2 * np.pi, 361)
        ax.plot(r * np.cos(t), r * np.sin(t), "w--", lw=0.6, alpha=0.7)
    ax.plot([0], [0], "c*", ms=8)
    ax.set_xlim(ex[0], ex[-1])
    ax.set_ylim(ey[0], ey[-1])
    ax.set_xlabel("X (pc)")
    ax.set_ylabel("Y (pc)")
    ax.set_title(f"face-on, |Z| < {z_max_pc:g} pc; circles every {step:g} pc", fontsize=9)
    return fig


def plot_consistency(result: MapResult):
    """Fig. 11: catalogue E against E_rho integrated from the predicted density."""
    if result.star_e_rho is None:
        return None
    plt = pyplot()
    e, e_rho = result.star_extinction, result.star_e_rho
    fig, ax = plt.subplots(figsize=(5, 4.5))
    hi = float(np.percentile(np.concatenate([e, e_rho]), 99.9))
    if len(e) > 5000:
        h = ax.hexbin(e, e_rho, gridsize=80, extent=(0, hi, 0, hi), bins="log", mincnt=1)
        fig.colorbar(h, ax=ax, label="stars")
    else:
        ax.scatter(e, e_rho, s=3, alpha=0.5)
    ax.plot([0, hi], [0, hi], "b--", lw=1)
    c = result.summary.get("consistency", {})
    ax.set_title(
        f"median E_rho - E = {c.get('median_difference_mag', np.nan):.3f} mag, "
        f"spread {c.get('spread_difference_mag', np.nan):.3f}",
        fontsize=9,
    )
    ax.set_xlabel("E (catalogue, mag)")
    ax.set_ylabel("E_rho (integrated map, mag)")
    return fig


def plot_truth_vs_prediction(result: MapResult):
    """Fig. 10: predicted against true density per cell."""
    if result.truth is None:
        return None
    plt = pyplot()
    t, p = result.truth.reshape(-1), result.density.reshape(-1)
    if result.inside_mask is not None:
        t, p = result.truth[result.inside_mask], result.density[result.inside_mask]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    hi = float(max(t.max(), p.max())) or 1.0
    ax.hexbin(t, p, gridsize=70, extent=(0, hi, 0, hi), bins="log", mincnt=1)
    ax.plot([0, hi], [0, hi], "b--", lw=1)
    r = result.summary.get("residual_vs_truth", {})
    ax.set_title(
        f"median {r.get('median', np.nan):.2e}, dispersion {r.get('dispersion', np.nan):.2e}",
        fontsize=9,
    )
    ax.set_xlabel("true density (mag/pc)")
    ax.set_ylabel("predicted density (mag/pc)")
    return fig


def plot_edge_effect(result: MapResult):
    """Fig. A8 companion: residual RMS inside the sub-region against depth from its edge."""
    profile = result.summary.get("edge_profile")
    if not profile:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(profile["depth_pc"], profile["rms"], "o-")
    ax.set_xlabel("depth inside the sub-region (pc)")
    ax.set_ylabel("RMS of pred - true (mag/pc)")
    ax.set_title("edge effect of the random fill (appendix A)", fontsize=9)
    return fig
