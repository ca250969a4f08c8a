r"""Apply a trained V-net to a star catalogue or a literature cube (thin entry point).

    dustjax-apply --region=SR --catalog=stars.fits --model=workdirs/vnet_sr \
        [--workdir=workdirs/apply_SR] [--columns=extinction=A0,sigma_extinction=e_A0] \
        [--num_redraws=300] [--subregion=-192,-96,-96,96,-96,96]
    dustjax-apply --region=SR --catalog=demo --model=workdirs/vnet_sr  # no download
    dustjax-apply --region=LR --literature_cube=vergely2022_10pc.fits \
        --model=workdirs/vnet_lr
    make apply REGION=SR CATALOG=stars.fits MODEL=workdirs/vnet_sr
    dustjax-apply --region=SR --catalog=stars.fits --method=nnls  # no network

The region's box comes from --region; its cube size from the model (a model trained on SR at
16^3 maps SR at 16^3), unless --shape asks for one, which must then match the model. All logic
lives in `dustjax.vnet` (`output.make_map`); outputs (density.fits, summary.json, PNGs) go to
--workdir.
See docs/apply.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags, logging

FLAGS = flags.FLAGS


#: `dustjax.cli.run` adds the runtime flags (several processes, compilation cache).
USES_RUNTIME_FLAGS = True


def define_flags() -> None:
    """Define the command-line flags (only when run as a program: importing this module never
    collides with another entry point's flags)."""
    from dustjax.vnet.symmetry import GROUPS

    flags.DEFINE_string("region", "SR", "Region box: SR or LR.")
    flags.DEFINE_list("shape", None, "Cells per axis (default: the model's), e.g. 32,32,32.")
    flags.DEFINE_string("catalog", None, "Star catalogue (FITS, CSV, ECSV), or 'demo'.")
    flags.DEFINE_string(
        "literature_cube", None, "A Cartesian density cube (FITS) instead of stars."
    )
    flags.DEFINE_string(
        "model",
        None,
        "Training workdir of the V-net (default: what `make train` made here); "
        "several comma-separated: an ensemble, the mean of their maps (docs/apply.md).",
    )
    flags.DEFINE_enum(
        "method", "vnet", ["vnet", "nnls"],
        "vnet: the trained model in --model; nnls: non-negative least squares through the LOS "
        "operator, no network (dustjax.inversion; the region's cells are 32^3 unless --shape).",
    )  # fmt: skip
    flags.DEFINE_bool(
        "refine", False,
        "Use the V-net's map and band as the prior of a fit to the extinctions (the stars, or the "
        "literature cube's extinctions): dustjax.vnet.refine. Needs a variance head.",
    )  # fmt: skip
    flags.DEFINE_float("refine_floor", 0.01, "--refine on a literature cube: noise floor (mag).")
    flags.DEFINE_float(
        "refine_corr_length", 0.0,
        "--refine on a catalogue: the V-net's errors correlated over this many cells (0: "
        "independent cells; dustjax.vnet.refine.solve_correlated). Chosen on held-out "
        "simulations: 2, with --refine_model_error=auto (docs/validation.md, issue 17).",
    )  # fmt: skip
    flags.DEFINE_string(
        "refine_model_error", "0",
        "--refine on a catalogue: relative model error added to the stars' sigmas (a number), "
        "or 'auto': estimated from the stars' chi^2 (0 when they already fit).",
    )  # fmt: skip
    flags.DEFINE_integer(
        "refine_grid_factor", 1,
        "--refine on a catalogue: fit on a grid this many times finer per axis (the stars place "
        "their dust inside the map's cells; 3 on the real LR catalogue, 2 on SR, docs/apply.md) "
        "and put it on the map's cells by --refine_reduction.",
    )  # fmt: skip
    flags.DEFINE_enum(
        "refine_reduction", "regrid", ["regrid", "block"],
        "--refine_grid_factor > 1: 'regrid' the fine map as dustjax regrids any finer map (a "
        "Gaussian of the map's resolution, then the cell centres; dustjax.maps.regrid_nearest), "
        "or 'block': the block means (the dust sum kept exactly).",
    )  # fmt: skip
    flags.DEFINE_float("nnls_smoothness", None, "NNLS regulariser weight (default: per input).")
    flags.DEFINE_integer("nnls_steps", None, "NNLS accelerated projected-gradient iterations.")
    flags.DEFINE_string("workdir", None, "Output directory (default workdirs/apply_<region>).")
    flags.DEFINE_list("columns", [], "Column names, logical=name, e.g. extinction=A0,l=GLON.")
    flags.DEFINE_enum("coords", "galactic", ["galactic", "cartesian"], "Catalogue positions.")
    flags.DEFINE_string("format", None, "astropy Table format when the extension does not tell.")
    flags.DEFINE_enum("distance_unit", "pc", ["pc", "kpc"], "Unit of unitless distance columns.")
    flags.DEFINE_integer("k", None, "Nearest stars per cell (default: 3 for SR, 30 for LR).")
    flags.DEFINE_integer("num_redraws", 300, "Monte Carlo redraws of the extinctions (0: none).")
    flags.DEFINE_integer("batch_size", 16, "Redraws per device batch.")
    flags.DEFINE_integer("seed", 0, "Random seed (redraws, random fill, demo catalogue).")
    flags.DEFINE_enum("knn_backend", "auto", ["auto", "kdtree", "brute"], "k-nearest search.")
    flags.DEFINE_list("subregion", None, "Sub-box x0,x1,y0,y1,z0,z1 (pc) for appendix A.")
    flags.DEFINE_float("density_scale", None, "Literature cube units to mag/pc (default: BUNIT).")
    flags.DEFINE_integer("demo_stars", 50_000, "Stars in the demo catalogue.")
    flags.DEFINE_enum(
        "symmetry", "none", list(GROUPS),
        "Average the V-net over the region's symmetries: dihedral (8, SR), flip_y (2, LR's "
        "log-normal field), flips (4, LR's Levy flights); one pass each (dustjax.vnet.symmetry).",
    )  # fmt: skip
    flags.DEFINE_bool("write_fits", True, "Write density.fits.")
    flags.DEFINE_bool("plots", True, "Write the PNG figures.")


def main(argv):
    del argv
    from dustjax.cli.runtime_flags import start_runtime

    start_runtime()
    from dustjax.catalog import CatalogError
    from dustjax.maps import MapError
    from dustjax.vnet.apply import ApplyError
    from dustjax.vnet.gridding import GriddingError

    try:
        run()
    except (ApplyError, CatalogError, GriddingError, MapError, OSError) as err:  # OutputError too
        # Bad input: one clear line, no traceback; outputs are written only after success.
        raise SystemExit(f"apply: {err}") from None


def parse_columns(items) -> dict[str, str]:
    """``["extinction=A0", "l=GLON"]`` -> ``{"extinction": "A0", "l": "GLON"}``."""
    from dustjax.vnet.apply import ApplyError

    bad = [item for item in items if "=" not in item or not all(item.split("=", 1))]
    if bad:  # a one-line error (absl prints its whole usage text before a UsageError's line)
        raise ApplyError(
            "--columns takes logical=name pairs, e.g. --columns=extinction=A0,l=GLON; "
            f"got {bad[0]!r}"
        )
    return dict(item.split("=", 1) for item in items)


def run():
    from dustjax.vnet.apply import ApplyError
    from dustjax.vnet.output import make_map

    if (FLAGS.catalog is None) == (FLAGS.literature_cube is None):
        raise ApplyError("give exactly one of --catalog and --literature_cube")
    subregion = None
    if FLAGS.subregion:
        if len(FLAGS.subregion) != 6:
            raise ApplyError("--subregion needs six numbers: x0,x1,y0,y1,z0,z1 (pc)")
        v = [float(x) for x in FLAGS.subregion]
        subregion = ((v[0], v[1]), (v[2], v[3]), (v[4], v[5]))
    outdir = Path(FLAGS.workdir or f"workdirs/apply_{FLAGS.region}")
    files = make_map(
        FLAGS.model,
        FLAGS.region,
        outdir,
        catalog=FLAGS.catalog,
        literature_cube=FLAGS.literature_cube,
        shape=tuple(int(n) for n in FLAGS.shape) if FLAGS.shape else None,
        columns=parse_columns(FLAGS.columns),
        coords=FLAGS.coords,
        format=FLAGS.format,
        distance_unit=FLAGS.distance_unit,
        k=FLAGS.k,
        num_redraws=FLAGS.num_redraws,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        knn_backend=FLAGS.knn_backend,
        subregion=subregion,
        density_scale=FLAGS.density_scale,
        demo_stars=FLAGS.demo_stars,
        symmetry=FLAGS.symmetry,
        write_fits=FLAGS.write_fits,
        plots=FLAGS.plots,
        method=FLAGS.method,
        nnls_smoothness=FLAGS.nnls_smoothness,
        nnls_steps=FLAGS.nnls_steps,
        refine=FLAGS.refine,
        refine_floor=FLAGS.refine_floor,
        refine_corr_length=FLAGS.refine_corr_length,
        refine_model_error=FLAGS.refine_model_error,
        refine_grid_factor=FLAGS.refine_grid_factor,
        refine_reduction=FLAGS.refine_reduction,
    )
    from dustjax import distributed

    if not distributed.is_primary():  # several processes: process 0 wrote the map
        return
    for name, path in files.items():
        logging.info("wrote %s: %s", name, path)
    print(f"map written to {outdir}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])
