"""Density maps from observed column density maps (Ribeiro 2025, appendix D).

`predict_map(fits, workdir, distance_pc)` reads a FITS map and its celestial WCS, converts the
pixel scale to pc at the given distance, resamples the map to the model's pc per pixel
(antialiased when shrinking), cuts it into overlapping tiles of the training crop size (each
interior pixel predicted ``predictions_per_pixel`` times, averaged; `predict_tiled`), optionally
removes the appendix-C residual baseline, resamples back and writes a FITS map of the target
density (cm^-3) with the same WCS, plus a PNG. Blank, NaN or non-positive pixels are masked (NaN
in the output), not propagated; a map smaller than one tile is reflect-padded. A map without a
celestial WCS or without a column density unit raises `dustjax.maps.MapError` (BUNIT "cm-2" or
"H2 cm-2"; N(H2) is converted to N_H = 2 N(H2), the simulator's n is hydrogen nuclei). astropy is
imported only to read and write FITS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dustjax import provenance
from dustjax.maps import MapError
from dustjax.polaris.projection import LOG10_COLUMN_SHIFT, log10_density_from_output
from dustjax.polaris.reference import ResidualCorrection

logger = logging.getLogger(__name__)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start indices of tiles of size `tile` every `stride` pixels, the last flush with the end."""
    if length < tile:
        raise ValueError(f"length {length} < tile {tile}: pad the map first")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tiles_per_axis(predictions_per_pixel: int) -> tuple[int, int]:
    """Split predictions per pixel p into overlap factors (k_rows, k_cols), k_rows k_cols = p,
    as square as possible (p = 4: 2 x 2, stride tile/2 on both axes; p = 2: 2 x 1)."""
    if predictions_per_pixel < 1:
        raise ValueError(f"predictions_per_pixel must be >= 1, got {predictions_per_pixel}")
    k = int(math.isqrt(predictions_per_pixel))
    while predictions_per_pixel % k:
        k -= 1
    return predictions_per_pixel // k, k


def fill_invalid(image, mask):
    """Copy of `image` with pixels outside `mask` set to the lowest valid value (diffuse gas)."""
    image = np.asarray(image, np.float64)
    if not mask.any():
        raise ValueError("the map has no valid (finite, positive) pixel")
    return np.where(mask, image, image[mask].min())


def predict_tiled(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    image,
    tile: int,
    predictions_per_pixel: int = 4,
    batch_size: int = 16,
    mask=None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a tile-to-tile model to a map of any size by overlapping tiles, averaged per pixel.

    Args:
      predict_fn: (T, tile, tile) -> (T, tile, tile) arrays (e.g. the jitted U-Net on log10 N).
      image: (H, W) map in the model's input units; pixels outside `mask` are filled with the
        lowest valid value before prediction and set to NaN after (masked, not propagated).
      tile: tile side in pixels (the model's training crop size).
      predictions_per_pixel: interior pixels get at least this many overlapping predictions
        (more where the last tile of a row or column is shifted flush with the edge).
      mask: (H, W) bool of valid pixels; default: finite pixels.

    Returns:
      (prediction (H, W) with NaN outside the mask, number of predictions per pixel (H, W)).
      Maps smaller than a tile are reflect-padded to one tile and cropped back.
    """
    image = np.asarray(image, np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D map, got shape {image.shape}")
    mask = np.isfinite(image) if mask is None else (np.asarray(mask, bool) & np.isfinite(image))
    filled = fill_invalid(image, mask)
    height, width = filled.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        filled = np.pad(filled, ((0, pad_h), (0, pad_w)), mode="reflect")
    k_rows, k_cols = tiles_per_axis(predictions_per_pixel)
    rows = tile_starts(filled.shape[0], tile, max(1, tile // k_rows))
    cols = tile_starts(filled.shape[1], tile, max(1, tile // k_cols))
    corners = [(r, c) for r in rows for c in cols]
    total = np.zeros(filled.shape)
    count = np.zeros(filled.shape)
    batches = range(0, len(corners), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="tiles", unit="batch")
    for start in batches:
        chunk = corners[start : start + batch_size]
        tiles = np.stack([filled[r : r + tile, c : c + tile] for r, c in chunk])
        out = np.asarray(predict_fn(tiles.astype(np.float32)), np.float64)
        if out.shape != tiles.shape:
            raise ValueError(f"predict_fn returned shape {out.shape}, expected {tiles.shape}")
        for (r, c), o in zip(chunk, out, strict=True):
            total[r : r + tile, c : c + tile] += o
            count[r : r + tile, c : c + tile] += 1
    prediction = (total / count)[:height, :width]
    return np.where(mask, prediction, np.nan), count[:height, :width]


def resample(image, shape: tuple[int, int], mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Resample a map to `shape` (linear, antialiased when shrinking), ignoring invalid pixels.

    Normalised convolution: resample image * mask and mask, divide. Returns (image, valid) with
    valid where at least half of the resampled footprint was valid.
    """
    image = np.asarray(image, np.float64)
    mask = np.isfinite(image) if mask is None else (np.asarray(mask, bool) & np.isfinite(image))
    weights = jax.image.resize(jnp.asarray(mask, jnp.float32), shape, "linear", antialias=True)
    values = jax.image.resize(
        jnp.asarray(np.where(mask, image, 0.0), jnp.float32), shape, "linear", antialias=True
    )
    weights = np.asarray(weights, np.float64)
    valid = weights >= 0.5
    out = np.where(valid, np.asarray(values, np.float64) / np.maximum(weights, 1e-12), np.nan)
    return out, valid


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
    """Predict the density map of a column density FITS map with a trained U-Net (appendix D).

    Writes ``out`` (default ``<map stem>_density.fits`` next to the map) and a PNG beside it;
    returns a summary dict. `experiments/predict_map.py` is its command line.
    """
    from astropy.io import fits

    from dustjax import io as dio
    from dustjax import training as train
    from dustjax.polaris.plots import plot_map

    if not (distance_pc and distance_pc > 0 and math.isfinite(distance_pc)):
        raise MapError(f"--distance_pc must be a positive distance in pc, got {distance_pc}")
    column, wcs, deg_per_pixel, header = read_column_map(fits_path, hdu, bunit)
    valid = np.isfinite(column)
    if not valid.any():
        raise MapError(f"{fits_path} has no valid (finite, positive) pixel")
    # Everything that can be checked is checked before the model is loaded and run: the run's
    # method, the residual correction's file, the output's directory.
    train.require_method(workdir, "polaris", "predict_map")
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
    out = Path(out) if out else Path(fits_path).with_name(Path(fits_path).stem + "_density.fits")
    dio.check_can_write_dir(out.parent)
    model, variables, config = train.load_trained(workdir, which)
    tile = int(config.model.input_shape[0])
    model_pc = float(config.data.grid.cell_size_pc)
    map_pc = distance_pc * math.radians(deg_per_pixel)
    scale = map_pc / model_pc  # model pixels per map pixel
    shape = tuple(max(1, int(round(n * scale))) for n in column.shape)
    log10_column, model_valid = resample(np.log10(column), shape, valid)
    logger.info(
        "map %s: %.4g pc/pixel at %.4g pc; model %.4g pc/pixel: %s -> %s pixels, tiles of %d",
        column.shape, map_pc, distance_pc, model_pc, column.shape, shape, tile,
    )  # fmt: skip

    predict_fn = train.make_predict_fn(model, variables)

    def predict_tiles(tiles):  # fixed batch shape: one compilation
        n = len(tiles)
        padded = np.concatenate([tiles, np.repeat(tiles[-1:], batch_size - n, 0)])[..., None]
        return np.asarray(predict_fn(jnp.asarray(padded)))[:n, ..., 0]

    column_hat = log10_column - LOG10_COLUMN_SHIFT
    output, count = predict_tiled(
        predict_tiles, column_hat, tile, predictions_per_pixel, batch_size, model_valid,
        progress=True,
    )  # fmt: skip
    log10_density = log10_density_from_output(output)
    if correction_path is not None:
        correction = ResidualCorrection.from_dict(dio.read_json(correction_path))
        log10_density = np.where(np.isfinite(log10_density), correction(log10_density), np.nan)
    back, _ = resample(log10_density, column.shape, np.isfinite(log10_density))
    density = np.where(valid & np.isfinite(back), 10.0**back, np.nan).astype(np.float32)

    target = config.data.get("target", "mass_weighted")
    out_header = wcs.to_header()
    out_header["BUNIT"] = ("cm-3", "hydrogen number density")
    out_header["TARGET"] = (target, "predicted quantity (POLARIS U-Net)")
    out_header["DISTPC"] = (distance_pc, "assumed distance [pc]")
    out_header["MODELPC"] = (model_pc, "model pc per pixel")
    out_header["NPRED"] = (predictions_per_pixel, "predictions per interior pixel")
    out_header["RESCORR"] = (Path(correction_path or "none").name[-60:], "residual correction")
    prov = provenance.record(
        "polaris predict_map", config, inputs=[fits_path, workdir, correction_path]
    )
    provenance.add_to_header(out_header, prov)
    for key in ("OBJECT", "TELESCOP"):
        if key in header:
            out_header[key] = header[key]
    out_header.add_history(
        f"dustjax U-Net {Path(workdir).name} ({which}) on {Path(fits_path).name}"
    )
    dio.write_fits(out, [fits.PrimaryHDU(density, header=out_header)])
    png = out.with_suffix(".png")
    plot_map(column, density, wcs, png, target)
    summary = dict(
        out=str(out), png=str(png), shape=list(column.shape), model_shape=list(shape),
        map_pc_per_pixel=map_pc, model_pc_per_pixel=model_pc, tile=tile,
        predictions_per_pixel=predictions_per_pixel, valid_fraction=float(valid.mean()),
        max_predictions=int(count.max()), provenance=prov,
    )  # fmt: skip
    return summary
