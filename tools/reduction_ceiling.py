r"""How well can a map on a finer grid score on a region's cells? The exact cube, put on the cells
by each `dustjax.vnet.refine.to_region` reduction, scored against the truth (issue 17).

    python -m tools.reduction_ceiling --cube=../shared/data/real/bayestar19_SR_anticentre.fits \
        --region=SR --out=ceiling_sr.json

The real-sky truth is the cube regridded to the region's cells (`dustjax.maps.regrid_nearest`:
a Gaussian of the region's resolution, then the cube cell holding each cell centre). A
fine-grid refinement (`dustjax.vnet.refine.refine_catalog_fine`) estimates the cube on a grid
``factor`` x finer than the region's; its skill is capped by how its reduction treats the exact
cube. The factor is the cube's cells per region cell (it must be a whole number: the fine grid
is the cube's own). Also scored: the Gaussian then block means, and the Gaussian sampled at
each other sub-cell offset (how much the truth changes inside one region cell).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging

import numpy as np

log = logging.getLogger("reduction_ceiling")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.reduction_ceiling",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--cube", required=True, help="the real cube (FITS, or .npy with its header)")
    p.add_argument("--region", default="SR", help="SR, LR or x0,x1,y0,y1,z0,z1 (pc)")
    p.add_argument("--out", default="", help="output JSON (optional)")
    return p.parse_args(argv)


def ceilings(density, region, truth=None) -> dict:
    """The skills (`dustjax.vnet.realsky.scores`) against ``truth`` (default: the regrid of
    ``density``) of the exact ``density`` (the cube on `refine.fine_region` of `region`) put on
    the region's cells by each reduction, by the Gaussian then block means, and by the Gaussian
    sampled at every sub-cell offset (``offset_i_j_k``); ``regrid_matches_truth``: whether the
    regrid of ``density`` is ``truth`` (so the fine grid is the truth's own)."""
    from scipy.ndimage import gaussian_filter

    from dustjax.vnet import realsky, refine

    fine = np.asarray(density, np.float64)
    ratios = {f / n for f, n in zip(fine.shape, region.shape, strict=True)}
    if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
        raise ValueError(f"the cube {fine.shape} is not a whole multiple of the region's cells "
                         f"{region.shape} on every axis")  # fmt: skip
    factor = int(next(iter(ratios)))
    regridded = refine.to_region(fine, region, factor, "regrid")
    truth = regridded if truth is None else np.asarray(truth, np.float32)

    def skill(x):
        return float(realsky.scores(np.asarray(x, np.float32), truth, region)["skill"])

    out = {"reduction_regrid": skill(regridded),
           "reduction_block": skill(refine.to_region(fine, region, factor, "block"))}  # fmt: skip
    sigma = np.sqrt(factor**2 - 1.0) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    smooth = gaussian_filter(fine, sigma, mode="nearest")
    out["gaussian_then_block"] = skill(refine.block_mean(smooth, factor))
    for off in itertools.product(range(factor), repeat=3):
        sub = smooth[off[0] :: factor, off[1] :: factor, off[2] :: factor]
        out["offset_" + "_".join(map(str, off))] = skill(sub)
    matches = bool(np.allclose(regridded, truth, rtol=1e-5, atol=1e-9))
    return dict(factor=factor, **out, regrid_matches_truth=matches)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from dustjax import io as dio
    from dustjax import maps
    from dustjax.vnet import realsky

    region = realsky.parse_region(args.region)
    cube, _ = realsky.fit_to_region(realsky.load_cube(args.cube), region)
    # the cube's cells inside the region: the fine grid whose regrid is the truth
    bounds = zip(cube.edges, region.lower_pc, region.upper_pc, strict=True)
    inside = [(np.asarray(e[:-1]) >= lo - 1e-6) & (np.asarray(e[1:]) <= hi + 1e-6)
              for e, lo, hi in bounds]  # fmt: skip
    density = np.asarray(cube.density)[np.ix_(*inside)]
    # the truth is the whole cube regridded; the fine grid is the cube's own only if its regrid
    # gives the same (regrid_matches_truth)
    res = ceilings(density, region, maps.regrid_nearest(cube, region))
    res.update(cube=str(args.cube), region=region.name,
               command="python -m tools.reduction_ceiling " + " ".join(argv or []))  # fmt: skip
    if args.out:
        dio.write_json(args.out, res)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
