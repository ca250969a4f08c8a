"""Density maps from an observed column density map plus its 13CO cube (part III, appendix D).

`predict_map_emission(column_fits, ppv_fits, workdir, distance_pc)` is `predict_map` for a
multi-input U-Net (`dustjax.polaris.multi_input`, task "polaris_emission"):

1. reads the column density map (`predict_map.read_column_map`) and the PPV cube
   (`ppv_fits.read_ppv_cube`, which refuses a cube without a velocity axis or on another sky grid
   than the map, naming the mismatch);
2. moves the spectra to the model's velocity channels: the cloud's systemic velocity (the
   intensity-weighted mean velocity of the whole cube, or `systemic_velocity_kms`) is removed, as
   the simulated clouds have no bulk motion, and the spectra are rebinned onto the model's
   channels conserving the line integral (`rebin_spectra`; emission outside the model's band is
   dropped and reported);
3. builds the model's input channels (PPV channels or moment maps, the same normalisation as in
   training), resamples every channel to the model's pc per pixel, predicts on overlapping tiles
   averaged per pixel, resamples back and writes the density FITS map on the column map's WCS.

The cube must be a brightness temperature in K with the same pixels as the column map (reproject
it first, e.g. with the `reproject` package); a beam much larger than a model pixel is not
modelled (the simulated cubes have no beam).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dustjax.maps import MapError
from dustjax.polaris import multi_input as mi
from dustjax.polaris.emission import MOMENT_NAMES, SpectralAxis, moment_maps
from dustjax.polaris.predict_map import (
    fill_invalid,
    read_column_map,
    resample,
    tile_starts,
    tiles_per_axis,
)
from dustjax.polaris.projection import COLUMN, LOG10_COLUMN_SHIFT, log10_density_from_output


def rebin_spectra(t_b, velocities_kms, spectral: SpectralAxis) -> np.ndarray:
    """Rebin spectra (..., channels) on uniform ascending channel centres onto `spectral`,
    conserving int T_B dv where the two axes overlap (linear in the cumulative integral)."""
    t_b = np.asarray(t_b, np.float64)
    v = np.asarray(velocities_kms, np.float64)
    width = (v[-1] - v[0]) / max(len(v) - 1, 1) if len(v) > 1 else 1.0
    edges = np.concatenate([v - width / 2, [v[-1] + width / 2]])
    cumulative = np.concatenate(
        [np.zeros((*t_b.shape[:-1], 1)), np.cumsum(t_b * width, axis=-1)], axis=-1
    )
    flat = cumulative.reshape(-1, cumulative.shape[-1])
    at_model = np.stack([np.interp(spectral.edges, edges, row) for row in flat])
    out = np.diff(at_model, axis=-1) / spectral.channel_width_kms
    return out.reshape(*t_b.shape[:-1], spectral.num_channels)


def predict_tiled_channels(predict_fn, image, tile: int, predictions_per_pixel: int,
                           batch_size: int, mask):  # fmt: skip
    """`predict_map.predict_tiled` for an (H, W, C) input: (T, tile, tile, C) -> (T, tile,
    tile) predictions on overlapping tiles, averaged per pixel; NaN outside `mask`."""
    image = np.asarray(image, np.float64)
    height, width, _ = image.shape
    filled = np.stack([fill_invalid(image[..., c], mask) for c in range(image.shape[-1])], -1)
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        filled = np.pad(filled, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    k_rows, k_cols = tiles_per_axis(predictions_per_pixel)
    rows = tile_starts(filled.shape[0], tile, max(1, tile // k_rows))
    cols = tile_starts(filled.shape[1], tile, max(1, tile // k_cols))
    corners = [(r, c) for r in rows for c in cols]
    total = np.zeros(filled.shape[:2])
    count = np.zeros(filled.shape[:2])
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        tiles = np.stack([filled[r : r + tile, c : c + tile] for r, c in chunk])
        n = len(tiles)
        padded = np.concatenate([tiles, np.repeat(tiles[-1:], batch_size - n, 0)])
        out = np.asarray(predict_fn(padded.astype(np.float32)), np.float64)[:n, ..., 0]
        for (r, c), o in zip(chunk, out, strict=True):
            total[r : r + tile, c : c + tile] += o
            count[r : r + tile, c : c + tile] += 1
    prediction = (total / count)[:height, :width]
    return np.where(mask, prediction, np.nan), count[:height, :width]


def predict_map_emission(
    column_fits,
    ppv_fits,
    workdir,
    distance_pc: float,
    out=None,
    *,
    predictions_per_pixel: int = 4,
    systemic_velocity_kms: float | None = None,
    hdu: int = 0,
    bunit: str | None = None,
    which: str = "best",
    batch_size: int = 16,
) -> dict:
    """Predict the density map of a column density FITS map and its 13CO PPV FITS cube with a
    trained multi-input U-Net; writes ``out`` (default ``<map stem>_density.fits``) and returns
    a summary."""
    from astropy.io import fits

    from dustjax import io as dio
    from dustjax import training as train
    from dustjax.polaris.ppv_fits import read_ppv_cube

    if not (distance_pc and distance_pc > 0 and math.isfinite(distance_pc)):
        raise MapError(f"distance_pc must be a positive distance in pc, got {distance_pc}")
    column, wcs, deg_per_pixel, header = read_column_map(column_fits, hdu, bunit)
    t_b, velocities, _ = read_ppv_cube(ppv_fits, wcs, column.shape)
    model, variables, config = train.load_trained(workdir, which)
    if config.get("task") != "polaris_emission":
        raise MapError(
            f"{workdir} holds a {config.get('task')!r} model, not a column + 13CO one: use "
            "predict_map for column-only models"
        )
    settings = mi.settings_from_config(config.data)
    spectral = settings.spectral
    valid = np.isfinite(column)
    spectra = np.where(np.isfinite(t_b), t_b, 0.0)
    weight = np.clip(spectra, 0.0, None)
    if systemic_velocity_kms is None:
        systemic_velocity_kms = float(np.sum(weight * velocities) / max(weight.sum(), 1e-30))
    rebinned = rebin_spectra(spectra, velocities - systemic_velocity_kms, spectral)
    dv_obs = float(abs(velocities[1] - velocities[0])) if len(velocities) > 1 else 1.0
    total = float(weight.sum() * dv_obs)
    kept = float(np.clip(rebinned, 0.0, None).sum() * spectral.channel_width_kms)
    moments = moment_maps(rebinned, spectral)
    features = {
        COLUMN: column,
        mi.PPV: rebinned,
        mi.MOMENTS: np.stack([np.asarray(moments[m]) for m in MOMENT_NAMES], -1),
    }
    channels = mi.emission_channels({k: v[None] for k, v in features.items()}, settings.inputs)[0]

    tile = int(config.data.crop.crop_size)
    model_pc = float(config.data.grid.cell_size_pc)
    scale = distance_pc * math.radians(deg_per_pixel) / model_pc
    shape = tuple(max(1, int(round(n * scale))) for n in column.shape)
    log10_column, model_valid = resample(np.log10(column), shape, valid)
    planes = [log10_column - LOG10_COLUMN_SHIFT]
    for c in range(channels.shape[-1]):
        planes.append(resample(channels[..., c], shape, valid)[0])
    image = np.stack(planes, -1)
    model_valid &= np.all(np.isfinite(image), axis=-1)
    predict_fn = train.make_predict_fn(model, variables)
    output, count = predict_tiled_channels(
        predict_fn, image, tile, predictions_per_pixel, batch_size, model_valid
    )
    log10_density = log10_density_from_output(output)
    back, _ = resample(log10_density, column.shape, np.isfinite(log10_density))
    density = np.where(valid & np.isfinite(back), 10.0**back, np.nan).astype(np.float32)

    out = (
        Path(out) if out else Path(column_fits).with_name(Path(column_fits).stem + "_density.fits")
    )
    target = config.data.get("target", "mass_weighted")
    out_header = wcs.to_header()
    out_header["BUNIT"] = ("cm-3", "hydrogen number density")
    out_header["TARGET"] = (target, "predicted quantity (POLARIS U-Net)")
    out_header["INPUTS"] = (f"column+{settings.inputs}", "U-Net inputs (13CO)")
    out_header["DISTPC"] = (distance_pc, "assumed distance [pc]")
    out_header["MODELPC"] = (model_pc, "model pc per pixel")
    out_header["VSYS"] = (round(systemic_velocity_kms, 4), "systemic velocity removed [km/s]")
    out_header["NPRED"] = (predictions_per_pixel, "predictions per interior pixel")
    out_header.add_history(
        f"dustjax U-Net {Path(workdir).name} ({which}) on {Path(column_fits).name} + "
        f"{Path(ppv_fits).name}"
    )
    dio.write_fits(out, [fits.PrimaryHDU(density, header=out_header)])
    return dict(
        out=str(out), shape=list(column.shape), model_shape=list(shape), tile=tile,
        inputs=settings.inputs, systemic_velocity_kms=systemic_velocity_kms,
        line_flux_in_model_band=kept / total if total > 0 else float("nan"),
        max_predictions=int(count.max()), valid_fraction=float(valid.mean()),
    )  # fmt: skip
