"""Star catalogues: read and validate.

A `StarCatalog` holds plain numpy arrays (float64), one entry per star:

- ``xyz_pc`` ``(N, 3)``: heliocentric Galactic Cartesian position (pc; X towards the Galactic
  centre, Y towards l = 90 deg, Z towards the north Galactic pole, methods.md);
- ``l_deg``, ``b_deg`` (deg, l in [0, 360)) and ``distance_pc`` (pc), the same positions;
- ``extinction`` (mag) and ``sigma_extinction`` (mag, > 0);
- ``sigma_distance`` (pc) or ``None`` when the catalogue has no distance errors.

`read_star_catalog` reads FITS, CSV or ECSV through astropy's `Table` (imported lazily: the GPU
path never needs astropy) with configurable column names; `StarCatalog.from_arrays` builds one
from in-memory arrays with exactly the same checks. Both

- raise `CatalogError` naming the missing columns, or the number of rows with a non-positive
  extinction uncertainty, or a negative distance / distance uncertainty;
- drop rows with a NaN / infinite / masked value in any used column, and stars outside the
  requested region, counting each (``num_dropped_nonfinite``, ``num_dropped_outside``) and
  logging one line per kind.

The catalogue is method-agnostic: the V-net path grids it onto a cube
(`dustjax.vnet.gridding.grid_extinction`, eq. 5 of Chen, Qin & Li) and the latent GP
(Dharmawardena et al.) uses its (l, b, distance, A, sigma_A).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dustjax.geometry import cartesian_to_galactic_np, galactic_to_cartesian_np

logger = logging.getLogger(__name__)


class CatalogError(ValueError):
    """A catalogue that cannot be used as given (missing columns, bad uncertainties, ...)."""


# Logical column -> names tried, in order, when the caller does not name the column.
# Matching is case-insensitive. A name given explicitly in `columns` is the only one tried.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "l": ("l", "glon", "l_deg"),
    "b": ("b", "glat", "b_deg"),
    "distance": ("distance", "dist", "d", "distance_pc"),
    "x": ("x", "x_pc"),
    "y": ("y", "y_pc"),
    "z": ("z", "z_pc"),
    "extinction": ("extinction", "e", "a", "a0", "ebv", "av"),
    "sigma_extinction": (
        "sigma_extinction",
        "sigma_e",
        "sigma_a",
        "sigma_a0",
        "e_extinction",
        "extinction_err",
        "sigma_ebv",
        "sigma_av",
    ),
    "sigma_distance": ("sigma_distance", "sigma_d", "sigma_dist", "e_distance", "distance_err"),
}

_POSITION_COLUMNS = {"galactic": ("l", "b", "distance"), "cartesian": ("x", "y", "z")}
_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".fz": "fits",
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
}


@dataclasses.dataclass(frozen=True, eq=False)
class StarCatalog:
    """Stars with positions, extinctions and uncertainties (numpy float64 arrays)."""

    xyz_pc: np.ndarray
    l_deg: np.ndarray
    b_deg: np.ndarray
    distance_pc: np.ndarray
    extinction: np.ndarray
    sigma_extinction: np.ndarray
    sigma_distance: np.ndarray | None = None
    num_read: int = 0
    num_dropped_nonfinite: int = 0
    num_dropped_outside: int = 0
    source: str = "<arrays>"

    def __len__(self) -> int:
        return int(self.extinction.shape[0])

    @property
    def num_dropped(self) -> int:
        return self.num_dropped_nonfinite + self.num_dropped_outside

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        *,
        extinction,
        sigma_extinction,
        l_deg=None,
        b_deg=None,
        distance_pc=None,
        xyz_pc=None,
        sigma_distance=None,
        region=None,
        source: str = "<arrays>",
    ) -> StarCatalog:
        """Build a catalogue from (l, b, distance) or ``xyz_pc``; the checks of `read_star_catalog`.

        Exactly one of the position forms must be given: ``l_deg``, ``b_deg``, ``distance_pc``
        (deg, deg, pc) or ``xyz_pc`` of shape ``(N, 3)`` (pc). ``region`` is as in
        `read_star_catalog`.
        """
        galactic = any(v is not None for v in (l_deg, b_deg, distance_pc))
        if galactic == (xyz_pc is not None):
            raise CatalogError(
                "give the positions either as l_deg, b_deg, distance_pc or as xyz_pc (not both)"
            )
        values: dict[str, np.ndarray] = {}
        if galactic:
            missing = [
                n
                for n, v in (("l_deg", l_deg), ("b_deg", b_deg), ("distance_pc", distance_pc))
                if v is None
            ]
            if missing:
                raise CatalogError(f"galactic positions need {', '.join(missing)} as well")
            values.update(l=l_deg, b=b_deg, distance=distance_pc)
            coords = "galactic"
        else:
            xyz = np.asarray(xyz_pc, dtype=np.float64)
            if xyz.ndim != 2 or xyz.shape[1] != 3:
                raise CatalogError(f"xyz_pc must have shape (N, 3), got {xyz.shape}")
            values.update(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2])
            coords = "cartesian"
        values.update(extinction=extinction, sigma_extinction=sigma_extinction)
        if sigma_distance is not None:
            values["sigma_distance"] = sigma_distance
        return _build(values, coords=coords, region=region, source=source)

    # ---- selections and copies ----------------------------------------------------------------
    def select(self, mask) -> StarCatalog:
        """The stars where the boolean ``mask`` (or integer index array) selects them."""
        return dataclasses.replace(
            self,
            xyz_pc=self.xyz_pc[mask],
            l_deg=self.l_deg[mask],
            b_deg=self.b_deg[mask],
            distance_pc=self.distance_pc[mask],
            extinction=self.extinction[mask],
            sigma_extinction=self.sigma_extinction[mask],
            sigma_distance=None if self.sigma_distance is None else self.sigma_distance[mask],
        )

    def with_extinction(self, extinction) -> StarCatalog:
        """The same stars with other extinctions (e.g. a Monte Carlo redraw), shape ``(N,)``."""
        extinction = np.asarray(extinction, dtype=np.float64)
        if extinction.shape != self.extinction.shape:
            raise CatalogError(
                f"extinction must have shape {self.extinction.shape}, got {extinction.shape}"
            )
        return dataclasses.replace(self, extinction=extinction)

    def summary(self) -> dict[str, Any]:
        """Counts and ranges, for logs and JSON summaries."""
        out: dict[str, Any] = dict(
            source=self.source,
            num_stars=len(self),
            num_read=self.num_read,
            num_dropped_nonfinite=self.num_dropped_nonfinite,
            num_dropped_outside=self.num_dropped_outside,
            has_sigma_distance=self.sigma_distance is not None,
        )
        if len(self):
            out.update(
                distance_pc_range=[float(self.distance_pc.min()), float(self.distance_pc.max())],
                extinction_range=[float(self.extinction.min()), float(self.extinction.max())],
                median_sigma_extinction=float(np.median(self.sigma_extinction)),
            )
        return out

    # ---- output -------------------------------------------------------------------------------
    def to_table(self):
        """An astropy `Table` with columns l, b, distance, x, y, z, extinction, sigma_*."""
        import astropy.units as u
        from astropy.table import Table

        cols = {
            "l": self.l_deg * u.deg,
            "b": self.b_deg * u.deg,
            "distance": self.distance_pc * u.pc,
            "x": self.xyz_pc[:, 0] * u.pc,
            "y": self.xyz_pc[:, 1] * u.pc,
            "z": self.xyz_pc[:, 2] * u.pc,
            "extinction": self.extinction * u.mag,
            "sigma_extinction": self.sigma_extinction * u.mag,
        }
        if self.sigma_distance is not None:
            cols["sigma_distance"] = self.sigma_distance * u.pc
        return Table(cols)


# ---- reading -------------------------------------------------------------------------------------
def read_star_catalog(
    path: str | os.PathLike,
    columns: Mapping[str, str] | None = None,
    *,
    coords: str = "galactic",
    region=None,
    format: str | None = None,
    distance_unit: str = "pc",
    hdu: int | str | None = None,
) -> StarCatalog:
    """Read a star catalogue (FITS, CSV, ECSV) into a `StarCatalog`.

    Args:
      path: the file. Its format comes from the extension (.fits/.fit/.fz, .csv, .ecsv,
        optionally followed by .gz) unless ``format`` (any astropy `Table.read` format, e.g.
        "fits", "ascii.csv", "ascii.ecsv") is given.
      columns: logical name -> column name in the file, for any of "l", "b", "distance", "x",
        "y", "z", "extinction", "sigma_extinction", "sigma_distance". Unnamed logical columns are
        looked up among `DEFAULT_COLUMNS` (case-insensitive). "sigma_distance" is optional.
      coords: "galactic" (l, b in deg; distance) or "cartesian" (heliocentric X, Y, Z).
      region: keep only stars inside it: a `dustjax.geometry.Region` (or anything with
        ``contains(xyz_pc) -> bool array``), a callable ``(catalog_arrays) -> bool mask`` taking
        a dict with keys xyz_pc, l_deg, b_deg, distance_pc, or ``None`` (keep every star).
      distance_unit: unit of distance-like columns that carry no unit in the file ("pc" or
        "kpc"). Columns with astropy units (FITS TUNIT, ECSV) are converted from their own unit.
      hdu: the FITS HDU to read (default: the first table).

    Raises:
      FileNotFoundError: no such file.
      CatalogError: unreadable file, missing columns, non-positive extinction uncertainties,
        negative distances.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"star catalogue {path} does not exist")
    if coords not in _POSITION_COLUMNS:
        raise CatalogError(f"coords must be 'galactic' or 'cartesian', got {coords!r}")
    table_format = format or _format_from_name(path)
    from astropy.table import Table

    kwargs = {"hdu": hdu} if (hdu is not None and table_format == "fits") else {}
    try:
        table = Table.read(path, format=table_format, **kwargs)
    except Exception as err:  # astropy raises many kinds; one clear message is what matters
        raise CatalogError(f"cannot read {path} as {table_format}: {err}") from err

    names = _resolve_columns(table.colnames, columns, coords, path)
    values = {
        key: _column_values(table[name], key, distance_unit, path) for key, name in names.items()
    }
    return _build(values, coords=coords, region=region, source=str(path))


def write_star_catalog(path: str | os.PathLike, catalog: StarCatalog, *, overwrite=True) -> None:
    """Write a catalogue as FITS, CSV or ECSV (from the extension), atomically."""
    from dustjax.io import OutputError, atomic_path

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass overwrite=True to replace it")
    table_format = _format_from_name(path)
    with atomic_path(path) as tmp:
        catalog.to_table().write(tmp, format=table_format, overwrite=True)


def _format_from_name(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _FORMATS:
        return _FORMATS[suffixes[-1]]
    raise CatalogError(
        f"cannot tell the format of {path.name} from its extension; use .fits, .csv or .ecsv, "
        "or pass format= (an astropy Table format such as 'fits', 'ascii.csv', 'ascii.ecsv')"
    )


def _resolve_columns(colnames, columns, coords, path) -> dict[str, str]:
    columns = dict(columns or {})
    known = set(DEFAULT_COLUMNS)
    unknown = sorted(set(columns) - known)
    if unknown:
        raise CatalogError(
            f"unknown logical column(s) {unknown} in columns=; known: {sorted(known)}"
        )
    lower = {c.lower(): c for c in colnames}
    required = (*_POSITION_COLUMNS[coords], "extinction", "sigma_extinction")
    found, missing = {}, []
    for key in (*required, "sigma_distance"):
        candidates = (columns[key],) if key in columns else DEFAULT_COLUMNS[key]
        match = next((lower[c.lower()] for c in candidates if c.lower() in lower), None)
        if match is not None:
            found[key] = match
        elif key in columns or key != "sigma_distance":
            missing.append(f"{key} (looked for {', '.join(repr(c) for c in candidates)})")
    if missing:
        raise CatalogError(
            f"{path.name} is missing column(s): {'; '.join(missing)}. Columns present: "
            f"{', '.join(colnames)}. Name them with columns={{'extinction': 'A0', ...}}"
        )
    return found


def _column_values(column, key: str, distance_unit: str, path: Path) -> np.ndarray:
    """A column as float64 numpy, masked entries -> NaN, converted to deg / pc / mag."""
    import astropy.units as u

    try:
        # Masked entries (FITS TNULL, empty CSV cells) become NaN and are dropped with NaNs.
        values = np.ma.filled(np.ma.asarray(column, dtype=np.float64), np.nan)
    except (TypeError, ValueError) as err:
        raise CatalogError(f"column {column.name!r} ({key}) of {path.name} is not numeric") from err
    if values.ndim != 1:
        raise CatalogError(f"column {column.name!r} ({key}) of {path.name} must be 1-dimensional")
    unit = getattr(column, "unit", None)
    target = {"l": u.deg, "b": u.deg}.get(key, u.pc if key in _LENGTH_KEYS else None)
    if target is not None:
        if unit is None or unit == u.dimensionless_unscaled:
            unit = u.deg if target is u.deg else u.Unit(distance_unit)
        try:
            values = (values * unit).to_value(target)
        except u.UnitConversionError as err:
            raise CatalogError(
                f"column {column.name!r} ({key}) of {path.name} has unit {unit}, "
                f"which cannot be converted to {target}"
            ) from err
    return values


_LENGTH_KEYS = frozenset({"distance", "x", "y", "z", "sigma_distance"})


# ---- validation shared by files and arrays ---------------------------------------------------
def _build(values: dict[str, Any], *, coords: str, region, source: str) -> StarCatalog:
    arrays = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in values.items()}
    sizes = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise CatalogError(f"catalogue columns have different lengths: {sizes}")
    num_read = next(iter(sizes.values()))

    finite = np.ones(num_read, bool)
    for a in arrays.values():
        finite &= np.isfinite(a)
    num_nonfinite = int(num_read - finite.sum())
    if num_nonfinite:
        logger.warning(
            "%s: dropped %d of %d rows with NaN, infinite or masked values",
            source,
            num_nonfinite,
            num_read,
        )
    arrays = {k: a[finite] for k, a in arrays.items()}

    bad_sigma = int(np.sum(arrays["sigma_extinction"] <= 0))
    if bad_sigma:
        raise CatalogError(
            f"{source}: {bad_sigma} row(s) have a non-positive extinction uncertainty "
            "(sigma_extinction <= 0); fix or remove them"
        )
    if "sigma_distance" in arrays:
        bad = int(np.sum(arrays["sigma_distance"] < 0))
        if bad:
            raise CatalogError(f"{source}: {bad} row(s) have a negative distance uncertainty")

    if coords == "galactic":
        bad = int(np.sum(arrays["distance"] < 0))
        if bad:
            raise CatalogError(f"{source}: {bad} row(s) have a negative distance")
        l_deg = np.mod(arrays["l"], 360.0)
        b_deg = arrays["b"]
        if np.any(np.abs(b_deg) > 90.0):
            raise CatalogError(
                f"{source}: {int(np.sum(np.abs(b_deg) > 90))} row(s) have |b| > 90 deg "
                "(is the latitude column in degrees?)"
            )
        distance = arrays["distance"]
        xyz = galactic_to_cartesian_np(l_deg, b_deg, distance)
    else:
        xyz = np.stack([arrays["x"], arrays["y"], arrays["z"]], axis=-1)
        l_deg, b_deg, distance = cartesian_to_galactic_np(xyz)

    _check_plausible(source, distance, arrays["extinction"], arrays["sigma_extinction"])

    keep = np.ones(len(xyz), bool)
    if region is not None:
        keep = _region_mask(
            region, dict(xyz_pc=xyz, l_deg=l_deg, b_deg=b_deg, distance_pc=distance)
        )
    num_outside = int(len(xyz) - keep.sum())
    if num_outside:
        logger.info("%s: dropped %d of %d stars outside the region", source, num_outside, len(xyz))
    sigma_distance = arrays.get("sigma_distance")
    return StarCatalog(
        xyz_pc=np.ascontiguousarray(xyz[keep]),
        l_deg=l_deg[keep],
        b_deg=b_deg[keep],
        distance_pc=distance[keep],
        extinction=arrays["extinction"][keep],
        sigma_extinction=arrays["sigma_extinction"][keep],
        sigma_distance=None if sigma_distance is None else sigma_distance[keep],
        num_read=int(num_read),
        num_dropped_nonfinite=num_nonfinite,
        num_dropped_outside=num_outside,
        source=source,
    )


# Bounds of a plausible catalogue: outside them a unit or a column is almost surely wrong.
PLAUSIBLE_MEDIAN_DISTANCE_PC = (10.0, 100_000.0)  # nearest stars ~1.3 pc; the Galaxy ~30 kpc
PLAUSIBLE_MEDIAN_SIGMA_MAG = (1e-4, 5.0)
MIN_STARS_FOR_SIGN_ERROR = 10


def _check_plausible(source: str, distance, extinction, sigma) -> None:
    """Warn, with the numbers, on a catalogue that reads but is implausible (distances in kpc read
    as pc, flipped extinction signs, uncertainties of another unit); refuse the impossible (every
    extinction negative): the map would be made from clipped values and look like a real one."""
    if len(distance) == 0:
        return
    med_d, lo_d, hi_d = np.median(distance), distance.min(), distance.max()
    if med_d < PLAUSIBLE_MEDIAN_DISTANCE_PC[0]:
        logger.warning(
            "%s: implausible distances: median %.3g pc (range %.3g-%.3g pc) for %d stars; are "
            "they in kpc? give the column a unit or pass distance_unit='kpc' (--distance_unit=kpc)",
            source, med_d, lo_d, hi_d, len(distance),
        )  # fmt: skip
    elif med_d > PLAUSIBLE_MEDIAN_DISTANCE_PC[1]:
        logger.warning(
            "%s: implausible distances: median %.3g pc (range %.3g-%.3g pc), beyond the Galaxy; "
            "are they in pc but read as kpc (distance_unit / the column's unit)?",
            source, med_d, lo_d, hi_d,
        )  # fmt: skip
    negative = int(np.sum(extinction < 0))
    if negative == len(extinction) and negative >= MIN_STARS_FOR_SIGN_ERROR:
        raise CatalogError(
            f"{source}: all {negative} extinctions are negative (median "
            f"{np.median(extinction):.3g} mag); extinction is positive: is the column's sign "
            "flipped, or is it another quantity?"
        )
    if 2 * negative > len(extinction):
        logger.warning(
            "%s: %d of %d extinctions are negative (median %.3g mag); noise makes some negative, "
            "not most: is the column's sign flipped? negative values are clipped to 0 when gridded",
            source, negative, len(extinction), np.median(extinction),
        )  # fmt: skip
    med_s = np.median(sigma)
    if not PLAUSIBLE_MEDIAN_SIGMA_MAG[0] <= med_s <= PLAUSIBLE_MEDIAN_SIGMA_MAG[1]:
        logger.warning(
            "%s: implausible extinction uncertainties: median %.3g mag (range %.3g-%.3g mag), "
            "expected %g-%g mag; is sigma_extinction a variance or in another unit?",
            source, med_s, sigma.min(), sigma.max(), *PLAUSIBLE_MEDIAN_SIGMA_MAG,
        )  # fmt: skip


def _region_mask(region, positions: dict[str, np.ndarray]) -> np.ndarray:
    if hasattr(region, "contains"):
        mask = region.contains(positions["xyz_pc"])
    elif isinstance(region, Callable):
        mask = region(positions)
    else:
        raise CatalogError(
            f"region must be a Region (with .contains) or a callable, got {type(region).__name__}"
        )
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != positions["xyz_pc"].shape[:1]:
        raise CatalogError(f"region mask has shape {mask.shape}, expected ({len(mask)},)")
    return mask


def galactic_box(l_range_deg, b_range_deg, distance_range_pc) -> Callable[[dict], np.ndarray]:
    """A ``region`` for `read_star_catalog`: stars with l, b, distance inside closed ranges.

    ``l_range_deg = (l_min, l_max)`` may wrap through l = 0 (e.g. ``(350, 10)``).
    """
    (l0, l1), (b0, b1), (d0, d1) = l_range_deg, b_range_deg, distance_range_pc
    # Keep l_max = 360 as 360 (not 0) so that (0, 360) means the whole sky.
    l0, l1 = float(l0) % 360.0, (360.0 if float(l1) == 360.0 else float(l1) % 360.0)

    def mask(positions: dict[str, np.ndarray]) -> np.ndarray:
        lon, lat, dist = positions["l_deg"], positions["b_deg"], positions["distance_pc"]
        in_l = (lon >= l0) & (lon <= l1) if l0 <= l1 else (lon >= l0) | (lon <= l1)
        return in_l & (lat >= b0) & (lat <= b1) & (dist >= d0) & (dist <= d1)

    return mask
