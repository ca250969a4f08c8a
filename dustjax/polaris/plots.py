"""The POLARIS figures: a simulated cloud (figs. 5-7), validation examples (fig. 8), diagnostics
(figs. 10-13 analogues) and a predicted map (appendix D).

matplotlib through `dustjax.plots` (Agg backend, imported lazily; atomic writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dustjax.plots import pyplot, save_figure
from dustjax.polaris.metrics import mse, residuals_per_bin


def plot_examples(arrays, path, num: int = 4, title: str = "") -> None:
    """Fig. 8 analogue: column density, true, predicted, reference and error per crop."""
    plt = pyplot()

    val_y = arrays["val_y"]
    num = min(num, len(val_y))
    order = np.argsort(val_y.mean(axis=(1, 2)))  # from diffuse to dense crops
    picks = order[np.linspace(0, len(order) - 1, num).astype(int)]
    rows = [("log10 N [cm$^{-2}$]", arrays["val_x"], "cividis"),
            ("true log10 n", val_y, "magma"), ("U-Net log10 n", arrays["pred"], "magma"),
            ("reference log10 n", arrays["ref"], "magma"),
            ("U-Net - true [dex]", arrays["pred"] - val_y, "RdBu_r")]  # fmt: skip
    fig, axes = plt.subplots(len(rows), num, figsize=(2.6 * num, 2.4 * len(rows)), squeeze=False)
    for j, i in enumerate(picks):
        lo, hi = np.percentile(val_y[i], [1, 99.5])
        for r, (label, data, cmap) in enumerate(rows):
            ax = axes[r, j]
            if cmap == "RdBu_r":
                im = ax.imshow(data[i], cmap=cmap, vmin=-0.5, vmax=0.5, origin="lower")
            elif r == 0:
                im = ax.imshow(data[i], cmap=cmap, origin="lower")
            else:
                im = ax.imshow(data[i], cmap=cmap, vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title or "validation crops: prediction vs truth (fig. 8)")
    save_figure(fig, path)


def plot_diagnostics(metrics, arrays, out_dir, title: str = "") -> list[str]:
    """Figs. 10-13 analogues: correlation, residuals per bin, spatial errors, accuracy(sigma),
    and the residual correction of appendix C. Returns the written file names."""
    from matplotlib.colors import LogNorm

    plt = pyplot()

    out_dir = Path(out_dir)
    val_y, pred, ref = arrays["val_y"], arrays["pred"], arrays["ref"]
    written = []

    # Fig. 10: correlation of prediction and truth.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    lo, hi = np.percentile(val_y, [0.1, 99.9])
    for ax, p, name in ((axes[0], pred, "U-Net"), (axes[1], ref, "pointwise reference")):
        ax.hist2d(val_y.ravel(), p.ravel(), bins=120, range=[[lo, hi], [lo, hi]], cmin=1,
                  norm=LogNorm(), cmap="viridis")  # fmt: skip
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("true log10 n [cm$^{-3}$]")
        ax.set_ylabel("predicted log10 n")
        ax.set_title(f"{name}: MSE {mse(p, val_y):.4f}")
    fig.suptitle(title or "prediction correlation (fig. 10)")
    save_figure(fig, out_dir / "correlation.png")
    written.append("correlation.png")

    # Fig. 11: residuals per density bin.
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for key, colour, name in (("residuals_model", "C0", "U-Net"),
                              ("residuals_reference", "C1", "reference")):  # fmt: skip
        r = metrics[key]
        x = r["bin_centres"]
        ax.fill_between(x, r["p16"], r["p84"], color=colour, alpha=0.25)
        ax.plot(x, r["mean"], color=colour, label=f"{name}: mean, 16-84%")
        ax.plot(x, r["min"], color=colour, lw=0.6, ls=":")
        ax.plot(x, r["max"], color=colour, lw=0.6, ls=":")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("true log10 n [cm$^{-3}$]")
    ax.set_ylabel("residual pred - true [dex]")
    ax.legend()
    ax.set_title("residuals per density bin (fig. 11); dotted: min/max")
    save_figure(fig, out_dir / "residuals.png")
    written.append("residuals.png")

    # Fig. 12: spatial error maps (mean and rms error over the validation crops).
    err = pred - val_y
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, data, name, cmap in ((axes[0], err.mean(0), "mean error [dex]", "RdBu_r"),
                                 (axes[1], np.sqrt((err**2).mean(0)), "rms error [dex]",
                                  "viridis"),
                                 (axes[2], err[np.argmax((err**2).mean((1, 2)))],
                                  "worst crop error [dex]", "RdBu_r")):  # fmt: skip
        vmax = np.abs(data).max() if cmap == "RdBu_r" else None
        vmin = -vmax if vmax is not None else None
        im = ax.imshow(data, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax)
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("U-Net validation spatial errors (fig. 12)")
    save_figure(fig, out_dir / "spatial_errors.png")
    written.append("spatial_errors.png")

    # Fig. 13: accuracy(sigma) with the spread over images.
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, colour, name in (("accuracy_model", "C0", "U-Net"),
                              ("accuracy_reference", "C1", "reference")):  # fmt: skip
        a = metrics[key]
        ax.plot(a["sigma"], a["mean"], "o-", color=colour, label=name)
        ax.fill_between(a["sigma"], a["mean"] - a["std"], np.minimum(a["mean"] + a["std"], 1),
                        color=colour, alpha=0.2)  # fmt: skip
    ax.set_xlabel(r"$\sigma$ [dex]")
    ax.set_ylabel("accuracy (eqs. 5-6)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title("accuracy; band: std over validation images (fig. 13)")
    save_figure(fig, out_dir / "accuracy.png")
    written.append("accuracy.png")

    # Appendix C: residual baseline and its effect on the held-out half.
    half = arrays["half"]
    rc = metrics["residual_correction"]
    base = rc["baseline_fitted_on_all_validation"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sample = np.random.default_rng(0).choice(pred.size, min(pred.size, 20000), replace=False)
    axes[0].scatter(pred.ravel()[sample], (pred - val_y).ravel()[sample], s=1, alpha=0.2)
    axes[0].plot(base["knots_pred"], base["baseline"], "r-", label="baseline (moving average)")
    axes[0].set_xlabel("predicted log10 n")
    axes[0].set_ylabel("residual [dex]")
    axes[0].legend()
    edges = np.linspace(val_y.min(), val_y.max() + 1e-9, 25)
    before = residuals_per_bin(pred[half:], val_y[half:], edges)
    after = residuals_per_bin(arrays["corrected"], val_y[half:], edges)
    axes[1].plot(before["bin_centres"], before["mean"], label="before")
    axes[1].plot(after["bin_centres"], after["mean"], label="after correction")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_xlabel("true log10 n")
    axes[1].set_ylabel("mean residual [dex]")
    axes[1].legend()
    axes[1].set_title(
        f"held-out half: MSE {rc['val_mse_second_half_before']:.4f} -> "
        f"{rc['val_mse_second_half_after']:.4f}"
    )
    fig.suptitle("residual correction (appendix C, figs. 47-48)")
    save_figure(fig, out_dir / "residual_correction.png")
    written.append("residual_correction.png")
    return written


def plot_map(column, density, wcs, path, target) -> None:
    """The observed column density map beside the predicted density map (appendix D), on the
    map's celestial WCS."""
    plt = pyplot()
    fig = plt.figure(figsize=(12, 5))
    for i, (data, label, cmap) in enumerate(
        (
            (column, "log10 N_H [cm$^{-2}$]", "cividis"),
            (density, f"log10 {target} n [cm$^{{-3}}$]", "magma"),
        )  # fmt: skip
    ):
        ax = fig.add_subplot(1, 2, i + 1, projection=wcs)
        with np.errstate(invalid="ignore", divide="ignore"):
            im = ax.imshow(np.log10(data), origin="lower", cmap=cmap)
        fig.colorbar(im, ax=ax, label=label, fraction=0.046)
    save_figure(fig, path)


def preview_cloud(data_config, out, seed: int = 0) -> dict:
    """One simulated cloud of `data_config` (figs. 5-7): N along x, y, z; <n>_M, <n>_V and max n
    along z; the N - <n>_M correlation and a dense and a diffuse accepted crop. Writes `out`
    (PNG); returns summary numbers."""
    import jax
    from matplotlib.colors import LogNorm

    from dustjax.polaris import crops as pcrops
    from dustjax.polaris import data as pdata
    from dustjax.polaris import projection
    from dustjax.sims import clouds

    plt = pyplot()

    grid = pdata.grid_from_config(data_config)
    k_params, k_cube = jax.random.split(jax.random.key(seed))
    params = pdata.param_sampler_from_config(data_config)(k_params)
    density = np.asarray(clouds.simulate_cloud(k_cube, grid, params))
    maps = [
        {k: np.asarray(v) for k, v in projection.project(density, a, grid.cell_size_pc).items()}
        for a in range(3)
    ]
    extent = [0, grid.box_size_pc, 0, grid.box_size_pc]
    fig, axes = plt.subplots(3, 3, figsize=(14, 13))
    for a, name in enumerate("xyz"):
        im = axes[0, a].imshow(np.log10(maps[a][projection.COLUMN]).T, origin="lower",
                               extent=extent, cmap="cividis")  # fmt: skip
        axes[0, a].set_title(f"log10 N along {name} [cm$^{{-2}}$]")
        fig.colorbar(im, ax=axes[0, a], fraction=0.046)
    for i, (key, label) in enumerate(
        (
            ("density_mass_weighted", "<n>_M"),
            ("density_volume_weighted", "<n>_V = N/L"),
            ("density_max", "max n"),
        )  # fmt: skip
    ):
        im = axes[1, i].imshow(np.log10(maps[2][key]).T, origin="lower", extent=extent,
                               cmap="magma")  # fmt: skip
        axes[1, i].set_title(f"log10 {label} along z [cm$^{{-3}}$]")
        fig.colorbar(im, ax=axes[1, i], fraction=0.046)
    for ax in axes[:2].ravel():
        ax.set_xlabel("pc")
    x = np.log10(np.concatenate([m[projection.COLUMN].ravel() for m in maps]))
    y = np.log10(np.concatenate([m["density_mass_weighted"].ravel() for m in maps]))
    axes[2, 0].hist2d(x, y, bins=100, cmin=1, norm=LogNorm())
    axes[2, 0].set_xlabel("log10 N [cm$^{-2}$]")
    axes[2, 0].set_ylabel("log10 <n>_M [cm$^{-3}$]")
    axes[2, 0].set_title("density correlation (fig. 6)")
    selection = pdata.selection_from_config(data_config)
    crops = pcrops.cube_crops(np.random.default_rng(seed), density, grid.cell_size_pc, selection)
    if len(crops[projection.COLUMN]):
        order = np.argsort(crops[projection.COLUMN].mean(axis=(1, 2)))
        for ax, i, label in ((axes[2, 1], order[-1], "dense"), (axes[2, 2], order[0], "diffuse")):
            column = np.log10(crops[projection.COLUMN][i]) - 20.0
            both = np.concatenate([column, np.log10(crops["density_mass_weighted"][i])], axis=1)
            im = ax.imshow(both.T, origin="lower", cmap="magma")
            ax.set_title(f"{label} crop: log10 N - 20 | log10 <n>_M (fig. 7)")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"simulated cloud {grid.n_cells}^3 at {grid.cell_size_pc} pc (seed {seed})")
    save_figure(fig, out, dpi=90)
    return dict(
        density_min=float(density.min()), density_median=float(np.median(density)),
        density_max=float(density.max()), column_median=float(np.median(10**x)),
        accepted_crops=int(len(crops[projection.COLUMN])),
    )  # fmt: skip
