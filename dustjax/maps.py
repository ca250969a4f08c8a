"""Dust maps you can query: `DustMap.from_fits(path).query(coords)`, in the habits of `dustmaps`.

Two grids are understood:

- **Cartesian** cubes (V-net maps, literature cubes): uniform cells in heliocentric Galactic X, Y,
  Z (pc). Written by `write_cartesian_map` with a linear WCS (CTYPE ``X``/``Y``/``Z``, CUNIT
  ``pc``, CRVAL = centre of the first cell) *and* the keywords of the Vergely et al. (2022) /
  Lallement et al. (2022) cubes, ``STEP`` (pc per cell) and ``SUN_POSX/Y/Z`` (the Sun's position
  in cells from the lower edge: the lower edge of the cube lies at ``-SUN_POS * STEP``). Either
  convention is read. FITS stores the cube as ``(nz, ny, nx)``; in memory it is ``[ix, iy, iz]``.
- **Spherical** (GLON, GLAT, distance) cubes (GP maps): axes ``GLON-*``, ``GLAT-*`` and a
  distance axis (CTYPE ``DIST*``, CUNIT pc or kpc), regular in each coordinate.

Headers are read by `dustjax.mapwcs`: through `astropy.wcs` for FITS files (any equivalent WCS:
CDELT, CD, PC + CDELT), in numpy for header dicts; BUNIT through `astropy.units` (mag/pc, mag/kpc,
...; an extinction map or a gas density is refused, naming the unit).

`DustMap.query(coords)` takes an astropy `SkyCoord` in any frame (without distances it returns the
profile at `DustMap.distances`; modes, ``pct``, ``return_flags``, ``query_gal`` and ``query_equ``
follow `dustmaps`, see `DustMap.query`); it returns the density (mag/pc) of the cell holding each
point, or with ``integrated=True`` the extinction (mag) from the Sun to the point: the exact
integral of the piecewise-constant density along the segment (Cartesian: the segment-crossing kernel
of `dustjax.los`; spherical: the full distance cells in front of the point plus the partial last
one, eqs. 7-8 of Dharmawardena et al.). Dust outside the map is unknown and counts as zero. Points
outside the map give NaN and one warning per call. Where the map carries an uncertainty extension
(``UNCERT`` for density, ``EXTUNC`` for integrated extinction), ``return_uncertainty=True`` returns
it as well (the value of the cell holding the point). A spherical map whose distance axis starts
beyond the Sun may carry its foreground, the extinction from the Sun to the first distance edge per
(l, b) pixel (GP maps fitted with ghost cells: ``FG_P50``, its uncertainty from
``FG_P16``/``FG_P84``); integrated queries add it.

Both integrals are `dustjax.los`'s: `integrate_to_points` (the kernel of `los_operator`) on
Cartesian maps and `apply_star_operator` (eqs. 7-8) on spherical ones. `integrate_cartesian` is kept
as the name existing callers use for the first.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dustjax import los, mapwcs
from dustjax.geometry import Region
from dustjax.mapwcs import MapError


class OutsideMapWarning(UserWarning):
    """Some queried points lie outside the map (their values are NaN)."""


# ---- exact integration to arbitrary points (Cartesian) ----------------------------------------
def integrate_cartesian(density, lower_pc, cell_pc, xyz_pc, *, chunk: int = 65536) -> jax.Array:
    """Extinction (mag) from the Sun to each point of ``xyz_pc`` ``(N, 3)`` through ``density``.

    ``density`` ``(nx, ny, nz)`` (mag/pc) fills cells of size ``cell_pc`` from ``lower_pc``. Kept
    for existing callers: the integral is `dustjax.los.integrate_to_points` (same kernel as
    `dustjax.los.los_operator`, which it equals at cell centres).
    """
    return los._integrate_points(density, lower_pc, cell_pc, xyz_pc, chunk=chunk)


# ---- writing ------------------------------------------------------------------------------------
def cartesian_header(region: Region, *, bunit: str = "mag/pc", extra: dict | None = None):
    """FITS header of a Cartesian cube: linear WCS (X, Y, Z in pc) + STEP/SUN_POS keywords."""
    from astropy.io import fits

    h = fits.Header()
    for axis, name in enumerate("XYZ", start=1):
        a = axis - 1
        cell = region.cell_size_pc[a]
        h[f"CTYPE{axis}"] = (name, f"heliocentric Galactic {name}")
        h[f"CUNIT{axis}"] = "pc"
        h[f"CRPIX{axis}"] = 1.0
        h[f"CRVAL{axis}"] = (region.lower_pc[a] + 0.5 * cell, "centre of the first cell (pc)")
        h[f"CDELT{axis}"] = (cell, "cell size (pc)")
    for a, name in enumerate("XYZ"):
        h[f"SUN_POS{name}"] = (
            -region.lower_pc[a] / region.cell_size_pc[a],
            f"Sun {name} in cells from the lower edge",
        )
    sizes = region.cell_size_pc
    if np.allclose(sizes, sizes[0]):
        h["STEP"] = (sizes[0], "cell size (pc)")
    h["BUNIT"] = bunit
    h["REGION"] = (region.name, "dustjax region name")
    h["MAPGRID"] = ("cartesian", "dustjax map grid")
    for key, value in (extra or {}).items():
        h[key] = value
    return h


def write_cartesian_map(
    path: str | os.PathLike,
    region: Region,
    density,
    *,
    uncertainty=None,
    extinction=None,
    extinction_uncertainty=None,
    header: dict | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a density cube ``(nx, ny, nz)`` (mag/pc) and optional extensions, atomically.

    Extensions (same WCS): ``UNCERT`` density uncertainty (mag/pc), ``EXTINCT`` the extinction
    cube (mag), ``EXTUNC`` its uncertainty (mag). ``header`` adds keywords to the primary HDU.
    """
    from astropy.io import fits

    from dustjax.io import write_fits

    def hdu(cube, name, bunit, primary=False):
        cube = np.asarray(cube, np.float32)
        if cube.shape != tuple(region.shape):
            raise MapError(f"{name} has shape {cube.shape}, expected {tuple(region.shape)}")
        h = cartesian_header(region, bunit=bunit, extra=header if primary else None)
        data = np.ascontiguousarray(cube.transpose(2, 1, 0))
        if primary:
            return fits.PrimaryHDU(data, header=h)
        return fits.ImageHDU(data, header=h, name=name)

    hdus = [hdu(density, "DENSITY", "mag/pc", primary=True)]
    for cube, name, unit in (
        (uncertainty, "UNCERT", "mag/pc"),
        (extinction, "EXTINCT", "mag"),
        (extinction_uncertainty, "EXTUNC", "mag"),
    ):
        if cube is not None:
            hdus.append(hdu(cube, name, unit))
    write_fits(path, hdus, overwrite=overwrite)
    return Path(path)


# ---- reading and querying -----------------------------------------------------------------------
QUERY_CHUNK = 1 << 16  # points a query evaluates at once (bounds its memory)


@dataclasses.dataclass(frozen=True, eq=False)
class DustMap:
    """A 3D dust density map on a Cartesian or spherical (l, b, d) grid.

    Attributes:
      grid: "cartesian" or "spherical".
      density: ``(n0, n1, n2)`` mag/pc; axes (X, Y, Z) or (l, b, distance).
      edges: three arrays of cell edges: pc for X, Y, Z; deg, deg, pc for l, b, distance.
      uncertainty: density uncertainty (mag/pc), same shape, or None.
      extinction_uncertainty: uncertainty of the integrated extinction at each cell (mag), or None.
      meta: primary header keywords (for provenance).
      foreground: spherical maps: ``(n0, n1)`` extinction (mag) from the Sun to the first
        distance edge per (l, b) pixel, added to integrated queries; None: zero.
      foreground_uncertainty: its uncertainty (mag), ``(n0, n1)``, or None.
      samples: ``(K, n0, n1, n2)`` posterior density samples (mag/pc, GP maps: ``SAMPLES``), or
        None; integrated queries take their percentiles over these (see `query`).
      foreground_samples: ``(K, n0, n1)`` the foreground of each sample (mag), or None.
    """

    grid: str
    density: np.ndarray
    edges: tuple[np.ndarray, np.ndarray, np.ndarray]
    uncertainty: np.ndarray | None = None
    extinction_uncertainty: np.ndarray | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    foreground: np.ndarray | None = None
    foreground_uncertainty: np.ndarray | None = None
    samples: np.ndarray | None = None
    foreground_samples: np.ndarray | None = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_region(cls, region: Region, density, **kw) -> DustMap:
        edges = tuple(region.edges_pc(a) for a in range(3))
        return cls("cartesian", np.asarray(density, np.float32), edges, **kw)

    @classmethod
    def from_array(cls, data, header, *, density_scale: float | None = None, source="<array>"):
        """A Cartesian map from a FITS-ordered array ``(nz, ny, nx)`` and its header as a dict.

        The same WCS reading as `from_fits` (linear X, Y, Z axes, CUNIT pc or kpc, axes with
        CDELT < 0 flipped, ``density_scale`` from BUNIT by default), with no astropy: for cubes
        kept as ``.npy`` + header (`load_cartesian_cube`).
        """
        data = np.asarray(data, np.float32)
        if data.ndim != 3:
            raise MapError(f"{source}: the cube must be 3D, got shape {data.shape}")
        if density_scale is None:
            density_scale = mapwcs.unit_scale(header.get("BUNIT"), source, "density")
        if mapwcs.grid_kind(header) != "cartesian":
            raise MapError(f"{source}: from_array reads Cartesian (X, Y, Z) cubes only")
        edges = mapwcs.linear_edges(header, data.shape, source)
        flips = tuple(a for a in range(3) if edges[a][-1] < edges[a][0])
        edges = tuple(e[::-1].copy() if a in flips else e for a, e in enumerate(edges))
        cube = np.flip(data.T, axis=flips) if flips else data.T
        meta = {k: v for k, v in header.items() if not isinstance(v, dict | list)}
        density = np.ascontiguousarray(cube) * np.float32(density_scale)
        return cls("cartesian", density, edges, meta=meta)

    @classmethod
    def from_fits(cls, path: str | os.PathLike, *, density_scale: float | None = None) -> DustMap:
        """Read a map written by this package (V-net or GP) or a Vergely/Lallement-style cube.

        ``density_scale`` multiplies the density to bring it to mag/pc; by default it comes from
        BUNIT ("mag/pc" -> 1, "mag/kpc" -> 1e-3) and is 1 when BUNIT is absent.
        """
        from astropy.io import fits

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"map {path} does not exist")
        try:
            hdul = fits.open(path, memmap=False)
        except OSError as err:
            raise MapError(f"{path} is not a readable FITS file: {err}") from err
        with hdul:
            primary = _first_image(hdul, path)
            header = primary.header
            explicit_scale = density_scale
            grid, edges = mapwcs.wcs_edges(header, primary.data.shape, path)

            # Axes stored with decreasing coordinates (e.g. CDELT1 < 0 for GLON) are flipped so
            # that every edge array increases.
            flips = tuple(a for a in range(3) if edges[a][-1] < edges[a][0])
            edges = tuple(e[::-1].copy() if a in flips else e for a, e in enumerate(edges))

            def cube(hdu, kind="density"):
                # Each image in its own BUNIT (the primary's when it has none), or the caller's
                # density_scale for every density image.
                bunit = hdu.header.get("BUNIT", header.get("BUNIT") if kind == "density" else None)
                if kind == "density" and explicit_scale is not None:
                    scale = explicit_scale
                else:
                    scale = mapwcs.unit_scale(bunit, f"{path} [{hdu.name}]", kind)
                data = np.asarray(hdu.data, np.float32).T
                if data.shape != tuple(len(e) - 1 for e in edges[: data.ndim]):
                    raise MapError(f"{path}: extension {hdu.name} has another shape than the map")
                axes = tuple(a for a in flips if a < data.ndim)
                data = np.flip(data, axis=axes) if axes else data
                return np.ascontiguousarray(data) * np.float32(scale)

            names = {h.name.upper(): h for h in hdul[1:]}
            uncertainty = ext_unc = None
            if "UNCERT" in names:
                uncertainty = cube(names["UNCERT"])
            elif "P16" in names and "P84" in names:  # GP maps: half the 16-84 percentile range
                uncertainty = 0.5 * (cube(names["P84"]) - cube(names["P16"]))
            if "EXTUNC" in names:
                ext_unc = cube(names["EXTUNC"], "extinction")
            ext_unc = _gp_extinction_uncertainty(path, cube) if ext_unc is None else ext_unc
            foreground = fg_unc = None
            if grid == "spherical" and "FG_P50" in names:  # dustjax.gp.output
                foreground = cube(names["FG_P50"], "extinction")
                if "FG_P16" in names and "FG_P84" in names:
                    fg_unc = 0.5 * (
                        cube(names["FG_P84"], "extinction") - cube(names["FG_P16"], "extinction")
                    )
            samples = fg_samples = None
            if "SAMPLES" in names:  # (K, n2, n1, n0) in numpy order -> (K, n0, n1, n2)
                planes = [_Plane(names["SAMPLES"], k) for k in range(len(names["SAMPLES"].data))]
                samples = np.stack([cube(plane) for plane in planes])
                if "FG_SAMP" in names:
                    fg_samples = np.stack(
                        [
                            cube(_Plane(names["FG_SAMP"], k), "extinction")
                            for k in range(len(planes))
                        ]
                    )
            return cls(
                grid=grid,
                density=cube(primary),
                edges=edges,
                uncertainty=uncertainty,
                extinction_uncertainty=ext_unc,
                meta={k: header[k] for k in header if k not in ("COMMENT", "HISTORY", "")},
                foreground=foreground,
                foreground_uncertainty=fg_unc,
                samples=samples,
                foreground_samples=fg_samples,
            )

    # ---- geometry -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.density.shape)

    @property
    def region(self) -> Region:
        """The Cartesian box of the map (Cartesian maps only)."""
        if self.grid != "cartesian":
            raise MapError("only Cartesian maps have a Cartesian region")
        return Region(
            tuple(float(e[0]) for e in self.edges),
            tuple(float(e[-1]) for e in self.edges),
            self.shape,
            name=str(self.meta.get("REGION", "map")),
        )

    def cell_of(self, xyz_pc) -> tuple[np.ndarray, np.ndarray]:
        """Cell indices ``(N, 3)`` of points ``(N, 3)`` (pc) and whether each is inside."""
        xyz = np.asarray(xyz_pc, np.float64).reshape(-1, 3)
        if self.grid == "cartesian":
            coords = xyz.T
        else:
            from dustjax.geometry import cartesian_to_galactic_np

            lon, lat, dist = cartesian_to_galactic_np(xyz)
            l0 = self.edges[0][0]
            lon = l0 + np.mod(lon - l0, 360.0)  # l grids may start below 0 or wrap past 360
            coords = (lon, lat, dist)
        idx = np.empty((len(xyz), 3), np.int64)
        inside = np.ones(len(xyz), bool)
        for a in range(3):
            e = self.edges[a]
            i = np.searchsorted(e, coords[a], side="right") - 1
            i = np.where(coords[a] == e[-1], len(e) - 2, i)  # upper face: last cell
            inside &= (i >= 0) & (i < len(e) - 1)
            idx[:, a] = np.clip(i, 0, len(e) - 2)
        return idx, inside

    # ---- queries ------------------------------------------------------------------------------
    MODES = (
        "median",
        "mean",
        "best",
        "percentile",
        "samples",
        "random_sample",
        "random_sample_per_pix",
    )
    SAMPLE_MODES = ("mean", "percentile", "samples", "random_sample", "random_sample_per_pix")

    def query(
        self,
        coords,
        integrated: bool = False,
        return_uncertainty: bool = False,
        mode: str = "median",
        pct=None,
        rng=None,
        return_flags: bool = False,
        chunk: int = QUERY_CHUNK,
        model_error: bool = True,
    ):
        """Density (mag/pc) or, with ``integrated=True``, extinction (mag) at `SkyCoord` points.

        ``coords``: an astropy `SkyCoord` (or frame) in any frame and representation (ICRS, FK5,
        Galactic, Galactocentric, Cartesian ...; it is transformed to Galactic first). With
        distances, the result has ``coords.shape``; without, it is the profile along each sight
        line at `distances` (the map's distance bins), shape ``coords.shape + (len(distances),)``,
        as `dustmaps`' 3D maps return. A scalar coordinate gives a numpy scalar. Points outside
        the map give NaN (and one `OutsideMapWarning`).

        ``mode`` follows `dustmaps` (`BayestarQuery.query`); the modes marked * need posterior
        samples (`num_samples` > 0: GP maps carry them in ``SAMPLES``), and a map without them
        raises `MapError` saying so:

        * ``"median"`` (default): density: the map's cube (a GP map's P50, the exact marginal
          median); integrated: with samples, the median of the samples' integrals (a sum of
          log-normal cells is not the sum of their medians), else the integral of the cube;
        * ``"best"``: the map's cube and its integral (V-net: the prediction; GP: the posterior
          median cube, exp of the posterior mean of the log density);
        * ``"mean"`` *: the mean over the samples;
        * ``"percentile"`` *: the ``pct`` percentile(s) (0-100) over the samples; a scalar
          ``pct`` gives no extra axis, a sequence a trailing axis of ``len(pct)``;
        * ``"samples"`` *: every sample, on a trailing axis of length `num_samples`;
        * ``"random_sample"`` *: one sample drawn per coordinate (without distances: per sight
          line, so a profile is one sample's);
        * ``"random_sample_per_pix"`` *: one sample drawn per map pixel (the (l, b) pixel of a
          spherical map, the cell of a Cartesian one), shared by all points in it.

        ``rng`` (a seed or `numpy.random.Generator`) drives the random modes. With
        ``return_uncertainty=True`` (modes median and best) the uncertainty follows the value:
        half the 16-84 % range of the samples' integrals, or the stored ``UNCERT``/``EXTUNC``.
        With ``return_flags=True`` a structured array of ``coords.shape`` follows last: with
        distances ``inside`` (the point lies in the map) and ``reliable_dist`` (the same here;
        Bayestar's name, so that code written for it runs); without distances ``inside`` (the
        sight line crosses the map) and ``min_reliable_distmod`` / ``max_reliable_distmod``, the
        distance moduli of the nearest and farthest profile distances inside the map (NaN if
        none). Work goes ``chunk`` points at a time (10^6 points stay well under 500 MB).

        ``model_error`` (GP maps, integrated queries): the posterior samples hold only what the
        model knows; the fit's model error (header keywords ``CALFRAC``/``CALFLOOR``, calibrated
        on held-out stars, else the learned ``MEFRAC``/``MEFLOOR``; `extinction_model_error`)
        adds N(0, (f A)^2 + s^2) to the extinction, after the samples' own spread is scaled by
        the calibration's ``CALSCALE`` (default 1). With True (default) the percentiles and the
        uncertainty of integrated queries from samples include it (each percentile moved away
        from the median in quadrature by z_p sqrt((f A)^2 + s^2), z_p the normal quantile): the
        bands of the true extinction, as the pipeline's extinction cubes and star bands.
        ``"samples"`` and ``"random_sample"`` stay the model's own draws.
        """
        gal = _galactic(coords)
        has_distance = _has_distance(gal)
        scalar = gal.isscalar
        flat = gal.reshape((1,)) if scalar else gal.reshape((gal.size,))
        self._check_mode(mode, pct, return_uncertainty)
        generator = np.random.default_rng(rng)
        table = self._pixel_draws(generator) if mode == "random_sample_per_pix" else None
        profile = None if has_distance else self.profile_distances_pc
        per_line = 1 if profile is None else len(profile)
        lines = max(1, int(chunk) // per_line)
        value = sigma = None
        inside = np.empty((len(flat), per_line), bool)
        for start in range(0, max(len(flat), 1), lines):  # one empty pass for empty coords
            stop = min(start + lines, len(flat))
            xyz = _galactic_xyz_pc(flat[start:stop], has_distance)
            if profile is not None:  # unit vectors -> points at each profile distance
                xyz = (xyz[:, None, :] * profile[None, :, None]).reshape(-1, 3)
            pick = None
            if mode == "random_sample":
                pick = np.repeat(generator.integers(0, self.num_samples, stop - start), per_line)
            v, s, ins = self._evaluate(
                xyz, integrated, return_uncertainty, mode, pct, pick, table, model_error
            )
            if value is None:
                value = np.empty((len(flat), per_line) + v.shape[1:], v.dtype)
                sigma = None if s is None else np.empty((len(flat), per_line), s.dtype)
            value[start:stop] = v.reshape((stop - start, per_line) + v.shape[1:])
            if s is not None:
                sigma[start:stop] = s.reshape(stop - start, per_line)
            inside[start:stop] = ins.reshape(stop - start, per_line)
        missed = ~inside.any(axis=1) if profile is not None else ~inside[:, 0]
        if missed.any():
            what = "sight lines miss" if profile is not None else "points lie outside"
            warnings.warn(
                f"{int(missed.sum())} of {len(flat)} {what} the map; their values are NaN",
                OutsideMapWarning,
                stacklevel=2,
            )

        def shaped(arr):
            arr = arr[:, 0] if profile is None else arr
            return arr[0] if scalar else arr.reshape(gal.shape + arr.shape[1:])

        out = [shaped(value)]
        if return_uncertainty:
            out.append(shaped(sigma))
        if return_flags:
            flags = self._flags(inside, profile)
            out.append(flags[0] if scalar else flags.reshape(gal.shape))
        return out[0] if len(out) == 1 else tuple(out)

    __call__ = query

    def query_gal(self, l, b, d=None, **kwargs):  # noqa: E741 (dustmaps' signature)
        """`query` at Galactic ``l``, ``b`` (degrees, or Quantities) and distance ``d`` (kpc, or
        a Quantity; None: the distance profile), as `dustmaps.map_base.DustMap.query_gal`."""
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        lon, lat = _quantity(l, u.deg), _quantity(b, u.deg)
        dist = None if d is None else _quantity(d, u.kpc)
        return self.query(SkyCoord(lon, lat, distance=dist, frame="galactic"), **kwargs)

    def query_equ(self, ra, dec, d=None, frame="icrs", **kwargs):
        """`query` at equatorial ``ra``, ``dec`` (degrees, or Quantities) in ``frame`` ("icrs",
        "fk5", "fk4", "fk4noeterms", or any astropy frame with ra/dec) and distance ``d`` (kpc,
        or a Quantity; None: the distance profile), as `dustmaps`' ``query_equ``."""
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        ra, dec = _quantity(ra, u.deg), _quantity(dec, u.deg)
        dist = None if d is None else _quantity(d, u.kpc)
        return self.query(SkyCoord(ra, dec, distance=dist, frame=frame), **kwargs)

    @property
    def num_samples(self) -> int:
        """Posterior samples the map carries (0: none)."""
        return 0 if self.samples is None else len(self.samples)

    @property
    def profile_distances_pc(self) -> np.ndarray:
        """Distances (pc) of the profile a query without distances returns: the centres of the
        distance cells of a spherical map; for a Cartesian map, steps of its smallest cell size
        from the Sun to its farthest corner (centres of those steps)."""
        if self.grid == "spherical":
            e = self.edges[2]
            return 0.5 * (e[:-1] + e[1:])
        step = min(float(e[1] - e[0]) for e in self.edges)
        corners = np.array(np.meshgrid(*[(e[0], e[-1]) for e in self.edges])).reshape(3, -1)
        far = float(np.linalg.norm(corners, axis=0).max())
        return (np.arange(int(np.ceil(far / step))) + 0.5) * step

    @property
    def distances(self):
        """`profile_distances_pc` as an astropy Quantity (as `dustmaps`' ``distances``)."""
        import astropy.units as u

        return self.profile_distances_pc * u.pc

    def query_xyz(
        self,
        xyz_pc,
        integrated: bool = False,
        return_uncertainty: bool = False,
        mode: str = "median",
        pct=None,
        rng=None,
        chunk: int = QUERY_CHUNK,
        model_error: bool = True,
    ):
        """As `query` for heliocentric Galactic XYZ ``(N, 3)`` in pc (no astropy needed)."""
        self._check_mode(mode, pct, return_uncertainty)
        xyz = np.asarray(xyz_pc, np.float64).reshape(-1, 3)
        generator = np.random.default_rng(rng)
        table = self._pixel_draws(generator) if mode == "random_sample_per_pix" else None
        pick = None
        if mode == "random_sample":
            pick = generator.integers(0, self.num_samples, len(xyz))
        parts = []
        for start in range(0, max(len(xyz), 1), max(1, int(chunk))):
            part = slice(start, start + int(chunk))
            parts.append(
                self._evaluate(
                    xyz[part],
                    integrated,
                    return_uncertainty,
                    mode,
                    pct,
                    None if pick is None else pick[part],
                    table,
                    model_error,
                )  # fmt: skip
            )
        inside = np.concatenate([p[2] for p in parts]) if parts else np.ones(0, bool)
        if not inside.all():
            warnings.warn(
                f"{int((~inside).sum())} of {len(xyz)} points lie outside the map; their "
                "values are NaN",
                OutsideMapWarning,
                stacklevel=2,
            )
        value = np.concatenate([p[0] for p in parts])
        if return_uncertainty:
            return value, np.concatenate([p[1] for p in parts])
        return value

    # ---- query internals ----------------------------------------------------------------------
    def _check_mode(self, mode, pct, return_uncertainty):
        if mode not in self.MODES:
            raise MapError(f"mode must be one of {self.MODES}, got {mode!r}")
        if mode in self.SAMPLE_MODES and self.samples is None:
            raise MapError(
                f"mode={mode!r} needs posterior samples, and this map carries none (no SAMPLES "
                "extension: V-net maps and GP maps written without predict.posterior_samples); "
                "use mode='median' or 'best' (the map's cube)"
            )
        if mode == "percentile":
            if pct is None:
                raise MapError("mode='percentile' needs pct (a number or a sequence, in %)")
            p = np.asarray(pct, np.float64)
            if p.ndim > 1 or np.any((p < 0) | (p > 100)) or not np.all(np.isfinite(p)):
                raise MapError(f"pct must be a number or a 1D sequence in [0, 100], got {pct!r}")
        if return_uncertainty and mode not in ("median", "best"):
            raise MapError("return_uncertainty goes with mode='median' or 'best'")

    def _pixel_draws(self, generator) -> np.ndarray:
        """One sample index per map pixel (random_sample_per_pix)."""
        n = self.shape[0] * self.shape[1] * (1 if self.grid == "spherical" else self.shape[2])
        return generator.integers(0, self.num_samples, n)

    def _evaluate(
        self, xyz, integrated, return_uncertainty, mode, pct, pick, table, model_error=True
    ):
        """``(value (N, ...), uncertainty (N,) or None, inside (N,))`` for points ``(N, 3)``."""
        idx, inside = self.cell_of(xyz)
        if table is not None:
            pixel = idx[:, 0] * self.shape[1] + idx[:, 1]
            if self.grid == "cartesian":
                pixel = pixel * self.shape[2] + idx[:, 2]
            pick = table[pixel]
        per_sample = None
        if mode in self.SAMPLE_MODES or (
            mode == "median" and integrated and self.samples is not None
        ):
            per_sample = self._sample_values(xyz, idx, integrated, pick)
            per_sample = np.where(inside[:, None], per_sample, np.nan)
        if mode == "samples":
            return per_sample, None, inside
        if pick is not None:  # random_sample, random_sample_per_pix: one column per point
            return per_sample[:, 0], None, inside
        if mode == "mean":
            return per_sample.mean(axis=1), None, inside
        widen = (
            integrated
            and model_error
            and (any(self.extinction_model_error()) or self.extinction_band_scale() != 1.0)
        )
        if mode == "percentile":
            q = np.asarray(pct, np.float64)
            out = np.percentile(per_sample, q, axis=1)  # (len(q), N) or (N,)
            if widen:
                from scipy.stats import norm

                med = np.median(per_sample, axis=1)
                z = norm.ppf(q / 100.0).reshape(np.shape(q) + (1,) * (out.ndim - np.ndim(q)))
                extra = z**2 * self._model_error_variance(med)
                c2 = self.extinction_band_scale() ** 2
                out = med + np.where(z < 0, -1.0, 1.0) * np.sqrt(c2 * (out - med) ** 2 + extra)
            return (np.moveaxis(out, 0, -1) if np.ndim(pct) else out), None, inside
        if per_sample is not None:  # median of the samples' integrals
            value = np.median(per_sample, axis=1)
        elif integrated:
            value = self._integrate(xyz, idx)
        else:
            value = self.density[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
        value = np.where(inside, value, np.nan)
        if not return_uncertainty:
            return value, None, inside
        if per_sample is not None:
            p16, p84 = np.percentile(per_sample, [16.0, 84.0], axis=1)
            half = 0.5 * (p84 - p16)
            if widen:
                c2 = self.extinction_band_scale() ** 2
                half = np.sqrt(c2 * half**2 + self._model_error_variance(value))
            return value, half, inside
        source = self.extinction_uncertainty if integrated else self.uncertainty
        if source is None:
            what = "integrated extinction" if integrated else "density"
            raise MapError(f"this map carries no {what} uncertainty")
        sigma = source[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
        return value, np.where(inside, sigma, np.nan), inside

    def _flags(self, inside, profile) -> np.ndarray:
        """dustmaps-style QA flags per coordinate from ``inside`` ``(N, per_line)``."""
        if profile is None:
            flags = np.empty(len(inside), [("inside", "?"), ("reliable_dist", "?")])
            flags["inside"] = flags["reliable_dist"] = inside[:, 0]
            return flags
        dtype = [("inside", "?"), ("min_reliable_distmod", "f4"), ("max_reliable_distmod", "f4")]
        flags = np.empty(len(inside), dtype)
        distmod = 5.0 * np.log10(profile) - 5.0  # profile in pc
        any_inside = inside.any(axis=1)
        first = np.argmax(inside, axis=1)
        last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
        flags["inside"] = any_inside
        flags["min_reliable_distmod"] = np.where(any_inside, distmod[first], np.nan)
        flags["max_reliable_distmod"] = np.where(any_inside, distmod[last], np.nan)
        return flags

    def extinction_model_error(self) -> tuple[float, float]:
        """(f, s): the model error of a GP map's extinctions beyond its posterior samples: the
        calibrated one (``CALFRAC``, ``CALFLOOR``), which replaces a learned term, else the
        learned one (``MEFRAC``, ``MEFLOOR``) (`dustjax.gp.pipeline.extinction_model_error`);
        (0, 0) for maps without them."""
        m = self.meta
        for f_key, s_key in (("CALFRAC", "CALFLOOR"), ("MEFRAC", "MEFLOOR")):
            if f_key in m:
                return float(m[f_key]), float(m.get(s_key, 0.0))
        return 0.0, 0.0

    def extinction_band_scale(self) -> float:
        """The calibration's factor on the posterior samples' own spread of integrated
        extinctions (``CALSCALE``, `dustjax.gp.calibration.calibrate_bands`; < 1 narrows an
        over-wide posterior); 1 for maps without it."""
        return float(self.meta.get("CALSCALE", 1.0))

    def _model_error_variance(self, extinction):
        f, s = self.extinction_model_error()
        return (f * np.asarray(extinction, np.float64)) ** 2 + s**2

    def _sample_values(self, xyz, idx, integrated, pick=None):
        """``(N, K)``: each posterior sample's density at, or integral to, the points; with
        ``pick`` ``(N,)``, ``(N, 1)``: only the picked sample of each point."""
        if pick is not None:
            out = np.empty((len(xyz), 1))
            for k in np.unique(pick):
                rows = pick == k
                out[rows, 0] = self._one_sample(xyz[rows], idx[rows], integrated, k)
            return out
        out = np.empty((len(xyz), self.num_samples))
        for k in range(self.num_samples):
            out[:, k] = self._one_sample(xyz, idx, integrated, k)
        return out

    def _one_sample(self, xyz, idx, integrated, k):
        if not integrated:
            return self.samples[k][idx[:, 0], idx[:, 1], idx[:, 2]]
        fg = self.foreground  # the median foreground where draws of it are missing
        fg = fg if self.foreground_samples is None else self.foreground_samples[k]
        return self._integrate(xyz, idx, self.samples[k], fg)

    def _integrate(self, xyz, idx, density=None, foreground=None):
        if density is None:
            density, foreground = self.density, self.foreground
        if self.grid == "cartesian":
            # Bound the kernel's (points x crossings) work arrays to ~4M elements a chunk.
            chunk = int(np.clip(2 ** int(np.log2(4e6 / sum(self.shape))), 256, 65536))
            ext = los.integrate_to_points(density, self.edges, xyz, chunk=chunk)
            return np.asarray(ext, np.float64)
        # Spherical: the foreground (Sun to the first distance edge), the full distance cells in
        # front and the partial last one (eqs. 7-8), in float64.
        d_edges = self.edges[2]
        j = idx[:, 2]
        dist = np.linalg.norm(xyz, axis=-1)
        partial = np.clip(dist - d_edges[j], 0.0, np.diff(d_edges)[j])
        flat_index = (idx[:, 0] * self.shape[1] + idx[:, 1]) * self.shape[2] + j
        density = np.asarray(density, np.float64)
        ext = los.apply_star_operator(density, flat_index, partial, np.diff(d_edges), xp=np)
        fg = 0.0
        if foreground is not None:
            fg = foreground[idx[:, 0], idx[:, 1]].astype(np.float64)
        return fg + ext


def _galactic(coords):
    """Any astropy SkyCoord or frame -> Galactic (transform first: a Galactocentric or Cartesian
    coordinate has no ``distance`` attribute of its own until then)."""
    try:
        from astropy.coordinates import BaseCoordinateFrame, Galactic, SkyCoord
    except ImportError as err:  # pragma: no cover - astropy is a dependency
        raise MapError("querying SkyCoords needs astropy; use query_xyz") from err
    if not isinstance(coords, SkyCoord | BaseCoordinateFrame):
        raise TypeError(f"coords must be an astropy SkyCoord, got {type(coords).__name__}")
    return coords.transform_to(Galactic())


def _has_distance(gal) -> bool:
    from astropy.coordinates import UnitSphericalRepresentation

    if isinstance(gal.data, UnitSphericalRepresentation):
        return False
    unit = gal.data.norm().unit
    if unit.physical_type == "length":
        return True
    if unit.physical_type == "dimensionless":
        return False
    raise MapError(f"coordinates' distances must be lengths, got {unit}")


def _galactic_xyz_pc(gal, has_distance) -> np.ndarray:
    """``(N, 3)`` heliocentric Galactic X, Y, Z (pc), or unit vectors without distances."""
    import astropy.units as u

    if has_distance:
        return np.asarray(gal.cartesian.xyz.to_value(u.pc), np.float64).T
    from astropy.coordinates import UnitSphericalRepresentation

    unit = gal.data.represent_as(UnitSphericalRepresentation).to_cartesian()
    return np.asarray(unit.xyz.value, np.float64).T


def _quantity(value, unit):
    import astropy.units as u

    return value if isinstance(value, u.Quantity) else np.asarray(value, np.float64) * unit


@dataclasses.dataclass(frozen=True)
class _Plane:
    """Sample ``k`` of a FITS image with a trailing sample axis, read like an HDU."""

    hdu: Any
    k: int

    @property
    def data(self):
        return self.hdu.data[self.k]

    @property
    def name(self):
        return f"{self.hdu.name}[{self.k}]"

    @property
    def header(self):
        return self.hdu.header


def _gp_extinction_uncertainty(path: Path, cube):
    """GP maps (`dustjax.gp.output`): ``extinction.fits`` next to ``density.fits`` holds the
    integrated-extinction percentiles on the same grid; half their 16-84 range, or None."""
    sibling = path.with_name("extinction.fits")
    if path.name != "density.fits" or not sibling.is_file():
        return None
    from astropy.io import fits

    with fits.open(sibling, memmap=False) as ext:
        names = {h.name.upper(): h for h in ext[1:]}
        if "P16" not in names or "P84" not in names:
            return None
        return 0.5 * (cube(names["P84"], "extinction") - cube(names["P16"], "extinction"))


def _first_image(hdul, path):
    """The map's main cube: the median ``P50`` of a GP map, else the first 3D image."""
    for hdu in hdul:
        if hdu.name.upper() == "P50" and hdu.data is not None and hdu.data.ndim == 3:
            return hdu
    for hdu in hdul:
        if hdu.data is not None and getattr(hdu.data, "ndim", 0) == 3:
            return hdu
    raise MapError(f"{path} holds no 3D image (a dust map cube)")


def load_cartesian_cube(path: str | os.PathLike, density_scale: float | None = None) -> DustMap:
    """A Cartesian density cube from FITS, or from ``NAME.npy`` + ``NAME.header.json`` (the FITS
    header as JSON; no astropy needed). Blank (NaN) or negative cells become 0 mag/pc, with one
    warning (surveys leave holes); ``meta["NUMBAD"]`` counts them."""
    import json
    import logging

    path = Path(path)
    if path.suffix.lower() == ".npy":
        header_path = path.with_name(path.name[: -len(".npy")] + ".header.json")
        if not header_path.is_file():
            raise MapError(f"{path} needs its header beside it as {header_path.name}")
        header = json.loads(header_path.read_text())
        dustmap = DustMap.from_array(
            np.load(path), header, density_scale=density_scale, source=path
        )
    else:
        dustmap = DustMap.from_fits(path, density_scale=density_scale)
        if dustmap.grid != "cartesian":
            raise MapError(f"{path} is not a Cartesian (X, Y, Z) cube")
    bad = ~np.isfinite(dustmap.density) | (dustmap.density < 0)
    if not bad.any():
        return dustmap
    logging.getLogger(__name__).warning(
        "%s: %d of %d cells are NaN or negative; set to 0", path, bad.sum(), bad.size
    )
    density = np.where(bad, 0.0, dustmap.density).astype(np.float32)
    meta = dict(dustmap.meta, NUMBAD=int(bad.sum()))
    return DustMap("cartesian", density, dustmap.edges, meta=meta)


def regrid_nearest(dustmap: DustMap, region: Region, smooth: bool | None = None) -> np.ndarray:
    """A Cartesian map's density on `region`'s cells: nearest cell, smoothed first if coarser.

    ``smooth=None`` smooths exactly when the region's cells are larger than the map's along some
    axis, with a Gaussian of FWHM sqrt(cell^2 - step^2) on that axis (so the result has the
    region's resolution, as the paper does for LR). Raises `MapError` if the map does not
    cover every cell centre of the region.
    """
    import math

    if dustmap.grid != "cartesian":
        raise MapError("literature cubes must be Cartesian (X, Y, Z) grids")
    centres = [region.centres_pc(a) for a in range(3)]
    steps = np.array([np.mean(np.diff(e)) for e in dustmap.edges])
    for a, name in enumerate("XYZ"):
        lo, hi = dustmap.edges[a][0], dustmap.edges[a][-1]
        if centres[a][0] < lo or centres[a][-1] > hi:
            raise MapError(
                f"the cube covers {name} in [{lo:g}, {hi:g}] pc but the region's cell centres "
                f"span [{centres[a][0]:g}, {centres[a][-1]:g}] pc: it does not cover {region}"
            )
    # Index of the cube cell holding each region cell centre, per axis.
    index = [
        np.clip(np.searchsorted(dustmap.edges[a], centres[a], side="right") - 1, 0, None)
        for a in range(3)
    ]
    index = [np.minimum(i, dustmap.shape[a] - 1) for a, i in enumerate(index)]
    cell = np.asarray(region.cell_size_pc)
    sigma_pix = np.sqrt(np.clip(cell**2 - steps**2, 0.0, None)) / (2 * math.sqrt(2 * math.log(2)))
    sigma_pix = sigma_pix / steps
    do_smooth = bool(np.any(sigma_pix > 0)) if smooth is None else bool(smooth)
    if not do_smooth:
        return dustmap.density[np.ix_(*index)].astype(np.float32)
    from scipy.ndimage import gaussian_filter

    # Smooth only a crop around the region (padded by 4 sigma): the 2022 cubes are large.
    pad = np.ceil(4 * sigma_pix).astype(int) + 1
    lo = [max(int(i.min()) - p, 0) for i, p in zip(index, pad, strict=True)]
    hi = [min(int(i.max()) + p + 1, n) for i, p, n in zip(index, pad, dustmap.shape, strict=True)]
    crop = dustmap.density[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float64)
    smoothed = gaussian_filter(crop, sigma=sigma_pix, mode="nearest")
    local = [i - o for i, o in zip(index, lo, strict=True)]
    return smoothed[np.ix_(*local)].astype(np.float32)
