r"""Sub-cell structure of the real SR cube against the sky simulator at ``subcell_factor`` F.

For a fine density cube and its blocks of F^3 cells (the region's cells):

- ``log_scatter``: the std over a block's F^3 sub-cells of log10(rho_fine / block mean), averaged
  over the blocks whose mean exceeds ``--min_density`` (mag/pc) and whose sub-cells are all > 0
  (Bayestar19 holds exact zeros south of declination -30 deg; their count is reported);
- ``relative_scatter``: the std over a block's sub-cells over the block mean, averaged over all
  the blocks above ``--min_density`` (zeros included);
- ``subcell_variance_fraction``: the fraction of rho_fine's variance that lies within the
  blocks, sum (rho - block mean)^2 / sum (rho - mean)^2 (0 for a map-grid cube).

The real cube must be on the fine grid of the region (SR: 64^3 cells of 3 pc over the SR box,
as the shared Bayestar19 SR cube is). Usage (CPU, ~20 s):

    python -m tools.subcell_stats \
        --real=/work/main/.device_carry/real/bayestar19_SR_anticentre.npy \
        --region=SR --factor=2 --num_cubes=8 --out=/tmp/subcell_stats.json
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

log = logging.getLogger("subcell_stats")


def block_stats(fine, factor: int, min_density: float = 1e-4) -> dict:
    """``log_scatter``, ``subcell_variance_fraction`` and the block counts of one fine cube."""
    a = np.asarray(fine, np.float64)
    nx, ny, nz = (n // factor for n in a.shape)
    blocks = a.reshape(nx, factor, ny, factor, nz, factor).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(nx * ny * nz, factor**3)
    mean = blocks.mean(axis=1)
    total = float(np.sum((a - a.mean()) ** 2))
    within = float(np.sum((blocks - mean[:, None]) ** 2))
    dense = mean > min_density
    positive = np.all(blocks > 0, axis=1)
    use = dense & positive
    logs = np.log10(blocks[use] / mean[use, None])
    scatter = logs.std(axis=1)
    relative = blocks[dense].std(axis=1) / mean[dense]
    return dict(
        log_scatter=float(scatter.mean()) if use.any() else float("nan"),
        log_scatter_median=float(np.median(scatter)) if use.any() else float("nan"),
        relative_scatter=float(relative.mean()) if dense.any() else float("nan"),
        subcell_variance_fraction=within / total if total > 0 else float("nan"),
        blocks_used=int(use.sum()),
        blocks_dense_with_zeros=int((dense & ~positive).sum()),
        blocks=int(mean.size),
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="the real cube on the fine grid (.npy or FITS)")
    p.add_argument("--region", default="SR")
    p.add_argument("--factor", type=int, default=2)
    p.add_argument("--num_cubes", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min_density", type=float, default=1e-4, help="mag/pc")
    p.add_argument("--out", default="", help="output JSON (optional)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import jax

    from dustjax import io as dio
    from dustjax.geometry import Region
    from dustjax.vnet import observe as ob
    from dustjax.vnet import realsky

    region = Region.named(args.region)
    fine = ob.fine_region(region, args.factor)
    real = realsky.load_cube(args.real)
    for a in range(3):
        if not np.allclose(real.edges[a], fine.edges_pc(a), atol=1e-3):
            raise ValueError(f"the real cube's axis {a} is not the {fine.shape} grid of {region}")
    out = dict(region=args.region, factor=args.factor, min_density=args.min_density,
               real=block_stats(real.density, args.factor, args.min_density))  # fmt: skip
    simulate = ob.simulate_subcell_fn(region, "sky", None, args.factor)
    sims_ = []
    for i in range(args.num_cubes):
        dense, _ = simulate(jax.random.split(jax.random.key(args.seed + i), 1))
        sims_.append(block_stats(np.asarray(dense[0]), args.factor, args.min_density))
        log.info("sim %d: %s", i, sims_[-1])
    out["simulated"] = sims_
    for k in ("log_scatter", "relative_scatter", "subcell_variance_fraction"):
        v = np.array([s[k] for s in sims_], np.float64)
        out[f"simulated_{k}_median"] = float(np.nanmedian(v))
        out[f"simulated_{k}_range"] = [float(np.nanmin(v)), float(np.nanmax(v))]
    log.info("real: %s", out["real"])
    log.info("simulated medians: log_scatter %.3f, variance fraction %.3f",
             out["simulated_log_scatter_median"],
             out["simulated_subcell_variance_fraction_median"])  # fmt: skip
    if args.out:
        dio.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
