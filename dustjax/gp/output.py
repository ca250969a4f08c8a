"""Outputs of a GP fit: FITS cubes with (GLON, GLAT, distance) WCS, and the JSON summary.

FITS layout (astropy imported lazily): one file per quantity (``density.fits`` in mag/pc,
``extinction.fits`` in mag), an empty primary HDU with the provenance and three image HDUs
``P16``, ``P50``, ``P84``. Each image is ``(nd, nb, nl)`` in numpy order, i.e. FITS axis 1 =
Galactic longitude (``GLON-CAR``), axis 2 = Galactic latitude (``GLAT-CAR``), axis 3 = distance
(``DISTANCE``, linear, pc). With CRVAL2 = 0 the plate carree projection is exactly linear in l and
b, so pixel (i, j, k) is the cell centre (l_i, b_j, d_k) of the grid. Only the region of interest
and the background cells are written (the ghost cells have a different width, so they would
break the linear distance axis); ``total_extinction.fits`` holds the 2D map to d_max.

``density.fits`` also holds the foreground, the extinction from the Sun to d_min (the dust of
the ghost cells, which the cubes leave out; zero when the fit had no ghost cells), as 2D
(GLAT, GLON) images ``FG_P16``, ``FG_P50``, ``FG_P84`` (mag), so that an integrated query of the
density (`dustjax.maps.DustMap`) starts from the Sun, not from d_min.

With posterior samples (``predict.posterior_samples`` = K, 12 by default), ``density.fits`` also
holds ``SAMPLES``, K joint posterior draws of the density (mag/pc), ``(K, nd, nb, nl)`` in numpy
order (FITS axis 4 = ``SAMPLE``), and ``FG_SAMP``, the foreground of each draw ``(K, nb, nl)``
(mag), header keywords ``POSTSAMP = 'posterior density samples'`` and ``NSAMPLES = K``.
Percentiles of any integrated quantity (extinction to a point, a mass, a column sum) are to be
computed over these draws, not from the per-cell percentiles (`DustMap.query` does so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dustjax.gp.grid import LBDGrid
from dustjax.io import write_fits, write_json

PERCENTILE_NAMES = ("P16", "P50", "P84")


def wcs_header(grid: LBDGrid, *, with_distance: bool = True):
    """A FITS header with the (GLON, GLAT[, DISTANCE]) WCS of the grid's non-ghost cells."""
    from astropy.io import fits

    nl, nb, _ = grid.shape
    l_edges, b_edges = grid.l_edges_deg(), grid.b_edges_deg()
    dl, db = (l_edges[1] - l_edges[0]), (b_edges[1] - b_edges[0])
    hdr = fits.Header()
    hdr["WCSAXES"] = 3 if with_distance else 2
    # Reference pixel on the first cell centre; CRVAL2 = 0 keeps CAR linear in latitude, so we
    # put the latitude reference at b = 0 and shift CRPIX2 to match.
    hdr["CTYPE1"], hdr["CUNIT1"] = "GLON-CAR", "deg"
    hdr["CRPIX1"], hdr["CRVAL1"], hdr["CDELT1"] = 1.0, float(l_edges[0] + dl / 2), float(dl)
    hdr["CTYPE2"], hdr["CUNIT2"] = "GLAT-CAR", "deg"
    b_first = float(b_edges[0] + db / 2)
    hdr["CRPIX2"], hdr["CRVAL2"], hdr["CDELT2"] = 1.0 - b_first / db, 0.0, float(db)
    if with_distance:
        d0 = grid.d_range_pc[0]
        dd = (grid.d_range_pc[1] - d0) / grid.shape[2]
        hdr["CTYPE3"], hdr["CUNIT3"] = "DISTANCE", "pc"
        hdr["CRPIX3"], hdr["CRVAL3"], hdr["CDELT3"] = 1.0, float(d0 + dd / 2), float(dd)
    hdr["LONPOLE"] = 0.0
    hdr["COMMENT"] = f"dustjax latent GP; {nl}x{nb} (l, b) cells"
    return hdr


def _primary(meta: dict[str, Any]):
    """An empty primary HDU whose header holds `meta` (provenance, status, calibration)."""
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    for key, value in meta.items():
        primary.header[key[:8].upper()] = value
    return primary


def _cube_hdus(pct: np.ndarray, grid: LBDGrid, bunit: str, meta: dict[str, Any]):
    from astropy.io import fits

    hdus = [_primary(meta)]
    for name, cube in zip(PERCENTILE_NAMES, pct, strict=True):
        cube = np.asarray(cube, np.float32)[:, :, grid.ghost_cells :]  # (nl, nb, nd + bg)
        data = np.ascontiguousarray(np.transpose(cube, (2, 1, 0)))  # (nd, nb, nl)
        hdr = wcs_header(grid)
        hdr["BUNIT"] = bunit
        hdus.append(fits.ImageHDU(data, header=hdr, name=name))
    return hdus


FOREGROUND_NAMES = ("FG_P16", "FG_P50", "FG_P84")


def _foreground_hdus(foreground_pct, grid: LBDGrid):
    from astropy.io import fits

    hdus = []
    for name, pct, img in zip(FOREGROUND_NAMES, PERCENTILE_NAMES, foreground_pct, strict=True):
        hdr = wcs_header(grid, with_distance=False)
        hdr["BUNIT"] = "mag"
        hdr["DMIN_PC"] = (grid.d_range_pc[0], "foreground: extinction from 0 to d_min (pc)")
        hdr["QUANTITY"] = ("foreground extinction", f"{pct}, Sun to DMIN_PC")
        data = np.ascontiguousarray(np.asarray(img, np.float32).T)  # (nb, nl)
        hdus.append(fits.ImageHDU(data, header=hdr, name=name))
    return hdus


def _with_sample_axis(hdr, axis: int, num_samples: int):
    hdr["WCSAXES"] = axis
    hdr[f"CTYPE{axis}"] = ("SAMPLE", "posterior draw number")
    hdr[f"CRPIX{axis}"], hdr[f"CRVAL{axis}"], hdr[f"CDELT{axis}"] = 1.0, 1.0, 1.0
    hdr["POSTSAMP"] = ("posterior density samples", "joint draws of the GP posterior")
    hdr["NSAMPLES"] = (num_samples, "number of posterior draws")
    return hdr


def _sample_hdus(density_samples, foreground_samples, grid: LBDGrid):
    from astropy.io import fits

    k = len(density_samples)
    cube = np.asarray(density_samples, np.float32)[..., grid.ghost_cells :]  # (K, nl, nb, nd)
    hdr = _with_sample_axis(wcs_header(grid), 4, k)
    hdr["BUNIT"] = "mag/pc"
    hdr["QUANTITY"] = ("density", "dust density per posterior draw")
    hdus = [fits.ImageHDU(np.ascontiguousarray(np.transpose(cube, (0, 3, 2, 1))), hdr, "SAMPLES")]
    fg = np.asarray(foreground_samples, np.float32)  # (K, nl, nb)
    hdr = _with_sample_axis(wcs_header(grid, with_distance=False), 3, k)
    hdr["BUNIT"] = "mag"
    hdr["DMIN_PC"] = (grid.d_range_pc[0], "foreground: extinction from 0 to d_min (pc)")
    hdr["QUANTITY"] = ("foreground extinction", "per posterior draw, Sun to DMIN_PC")
    hdus.append(fits.ImageHDU(np.ascontiguousarray(np.transpose(fg, (0, 2, 1))), hdr, "FG_SAMP"))
    return hdus


def write_fits_cubes(
    workdir, prediction: dict[str, np.ndarray], grid: LBDGrid, meta: dict[str, Any] | None = None
) -> list[Path]:
    """density.fits, extinction.fits and total_extinction.fits into ``workdir``; their paths."""
    from astropy.io import fits

    workdir = Path(workdir)
    meta = dict(meta or {})
    meta.setdefault("ORIGIN", "dustjax.gp")
    out = []
    for name, key, unit in (
        ("density.fits", "density_pct", "mag/pc"),
        ("extinction.fits", "extinction_pct", "mag"),
    ):
        path = workdir / name
        hdus = _cube_hdus(prediction[key], grid, unit, meta)
        if name == "density.fits" and "foreground_pct" in prediction:
            hdus += _foreground_hdus(prediction["foreground_pct"], grid)
        if name == "density.fits" and "density_samples" in prediction:
            hdus += _sample_hdus(
                prediction["density_samples"], prediction["foreground_samples"], grid
            )
        write_fits(path, hdus)
        out.append(path)
    hdus = [_primary(meta)]
    for name, img in zip(PERCENTILE_NAMES, prediction["total_extinction_pct"], strict=True):
        hdr = wcs_header(grid, with_distance=False)
        hdr["BUNIT"] = "mag"
        hdr["DMAX_PC"] = grid.d_range_pc[1]
        hdus.append(fits.ImageHDU(np.ascontiguousarray(np.asarray(img, np.float32).T), hdr, name))
    path = workdir / "total_extinction.fits"
    write_fits(path, hdus)
    out.append(path)
    return out


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """The JSON summary (hyperparameters, ELBO history, masses, timings, metrics), atomically."""
    write_json(path, _plain(summary))


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        arr = np.asarray(obj)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return obj
