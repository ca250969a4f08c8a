r"""Preview one simulated cloud: column density along 3 axes and the targets (paper figs. 5-7).

    python -m data_gen.preview_clouds --out=clouds_preview.png \
        [--config=experiments/configs/unet_cpu.py] [--seed=0]

Top row: column density N along x, y and z (fig. 5). Middle row, for the projection along z:
<n>_M (eq. 3), <n>_V = N / L (eq. 2) and max n. Bottom row: the N - <n>_M correlation of all
pixels (fig. 6) and a dense and a diffuse accepted crop (fig. 7). Also prints the density range.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this module
    for its library function never collides with the flags of other entry points)."""
    config_flags.DEFINE_config_file(
        "config", "experiments/configs/unet_cpu.py", "U-Net config whose data section is used."
    )
    flags.DEFINE_string("out", "clouds_preview.png", "Output PNG.")
    flags.DEFINE_integer("seed", 0, "Seed of the cube.")


def preview(data_config, out: str, seed: int = 0) -> dict:
    """Draw the preview of one cube of `data_config` into `out`; returns summary numbers."""
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dustjax import io as dio
    from dustjax import polaris
    from dustjax.sims import clouds

    grid = polaris.grid_from_config(data_config)
    k_params, k_cube = jax.random.split(jax.random.key(seed))
    params = polaris.param_sampler_from_config(data_config)(k_params)
    density = np.asarray(clouds.simulate_cloud(k_cube, grid, params))
    maps = [
        {k: np.asarray(v) for k, v in polaris.project(density, a, grid.cell_size_pc).items()}
        for a in range(3)
    ]
    extent = [0, grid.box_size_pc, 0, grid.box_size_pc]
    fig, axes = plt.subplots(3, 3, figsize=(14, 13))
    for a, name in enumerate("xyz"):
        im = axes[0, a].imshow(np.log10(maps[a][polaris.COLUMN]).T, origin="lower",
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
    x = np.log10(np.concatenate([m[polaris.COLUMN].ravel() for m in maps]))
    y = np.log10(np.concatenate([m["density_mass_weighted"].ravel() for m in maps]))
    axes[2, 0].hist2d(x, y, bins=100, cmin=1, norm=matplotlib.colors.LogNorm())
    axes[2, 0].set_xlabel("log10 N [cm$^{-2}$]")
    axes[2, 0].set_ylabel("log10 <n>_M [cm$^{-3}$]")
    axes[2, 0].set_title("density correlation (fig. 6)")
    selection = polaris.selection_from_config(data_config)
    crops = polaris.cube_crops(np.random.default_rng(seed), density, grid.cell_size_pc, selection)
    if len(crops[polaris.COLUMN]):
        order = np.argsort(crops[polaris.COLUMN].mean(axis=(1, 2)))
        for ax, i, label in ((axes[2, 1], order[-1], "dense"), (axes[2, 2], order[0], "diffuse")):
            column = np.log10(crops[polaris.COLUMN][i]) - 20.0
            both = np.concatenate([column, np.log10(crops["density_mass_weighted"][i])], axis=1)
            im = ax.imshow(both.T, origin="lower", cmap="magma")
            ax.set_title(f"{label} crop: log10 N - 20 | log10 <n>_M (fig. 7)")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"simulated cloud {grid.n_cells}^3 at {grid.cell_size_pc} pc (seed {seed})")
    with dio.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)
    return dict(
        density_min=float(density.min()), density_median=float(np.median(density)),
        density_max=float(density.max()), column_median=float(np.median(10**x)),
        accepted_crops=int(len(crops[polaris.COLUMN])),
    )  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    summary = preview(FLAGS.config.data, FLAGS.out, FLAGS.seed)
    for key, value in summary.items():
        print(f"{key:>16}: {value:.4g}")
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
