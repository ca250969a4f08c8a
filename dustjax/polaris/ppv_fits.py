"""13CO position-position-velocity cubes as FITS, with their WCS (issue 21, part III inputs).

- `write_ppv_fits` writes a brightness-temperature cube (H, W, channels) in K as a FITS cube
  (NAXIS1 = x, NAXIS2 = y, NAXIS3 = velocity) with a celestial WCS and a radio-velocity spectral
  axis: CTYPE3 = "VRAD", CUNIT3 = "km/s", SPECSYS = "LSRK", RESTFRQ = 110.201354 GHz, BUNIT = "K".
  `write_column_fits` writes the matching column density map (BUNIT "cm-2") on the same grid,
  and `simulation_wcs` gives simulated maps a sky position (a plate carree grid at a distance).
- `read_ppv_cube` reads a cube back as (H, W, channels) with its channel velocities in km/s and
  checks it against the column density map it goes with. A cube whose spectral axis is missing or
  not a velocity (FREQ, WAVE, ... or a unit that is not a speed), whose intensity is not a
  brightness temperature, or whose spatial WCS does not match the column density map (grid size,
  celestial frame or projection, pixel positions) raises one `PPVError` (a `MapError`) naming the
  mismatch and the two values.

Velocity axes accepted: CTYPE3 VRAD (radio), VELO / VELO-LSR / VELO-xxx (the older AIPS
convention, radio velocities in practice for 13CO cubes) and VLSR, in m/s (FITS default) or km/s;
channels may run either way (decreasing velocities are reversed on reading). astropy is imported
here, at the I/O boundary only.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from dustjax.maps import MapError
from dustjax.polaris.emission import CO13_10, LineData, SpectralAxis

VELOCITY_CTYPES = ("VRAD", "VELO", "VLSR", "VOPT", "FELO", "VELOCITY")  # VELO: VELO-LSR, ...
TEMPERATURE_UNITS = ("K",)


class PPVError(MapError):
    """A PPV cube that cannot be used as the U-Net's 13CO input (the message names why)."""


def simulation_wcs(shape, pixel_size_pc: float, distance_pc: float = 140.0,
                   centre_deg=(170.0, -16.0)):  # fmt: skip
    """A celestial WCS (GLON-CAR / GLAT-CAR) for a simulated (H, W) map of `pixel_size_pc`
    pixels seen at `distance_pc` (default 140 pc, Taurus), centred on `centre_deg` (l, b)."""
    from astropy.wcs import WCS

    height, width = shape
    deg = math.degrees(pixel_size_pc / distance_pc)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.cdelt = [-deg, deg]  # longitude increases to the left, as on the sky
    wcs.wcs.crpix = [(width + 1) / 2, (height + 1) / 2]
    wcs.wcs.crval = list(centre_deg)
    return wcs


def _celestial_header(celestial_wcs):
    """The celestial WCS cards, without astropy's long comments (a full-precision CDELT and its
    comment overflow a FITS card)."""
    from astropy.io import fits

    cards = celestial_wcs.to_header()
    header = fits.Header()
    for key in cards:
        if key not in ("WCSAXES", "MJDREF", "DATEREF"):
            header[key] = cards[key]
    return header


def write_ppv_fits(path, t_b, spectral: SpectralAxis, celestial_wcs, *,
                   line: LineData = CO13_10, header_cards: dict | None = None) -> Path:  # fmt: skip
    """Write T_B (H, W, channels) in K with a celestial WCS and a VRAD km/s axis, atomically."""
    from astropy.io import fits

    from dustjax import io as dio

    t_b = np.asarray(t_b, np.float32)
    if t_b.ndim != 3 or t_b.shape[-1] != spectral.num_channels:
        raise ValueError(
            f"PPV cube must be (H, W, {spectral.num_channels} channels), got {t_b.shape}"
        )
    header = fits.Header()
    cel = _celestial_header(celestial_wcs)
    header["WCSAXES"] = 3
    for key in cel:
        header[key] = cel[key]
    header["CTYPE3"] = ("VRAD", "radio velocity")
    header["CUNIT3"] = "km/s"
    header["CRPIX3"] = 1.0
    header["CRVAL3"] = (float(spectral.centres[0]), "velocity of the first channel")
    header["CDELT3"] = float(spectral.channel_width_kms)
    header["SPECSYS"] = ("LSRK", "local standard of rest (kinematic)")
    header["RESTFRQ"] = (line.frequency_hz, "rest frequency [Hz]")
    header["BUNIT"] = ("K", "brightness temperature above the CMB")
    header["BTYPE"] = "Brightness temperature"
    header["LINE"] = line.name
    for key, value in (header_cards or {}).items():
        header[key] = value
    path = Path(path)
    dio.write_fits(path, [fits.PrimaryHDU(np.moveaxis(t_b, -1, 0), header=header)])
    return path


def write_column_fits(path, column_density, celestial_wcs) -> Path:
    """Write an N_H map (H, W) in cm^-2 with the celestial WCS, atomically."""
    from astropy.io import fits

    from dustjax import io as dio

    header = _celestial_header(celestial_wcs)
    header["BUNIT"] = ("cm-2", "hydrogen column density N_H")
    path = Path(path)
    dio.write_fits(path, [fits.PrimaryHDU(np.asarray(column_density, np.float32), header)])
    return path


SPECTRAL_KINDS = ("FREQ", "WAVE", "AWAV", "WAVN", "ENER", "VRAD", "VOPT", "VELO", "VLSR", "FELO",
                  "ZOPT", "BETA", "VELOCITY")  # fmt: skip


def _spectral_velocities_kms(header, naxis: int, path) -> tuple[int, np.ndarray]:
    """(FITS axis index 0.., channel-centre velocities in km/s) of the cube's spectral axis, read
    from the raw header (astropy would rename AIPS "VELO-LSR" to VOPT); PPVError if none."""
    import astropy.units as u

    ctypes = [str(header.get(f"CTYPE{i + 1}", "")).strip() for i in range(naxis)]
    kinds = [c.split("-")[0].upper() for c in ctypes]
    spectral = [i for i, k in enumerate(kinds) if k in SPECTRAL_KINDS]
    if not spectral:
        raise PPVError(
            f"{path}: no spectral axis (CTYPE = {ctypes}): a 13CO PPV cube needs a velocity axis "
            "CTYPE3 = 'VRAD' or 'VELO-LSR' in km/s or m/s"
        )
    spec = spectral[0]
    ctype, kind = ctypes[spec], kinds[spec]
    if kind not in VELOCITY_CTYPES:
        raise PPVError(
            f"{path}: spectral axis CTYPE{spec + 1} = {ctype!r} is not a velocity: regrid the "
            "cube to radio velocity (CTYPE 'VRAD' or 'VELO-LSR' in km/s or m/s) first"
        )
    unit_text = str(header.get(f"CUNIT{spec + 1}", "m/s")).strip() or "m/s"  # FITS default
    try:
        factor = u.Unit(unit_text, format="fits" if unit_text.isupper() else None).to(u.km / u.s)
    except (ValueError, u.UnitConversionError, TypeError) as err:
        raise PPVError(
            f"{path}: spectral axis {ctype!r} has unit CUNIT{spec + 1} = {unit_text!r}, which "
            "is not a velocity (m/s or km/s)"
        ) from err
    n = int(header.get(f"NAXIS{spec + 1}", 0))
    cdelt = header.get(f"CDELT{spec + 1}", header.get(f"CD{spec + 1}_{spec + 1}"))
    if not cdelt or n < 1:
        raise PPVError(f"{path}: spectral axis {ctype!r} has no CDELT{spec + 1} (channel width)")
    crval = float(header.get(f"CRVAL{spec + 1}", 0.0))
    crpix = float(header.get(f"CRPIX{spec + 1}", 1.0))
    pixels = np.arange(n, dtype=np.float64) + 1.0
    return spec, (crval + (pixels - crpix) * float(cdelt)) * factor


def _check_spatial_match(wcs, shape, column_wcs, column_shape, path) -> None:
    """PPVError naming the first mismatch between the cube's celestial grid and the map's."""
    if tuple(shape) != tuple(column_shape):
        raise PPVError(
            f"{path}: PPV spatial grid {shape[1]} x {shape[0]} (NAXIS1 x NAXIS2) does not match "
            f"the column density map's {column_shape[1]} x {column_shape[0]}"
        )
    types = [str(t) for t in wcs.wcs.ctype]
    column_types = [str(t) for t in column_wcs.wcs.ctype]
    if types != column_types:
        raise PPVError(
            f"{path}: PPV celestial axes {types} do not match the column density map's "
            f"{column_types} (frame or projection differ: reproject one onto the other)"
        )
    height, width = shape
    probes = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1],
                       [(width - 1) / 2, (height - 1) / 2]], np.float64)  # fmt: skip
    world = np.array(wcs.pixel_to_world_values(probes[:, 0], probes[:, 1])).T
    back = np.array(column_wcs.world_to_pixel_values(world[:, 0], world[:, 1])).T
    offset = np.hypot(*(back - probes).T)
    worst = int(np.argmax(offset))
    if offset[worst] > 0.1:
        raise PPVError(
            f"{path}: PPV pixel (x, y) = ({probes[worst, 0]:g}, {probes[worst, 1]:g}) at world "
            f"({world[worst, 0]:.6g}, {world[worst, 1]:.6g}) deg falls on pixel "
            f"({back[worst, 0]:.3g}, {back[worst, 1]:.3g}) of the column density map: the "
            f"spatial WCS do not match ({offset[worst]:.3g} pixels apart; CRVAL/CRPIX/CDELT)"
        )


def read_ppv_cube(path, column_wcs=None, column_shape=None, hdu: int = 0):
    """(T_B (H, W, channels) in K, channel velocities (channels,) in km/s, ascending; celestial
    WCS) of a FITS PPV cube, checked against the column density map's celestial WCS and shape
    when given (`predict_map.read_column_map` returns that WCS). Raises `PPVError`."""
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    path = Path(path)
    if not path.exists():
        raise PPVError(f"{path} does not exist")
    with fits.open(path) as hdul:
        if hdu >= len(hdul) or hdul[hdu].data is None:
            raise PPVError(f"{path} has no data in HDU {hdu}")
        header = hdul[hdu].header.copy()
        data = np.asarray(hdul[hdu].data, np.float64)
    # a degenerate STOKES (or other length-1) axis beyond the third is dropped
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        raise PPVError(f"{path}: no spectral axis: a 2D image ({data.shape}), not a PPV cube")
    if data.ndim != 3:
        raise PPVError(f"{path}: a PPV cube has 3 axes (x, y, velocity), got shape {data.shape}")
    spec, velocities = _spectral_velocities_kms(header, int(header.get("NAXIS", 3)), path)
    if spec != 2:
        raise PPVError(
            f"{path}: the velocity axis is FITS axis {spec + 1}; expected axis 3 "
            "(NAXIS1, NAXIS2 spatial)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
    except Exception as err:  # astropy/wcslib raise several types for one bad header
        raise PPVError(f"{path}: unreadable celestial WCS: {err}") from err
    if not wcs.has_celestial:
        raise PPVError(f"{path}: no celestial WCS on axes 1-2 (CTYPE1/2, CDELT, CRPIX)")
    bunit = str(header.get("BUNIT", "")).strip()
    if bunit.upper() not in TEMPERATURE_UNITS:
        raise PPVError(
            f"{path}: BUNIT = {bunit!r}; the 13CO input must be a brightness temperature in K "
            "(convert Jy/beam with the beam, or T_A* with the efficiencies, first)"
        )
    t_b = np.moveaxis(data, 0, -1)  # (y, x, v)
    celestial = wcs.celestial
    if column_wcs is not None:
        shape = t_b.shape[:2] if column_shape is None else column_shape
        _check_spatial_match(celestial, t_b.shape[:2], column_wcs, shape, path)
    if velocities[-1] < velocities[0]:
        velocities, t_b = velocities[::-1], t_b[..., ::-1]
    return np.ascontiguousarray(t_b), velocities, celestial


def spectral_axis_of(velocities_kms) -> SpectralAxis:
    """The `SpectralAxis` of uniform ascending channel centres (PPVError if not uniform)."""
    v = np.asarray(velocities_kms, np.float64)
    if len(v) < 2:
        return SpectralAxis(float(v[0]) - 0.5, 1.0, 1)
    width = np.diff(v)
    if not np.allclose(width, width[0], rtol=1e-4, atol=0):
        raise PPVError("PPV channels are not uniformly spaced in velocity")
    return SpectralAxis(float(v[0] - width[0] / 2), float(width[0]), len(v))
