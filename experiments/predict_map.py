r"""Predict a mean volume density map from an observed column density FITS map (appendix D).

    python -m experiments.predict_map --fits=taurus_N.fits --model=workdirs/unet \
        --distance_pc=140 [--out=taurus_density.fits] [--predictions_per_pixel=4] \
        [--residual_correction=auto]

Reads the map and its celestial WCS, converts the pixel scale to pc at --distance_pc, resamples
the map to the model's pc per pixel (antialiased when shrinking), cuts it into overlapping tiles
of the training crop size (each interior pixel predicted --predictions_per_pixel times, averaged),
optionally removes the appendix-C residual baseline fitted on the validation set, resamples back
and writes a FITS map of the target density (cm^-3) with the same WCS, plus a PNG. Blank, NaN or
non-positive pixels are masked (NaN in the output), not propagated; a map smaller than one tile
is reflect-padded. A map without a celestial WCS or without a column density unit gets a clear
error (BUNIT "cm-2" or "H2 cm-2"; N(H2) is converted to N_H = 2 N(H2), the simulator's n is
hydrogen nuclei; --bunit overrides a missing or odd BUNIT).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this module
    for its library function never collides with the flags of other entry points)."""
    flags.DEFINE_string("fits", None, "Column density map (FITS, 2D, celestial WCS).")
    flags.DEFINE_string("model", None, "Training workdir of a U-Net (config.json, checkpoints/).")
    flags.DEFINE_float("distance_pc", None, "Distance of the cloud in pc (sets pc per pixel).")
    flags.DEFINE_string("out", None, "Output FITS (default <map stem>_density.fits next to it).")
    flags.DEFINE_integer("predictions_per_pixel", 4, "Overlapping predictions per interior pixel.")
    flags.DEFINE_integer("hdu", 0, "HDU index holding the map.")
    flags.DEFINE_string("bunit", None, "Unit of the map if BUNIT is missing: 'cm-2' or 'H2 cm-2'.")
    flags.DEFINE_string(
        "residual_correction",
        "none",
        "'none', 'auto' (<model>/validation/residual_correction.json) or a JSON path.",
    )
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint.")
    flags.DEFINE_integer("batch_size", 16, "Tiles per device call.")


class MapError(ValueError):
    """An input map that cannot be used (dimensions, WCS, unit)."""


def column_unit_factor(bunit: str | None) -> float:
    """Factor converting the map's unit to N_H in cm^-2 (2 for N(H2)); MapError otherwise."""
    if not bunit or not bunit.strip():
        raise MapError(
            "the map has no BUNIT: pass --bunit='cm-2' (N_H) or --bunit='H2 cm-2' (N(H2))"
        )
    text = bunit.lower().replace(" ", "").replace("^", "").replace("**", "")
    per_cm2 = any(s in text for s in ("cm-2", "/cm2", "cm(-2)"))
    if not per_cm2:
        raise MapError(
            f"BUNIT={bunit!r} is not a column density in cm^-2; pass --bunit='cm-2' or "
            "--bunit='H2 cm-2' if the map is one"
        )
    return 2.0 if "h2" in text else 1.0


def read_column_map(path: str | Path, hdu: int = 0, bunit: str | None = None):
    """(N_H map in cm^-2 with NaN for blank pixels, celestial WCS, degrees per pixel, header)."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    path = Path(path)
    if not path.exists():
        raise MapError(f"{path} does not exist")
    with fits.open(path) as hdul:
        if hdu >= len(hdul) or hdul[hdu].data is None:
            raise MapError(f"{path} has no image in HDU {hdu}")
        header = hdul[hdu].header.copy()
        data = np.squeeze(np.asarray(hdul[hdu].data, np.float64))
    if data.ndim != 2:
        raise MapError(f"{path} HDU {hdu} is not a 2D map (shape {data.shape})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    if not wcs.has_celestial:
        raise MapError(f"{path} has no celestial WCS (CTYPE/CDELT/CRPIX): cannot convert to pc")
    wcs = wcs.celestial
    scales = proj_plane_pixel_scales(wcs)  # deg per pixel along x, y
    if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        raise MapError(f"{path}: unusable WCS pixel scale {scales}")
    if abs(scales[0] - scales[1]) > 0.01 * max(scales):
        raise MapError(f"{path}: pixels are not square ({scales[0]:.3g} x {scales[1]:.3g} deg)")
    factor = column_unit_factor(bunit or header.get("BUNIT"))
    if "BLANK" in header and np.issubdtype(np.asarray(data).dtype, np.integer):
        data = np.where(data == header["BLANK"], np.nan, data)
    data = np.where(np.isfinite(data) & (data > 0), data * factor, np.nan)
    return data, wcs, float(np.mean(scales)), header


def predict_map(
    fits_path,
    workdir,
    distance_pc: float,
    out=None,
    *,
    predictions_per_pixel: int = 4,
    hdu: int = 0,
    bunit: str | None = None,
    residual_correction: str = "none",
    which: str = "best",
    batch_size: int = 16,
) -> dict:
    """Library form of the command (used by tests and notebooks); returns a summary dict."""
    import jax.numpy as jnp
    from astropy.io import fits

    from dustjax import io as dio
    from dustjax import polaris, train

    if not (distance_pc and distance_pc > 0 and math.isfinite(distance_pc)):
        raise MapError(f"--distance_pc must be a positive distance in pc, got {distance_pc}")
    column, wcs, deg_per_pixel, header = read_column_map(fits_path, hdu, bunit)
    valid = np.isfinite(column)
    if not valid.any():
        raise MapError(f"{fits_path} has no valid (finite, positive) pixel")
    polaris.register_with_engine()
    model, variables, config = train.load_trained(workdir, which)
    tile = int(config.model.input_shape[0])
    model_pc = float(config.data.grid.cell_size_pc)
    map_pc = distance_pc * math.radians(deg_per_pixel)
    scale = map_pc / model_pc  # model pixels per map pixel
    shape = tuple(max(1, int(round(n * scale))) for n in column.shape)
    log10_column, model_valid = polaris.resample(np.log10(column), shape, valid)
    logging.info(
        "map %s: %.4g pc/pixel at %.4g pc; model %.4g pc/pixel: %s -> %s pixels, tiles of %d",
        column.shape, map_pc, distance_pc, model_pc, column.shape, shape, tile,
    )  # fmt: skip

    predict_fn = train.make_predict_fn(model, variables)

    def predict_tiles(tiles):  # fixed batch shape: one compilation
        n = len(tiles)
        padded = np.concatenate([tiles, np.repeat(tiles[-1:], batch_size - n, 0)])[..., None]
        return np.asarray(predict_fn(jnp.asarray(padded)))[:n, ..., 0]

    column_hat = log10_column - polaris.LOG10_COLUMN_SHIFT
    output, count = polaris.predict_tiled(
        predict_tiles, column_hat, tile, predictions_per_pixel, batch_size, model_valid,
        progress=True,
    )  # fmt: skip
    log10_density = polaris.log10_density_from_output(output)
    correction_path = None
    if residual_correction != "none":
        correction_path = (
            Path(workdir) / "validation" / "residual_correction.json"
            if residual_correction == "auto"
            else Path(residual_correction)
        )
        if not correction_path.exists():
            raise MapError(
                f"{correction_path} not found: run experiments.polaris_validate on {workdir} "
                "first, or pass --residual_correction=none"
            )
        correction = polaris.ResidualCorrection.from_dict(dio.read_json(correction_path))
        log10_density = np.where(np.isfinite(log10_density), correction(log10_density), np.nan)
    back, _ = polaris.resample(log10_density, column.shape, np.isfinite(log10_density))
    density = np.where(valid & np.isfinite(back), 10.0**back, np.nan).astype(np.float32)

    out = Path(out) if out else Path(fits_path).with_name(Path(fits_path).stem + "_density.fits")
    target = config.data.get("target", "mass_weighted")
    out_header = wcs.to_header()
    out_header["BUNIT"] = ("cm-3", "hydrogen number density")
    out_header["TARGET"] = (target, "predicted quantity (POLARIS U-Net)")
    out_header["DISTPC"] = (distance_pc, "assumed distance [pc]")
    out_header["MODELPC"] = (model_pc, "model pc per pixel")
    out_header["NPRED"] = (predictions_per_pixel, "predictions per interior pixel")
    out_header["RESCORR"] = (str(correction_path or "none")[-60:], "residual correction")
    for key in ("OBJECT", "TELESCOP"):
        if key in header:
            out_header[key] = header[key]
    out_header.add_history(
        f"dustjax U-Net {Path(workdir).name} ({which}) on {Path(fits_path).name}"
    )
    dio.write_fits(out, [fits.PrimaryHDU(density, header=out_header)])
    png = out.with_suffix(".png")
    _plot(column, density, wcs, png, target)
    summary = dict(
        out=str(out), png=str(png), shape=list(column.shape), model_shape=list(shape),
        map_pc_per_pixel=map_pc, model_pc_per_pixel=model_pc, tile=tile,
        predictions_per_pixel=predictions_per_pixel, valid_fraction=float(valid.mean()),
        max_predictions=int(count.max()),
    )  # fmt: skip
    return summary


def _plot(column, density, wcs, path, target) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dustjax import io as dio

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
    with dio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for name in ("fits", "model", "distance_pc"):
        if FLAGS[name].value is None:
            raise app.UsageError(f"--{name} is required")
    try:
        summary = predict_map(
            FLAGS.fits, FLAGS.model, FLAGS.distance_pc, FLAGS.out,
            predictions_per_pixel=FLAGS.predictions_per_pixel, hdu=FLAGS.hdu, bunit=FLAGS.bunit,
            residual_correction=FLAGS.residual_correction, which=FLAGS.which,
            batch_size=FLAGS.batch_size,
        )  # fmt: skip
    except (MapError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    for key, value in summary.items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
