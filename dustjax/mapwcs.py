"""A map cube's grid and units from its FITS header: cell edges per axis and the factor to mag/pc.

Two routes to the same edges, one of them without astropy:

- `wcs_edges` reads a `astropy.io.fits.Header` through `astropy.wcs.WCS`: any equivalent form of
  the same WCS (CDELT, a CD matrix, PC + CDELT, CRPIX anywhere, CUNIT any length unit astropy
  knows) gives the same edges. The grid must be separable and regular (each world axis a linear
  function of its own pixel axis: a rotated or skewed cube, or a sky projection that is not
  linear in l and b such as CAR with CRVAL2 != 0, is refused), because the integrators take
  evenly spaced edges per axis.
- `linear_edges` reads a header kept as a dict (a ``.npy`` cube with its ``.header.json``; the GPU
  path has no astropy) for Cartesian cubes: CDELT, CD or PC + CDELT, CUNIT pc or kpc.

Both also read the Vergely et al. (2022) / Lallement et al. (2022) convention: ``STEP`` (pc per
cell) and ``SUN_POSX/Y/Z`` (the Sun in cells from the lower edge), with no WCS axes.

`unit_scale` turns BUNIT into the factor to mag/pc (a density) or to mag (an extinction) through
`astropy.units` (any string it parses: ``mag/pc``, ``mag / kpc``, ``mag pc-1``, ...), and refuses
with the unit's name what is neither: an extinction map offered as a density, a number density
(``1/cm3``: converting it needs an extinction cross-section per particle, which the file does not
give, so it is refused rather than guessed; pass ``density_scale=`` to convert), anything else.
"""

from __future__ import annotations

import warnings

import numpy as np


class MapError(ValueError):
    """A file that is not a map this package understands (also `dustjax.maps.MapError`)."""


# ---- units --------------------------------------------------------------------------------------
# Without astropy (the GPU path): the strings the package and the literature cubes write.
_PLAIN_UNITS = {
    "density": {"mag/pc": 1.0, "magpc-1": 1.0, "mag/kpc": 1e-3, "magkpc-1": 1e-3},
    "extinction": {"mag": 1.0},
}
_TARGETS = {"density": "mag / pc", "extinction": "mag"}


def unit_scale(bunit, source, kind: str = "density") -> float:
    """Factor that brings values in ``bunit`` to mag/pc (``kind="density"``) or mag ("extinction").

    A missing or empty BUNIT is taken as already in the target unit. Raises `MapError`
    naming the unit when it is not of the kind asked for.
    """
    if bunit is None or not str(bunit).strip():
        return 1.0
    text = str(bunit).strip()
    try:
        import astropy.units as u
    except ImportError:  # the GPU path: a small table
        key = text.lower().replace(" ", "")
        if key in _PLAIN_UNITS[kind]:
            return _PLAIN_UNITS[kind][key]
        raise MapError(
            f"{source}: BUNIT {text!r} is not understood without astropy (known: "
            f"{sorted(_PLAIN_UNITS[kind])}); install astropy or pass density_scale="
        ) from None
    hint = "; pass density_scale= (mag/pc per unit) to read it anyway" if kind == "density" else ""
    try:
        unit = _parse_unit(text, source)
    except MapError as err:
        raise MapError(f"{err}{hint}") from None
    target = u.Unit(_TARGETS[kind])
    if unit.is_equivalent(target):
        return float(unit.to(target))
    name = f"{text!r} ({unit.to_string()}, {unit.physical_type})"
    if kind == "density" and unit.is_equivalent(u.mag):
        raise MapError(
            f"{source}: BUNIT {name} is an extinction, not a dust density: this is an "
            "extinction map; DustMap needs a density cube in mag/pc (or mag/kpc, ...)"
        )
    if kind == "density" and (unit.is_equivalent(u.cm**-3) or unit.is_equivalent(u.g / u.cm**3)):
        raise MapError(
            f"{source}: BUNIT {name} is a gas density, not an extinction density: converting it "
            "to mag/pc needs an extinction cross-section per particle or per gram (e.g. A_V/N_H), "
            "which the file does not give; pass density_scale= (mag/pc per unit) to convert"
        )
    what = "a dust density" if kind == "density" else "an extinction"
    raise MapError(
        f"{source}: BUNIT {name} is not {what} (expected a unit convertible to "
        f"{target.to_string()}){hint}"
    )


def _parse_unit(text, source):
    import astropy.units as u

    for candidate, fmt in ((text, None), (text, "fits"), (text.lower(), None)):
        try:
            return u.Unit(candidate, format=fmt) if fmt else u.Unit(candidate)
        except ValueError:
            continue
    raise MapError(f"{source}: BUNIT {text!r} is not a unit astropy can parse")


def length_scale(cunit, source) -> float:
    """pc per unit of a length axis (CUNIT); an empty CUNIT means pc."""
    text = str(cunit or "").strip()
    if not text:
        return 1.0
    try:
        import astropy.units as u
    except ImportError:
        scales = {"pc": 1.0, "kpc": 1e3}
        if text.lower() in scales:
            return scales[text.lower()]
        raise MapError(f"{source}: length unit {text!r} not understood (pc or kpc)") from None
    unit = _parse_unit(text, source)
    if not unit.is_equivalent(u.pc):
        raise MapError(f"{source}: axis unit {text!r} is not a length ({unit.physical_type})")
    return float(unit.to(u.pc))


# ---- grids --------------------------------------------------------------------------------------
def grid_kind(header) -> str:
    """ "spherical" (GLON, GLAT, distance axes) or "cartesian" (X, Y, Z or STEP + SUN_POS)."""
    ctypes = [str(header.get(f"CTYPE{i}", "")).strip().upper() for i in (1, 2, 3)]
    if ctypes[0].startswith("GLON") and ctypes[1].startswith("GLAT"):
        return "spherical"
    return "cartesian"


def _vergely_edges(header, n):
    step = float(header["STEP"])
    return tuple(
        -float(header[f"SUN_POS{a}"]) * step + step * np.arange(count + 1)
        for a, count in zip("XYZ", n, strict=True)
    )


def _has_wcs_axes(header) -> bool:
    return all(str(header.get(f"CTYPE{i}", "")).strip() for i in (1, 2, 3))


def _check_axes(kind, header, source):
    ctypes = [str(header.get(f"CTYPE{i}", "")).strip().upper() for i in (1, 2, 3)]
    if kind == "spherical":
        if not ctypes[2].startswith("DIST"):
            raise MapError(
                f"{source}: a GLON/GLAT map needs a distance third axis, got CTYPE3={ctypes[2]!r}"
            )
    elif ctypes != ["X", "Y", "Z"]:
        raise MapError(f"{source}: Cartesian axes (CTYPE1-3) must be X, Y, Z, got {ctypes}")


def _no_grid(source):
    return MapError(
        f"{source}: cannot find the grid: expected a linear WCS with CTYPE X/Y/Z, STEP + "
        "SUN_POSX/Y/Z (Vergely et al. 2022 cubes), or GLON/GLAT/distance axes"
    )


def _checked(edges, source):
    for a, e in enumerate(edges):
        steps = np.diff(e)
        if np.any(steps == 0) or not np.all(np.isfinite(e)):
            raise MapError(f"{source}: cell sizes must be finite and non-zero (axis {a + 1})")
        if not np.allclose(steps, steps[0], rtol=1e-6, atol=0):
            raise MapError(f"{source}: axis {a + 1} is not evenly spaced")
    return tuple(np.asarray(e, np.float64) for e in edges)


def wcs_edges(header, fits_shape, source) -> tuple[str, tuple[np.ndarray, ...]]:
    """``(grid kind, edges)`` of a cube stored ``fits_shape`` (numpy order) through astropy.wcs.

    Edges are pc for X, Y, Z and distance, degrees for l and b, in the file's pixel order (an
    axis with CDELT < 0 gives decreasing edges; `dustjax.maps` flips it).
    """
    n = tuple(int(v) for v in fits_shape[::-1])
    kind = grid_kind(header)
    if not _has_wcs_axes(header):
        if kind == "cartesian" and "STEP" in header and all(f"SUN_POS{a}" in header for a in "XYZ"):
            return kind, _checked(_vergely_edges(header, n), source)
        raise _no_grid(source)
    _check_axes(kind, header, source)
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=3)
        except Exception as err:  # astropy raises several types for broken WCS keywords
            raise MapError(f"{source}: the WCS cannot be read: {err}") from err
    # World coordinates of the cell edges along each pixel axis, the others at their first
    # cell centre (0-based pixel coordinates: cell k spans k - 0.5 .. k + 0.5).
    edges = []
    for a in range(3):
        pix = np.zeros((n[a] + 1, 3))
        pix[:, a] = np.arange(n[a] + 1) - 0.5
        edges.append(wcs.wcs_pix2world(pix, 0)[:, a])
    # Each axis as first edge + k * step (longitudes may wrap through 0/360); the check below
    # holds every edge, and random interior points, to this.
    raw = edges
    edges = []
    for a, world in enumerate(raw):
        steps = np.diff(world)
        if kind == "spherical" and a == 0:
            steps = (steps + 180.0) % 360.0 - 180.0
        # wcslib's trigonometry leaves ~1e-14 deg: snap the step to 12 digits and the first
        # edge to 1e-9 of a cell, so that a header's round numbers stay round (an edge at b = 0
        # stays 0).
        step = float(f"{np.mean(steps):.12g}")
        first = float(np.round(world[0] / abs(step), 9) * abs(step))
        edges.append(first + step * np.arange(len(world)))
    scales = [1.0, 1.0, 1.0] if kind == "spherical" else [None] * 3
    for a in range(3):
        if kind == "cartesian" or a == 2:
            scales[a] = length_scale(wcs.wcs.cunit[a].to_string(), source)
            edges[a] = edges[a] * scales[a]
    # Separable and regular: random interior points must land where the per-axis edges say.
    rng = np.random.default_rng(0)
    pix = rng.uniform(-0.5, np.array(n) - 0.5, (64, 3))
    world = wcs.wcs_pix2world(pix, 0) * np.array(scales)
    for a in range(3):
        step = edges[a][1] - edges[a][0]
        expect = np.concatenate([edges[a][0] + (pix[:, a] + 0.5) * step, edges[a]])
        got = np.concatenate([world[:, a], raw[a] * scales[a]])
        if kind == "spherical" and a == 0:
            got = expect + ((got - expect + 180.0) % 360.0 - 180.0)
        if not np.allclose(got, expect, rtol=0, atol=1e-6 * abs(step)):
            raise MapError(
                f"{source}: the WCS is not a regular grid with one world axis per pixel axis "
                f"(axis {a + 1}, {wcs.wcs.ctype[a]!r}: rotated, skewed, or a sky projection not "
                "linear in l and b such as CAR with CRVAL2 != 0)"
            )
    return kind, _checked(edges, source)


def linear_edges(header, fits_shape, source) -> tuple[np.ndarray, ...]:
    """Edges (pc) of a Cartesian cube from a header dict, in numpy (no astropy): X, Y, Z axes,
    world = CRVAL + M (p - CRPIX) with M = CD, or diag(CDELT) PC, and M diagonal."""
    n = tuple(int(v) for v in fits_shape[::-1])
    if not _has_wcs_axes(header):
        if "STEP" in header and all(f"SUN_POS{a}" in header for a in "XYZ"):
            return _checked(_vergely_edges(header, n), source)
        raise _no_grid(source)
    _check_axes("cartesian", header, source)
    has_cd = any(f"CD{i}_{j}" in header for i in (1, 2, 3) for j in (1, 2, 3))
    matrix = np.zeros((3, 3))
    for i in (1, 2, 3):
        for j in (1, 2, 3):
            if has_cd:
                matrix[i - 1, j - 1] = float(header.get(f"CD{i}_{j}", 0.0))
            else:
                pc = float(header.get(f"PC{i}_{j}", 1.0 if i == j else 0.0))
                matrix[i - 1, j - 1] = float(header.get(f"CDELT{i}", 1.0)) * pc
    if np.any(matrix[~np.eye(3, dtype=bool)] != 0):
        raise MapError(f"{source}: the WCS matrix is not diagonal (a rotated cube)")
    edges = []
    for i in (1, 2, 3):
        scale = length_scale(header.get(f"CUNIT{i}", "pc"), source)
        step = matrix[i - 1, i - 1]
        crpix = float(header.get(f"CRPIX{i}", 0.0))
        pixel_edges = np.arange(n[i - 1] + 1) + 0.5  # 1-based FITS pixels: cell k spans k +- 0.5
        edges.append((float(header.get(f"CRVAL{i}", 0.0)) + step * (pixel_edges - crpix)) * scale)
    return _checked(edges, source)
