r"""Draw one simulated cube as the paper's figs. 1-4.

    dustjax-preview --data=data/SR --out=sr_preview.png [--split=test --index=0]
    dustjax-preview --region=LR --out=lr_preview.png      # simulate one, no dataset

Top row: density (mag/pc) in the XY plane (the Z layer just above the plane) and the XZ plane (the
Y layer just above Y = 0), as in figs. 1 and 3. Middle row: the same slices of extinction (mag).
Bottom row: extinction of the cells seen from the Sun in Galactic (l, b), for near and far cells
(fig. 2: SR < 100 pc and > 150 pc; fig. 4: LR < 800 pc and > 1500 pc).
"""

from __future__ import annotations

import sys

import numpy as np
from absl import flags

from dustjax.geometry import Region, RegionError
from dustjax.io import DatasetError, OutputError, read_dataset_info

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags, defined only when run as a program (importing defines none)."""
    flags.DEFINE_string("data", None, "Dataset directory written by data_gen.make_dataset.")
    flags.DEFINE_string("region", None, "Without --data: simulate one cube of this region.")
    flags.DEFINE_string("split", "test", "Split to draw from.")
    flags.DEFINE_integer("index", 0, "Which example of the split.")
    flags.DEFINE_integer("seed", 0, "Seed when simulating (no --data).")
    flags.DEFINE_string("out", "preview.png", "Output PNG.")


# Near / far distance cuts of the paper's figs. 2 and 4 (pc).
DISTANCE_CUTS_PC = {"SR": (100.0, 150.0), "LR": (800.0, 1500.0)}


def load_example(data_dir: str, split: str, index: int):
    from dustjax.io import tfrecord_dataset

    info = read_dataset_info(data_dir)
    count = info["splits"].get(split)
    if count is None:
        raise DatasetError(f"split {split!r} not in {data_dir}; have {sorted(info['splits'])}")
    if not 0 <= index < count:
        raise DatasetError(f"--index={index} outside the {count} examples of split {split!r}")
    example = next(iter(tfrecord_dataset(data_dir, split).skip(index)))
    region = Region.from_dict(info["metadata"]["region"])
    return region, np.asarray(example["density"]), np.asarray(example["extinction"])


def draw_preview(region: Region, density, extinction, out: str, title: str = "") -> None:
    """Write the figs. 1-4 panels for one (density, extinction) pair to `out` (PNG)."""
    from dustjax.geometry import cartesian_to_galactic
    from dustjax.plots import pyplot, save_figure

    plt = pyplot()

    iz = int(np.searchsorted(region.edges_pc(2), 0.0, side="right") - 1)
    iy = int(np.searchsorted(region.edges_pc(1), 0.0, side="right") - 1)
    iz, iy = np.clip(iz, 0, region.shape[2] - 1), np.clip(iy, 0, region.shape[1] - 1)
    ex, ey, ez = (region.edges_pc(a) for a in range(3))
    fig, axes = plt.subplots(3, 2, figsize=(10, 13), constrained_layout=True)
    panels = [
        (density, "density (mag/pc)", "viridis"),
        (extinction, "extinction E (mag)", "magma"),
    ]
    for row, (cube, label, cmap) in enumerate(panels):
        for col, (plane, yedges, ylab, zlo) in enumerate(
            [
                (cube[:, :, iz], ey, "Y (pc)", f"Z in [{ez[iz]:g}, {ez[iz + 1]:g}] pc"),
                (cube[:, iy, :], ez, "Z (pc)", f"Y in [{ey[iy]:g}, {ey[iy + 1]:g}] pc"),
            ]
        ):
            ax = axes[row, col]
            mesh = ax.pcolormesh(ex, yedges, plane.T, cmap=cmap, shading="flat")
            ax.set_xlabel("X (pc)")
            ax.set_ylabel(ylab)
            ax.set_title(f"{label}, {zlo}")
            ax.set_aspect("equal")
            fig.colorbar(mesh, ax=ax, label=label)
    xyz = region.cell_centres_pc().reshape(-1, 3)
    l_deg, b_deg, dist = (np.asarray(v) for v in cartesian_to_galactic(xyz))
    near, far = DISTANCE_CUTS_PC.get(
        region.name.split("@")[0], (0.45 * dist.max(), 0.7 * dist.max())
    )
    values = extinction.reshape(-1)
    vmax = np.quantile(values, 0.99)
    for col, (mask, what) in enumerate(
        [(dist < near, f"cells nearer than {near:g} pc"), (dist > far, f"cells beyond {far:g} pc")]
    ):
        ax = axes[2, col]
        sc = ax.scatter(
            l_deg[mask], b_deg[mask], c=values[mask], s=4, cmap="magma", vmin=0, vmax=vmax
        )
        ax.set_xlabel("Galactic longitude l (deg)")
        ax.set_ylabel("Galactic latitude b (deg)")
        ax.set_title(f"extinction in (l, b), {what}")
        ax.invert_xaxis()
        fig.colorbar(sc, ax=ax, label="E (mag)")
    fig.suptitle(title or str(region))
    save_figure(fig, out, dpi=90, bbox_inches=None)  # constrained layout, no tight crop


def main(argv):
    del argv
    from dustjax.runtime import configure_xla, quiet_library_logs

    configure_xla()  # before anything starts JAX's backend
    quiet_library_logs()
    try:
        if FLAGS.data:
            region, density, extinction = load_example(FLAGS.data, FLAGS.split, FLAGS.index)
            title = f"{region.name}: {FLAGS.data} [{FLAGS.split} #{FLAGS.index}]"
        elif FLAGS.region:
            import jax

            from dustjax.sims import simulate_pair

            region = Region.named(FLAGS.region)
            density, extinction = (
                np.asarray(a) for a in simulate_pair(jax.random.key(FLAGS.seed), region)
            )
            title = f"{region.name}: simulated, seed {FLAGS.seed}"
        else:
            raise ValueError("give --data=DIR (a dataset) or --region=SR|LR (simulate one)")
        draw_preview(region, density, extinction, FLAGS.out, title)
    except (RegionError, ValueError, DatasetError, OutputError) as err:
        print(f"preview: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])
