"""Regions of space and the Galactic <-> heliocentric Cartesian transforms.

Frame (methods.md, Chen, Qin & Li sect. 2): heliocentric Cartesian, X towards the Galactic centre,
Y in the plane towards l = 90 deg, Z towards the north Galactic pole; the Sun at the origin;
every length in pc.

A `Region` is an axis-aligned box of uniform cells: `lower_pc`/`upper_pc` bound it and `shape`
counts the cells per axis. Cell (i, j, k) spans
``lower + (i, j, k) * cell_size`` to ``lower + (i + 1, j + 1, k + 1) * cell_size`` and its value is
indexed ``cube[i, j, k]`` (axis 0 = X, axis 1 = Y, axis 2 = Z).

Three pairs of transforms are provided for (l, b, d) <-> XYZ: `galactic_to_cartesian` /
`cartesian_to_galactic` in jax.numpy (usable inside jit), `*_np` in numpy float64 (catalogues, the
GP grid, map queries), and `*_astropy` through astropy's Galactic frame for the I/O boundary; the
tests check that they agree. `PC_CM` is the one parsec-to-cm constant of the package.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

# One parsec in cm: the IAU 2012 value, exactly astropy.constants.pc.cgs (a test checks it), typed
# here so that the GPU path needs no astropy.
PC_CM = 3.0856775814913673e18

# The two regions of the V-net paper (sect. 2): 32^3 cells, towards the Galactic anticentre.
_NAMED_REGIONS: dict[str, dict[str, Any]] = {
    "SR": dict(lower_pc=(-192.0, -96.0, -96.0), upper_pc=(0.0, 96.0, 96.0), shape=(32, 32, 32)),
    "LR": dict(
        lower_pc=(-1920.0, -960.0, -960.0), upper_pc=(0.0, 960.0, 960.0), shape=(32, 32, 32)
    ),
}


class RegionError(ValueError):
    """Bounds or shape that do not describe a region."""


@dataclasses.dataclass(frozen=True)
class Region:
    """An axis-aligned box of ``shape`` uniform cells between ``lower_pc`` and ``upper_pc``."""

    lower_pc: tuple[float, float, float]
    upper_pc: tuple[float, float, float]
    shape: tuple[int, int, int]
    name: str = "custom"

    def __post_init__(self):
        lower = _triple(self.lower_pc, "lower_pc", float)
        upper = _triple(self.upper_pc, "upper_pc", float)
        shape = _triple(self.shape, "shape", int)
        for axis, lo, hi, n in zip("XYZ", lower, upper, shape, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise RegionError(f"{axis} bounds must be finite, got [{lo}, {hi}] pc")
            if hi <= lo:
                raise RegionError(
                    f"{axis} bounds are empty or inverted: lower {lo} pc >= upper {hi} pc"
                )
            if n < 1:
                raise RegionError(f"shape along {axis} must be a positive cell count, got {n}")
        object.__setattr__(self, "lower_pc", lower)
        object.__setattr__(self, "upper_pc", upper)
        object.__setattr__(self, "shape", shape)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def named(cls, name: str) -> Region:
        """The paper's regions: "SR" (6 pc cells) or "LR" (60 pc cells), 32^3 each."""
        key = str(name).upper()
        if key not in _NAMED_REGIONS:
            raise RegionError(f"unknown region {name!r}; known regions: {sorted(_NAMED_REGIONS)}")
        return cls(name=key, **_NAMED_REGIONS[key])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        return cls(
            lower_pc=tuple(d["lower_pc"]),
            upper_pc=tuple(d["upper_pc"]),
            shape=tuple(d["shape"]),
            name=d.get("name", "custom"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(
            name=self.name,
            lower_pc=list(self.lower_pc),
            upper_pc=list(self.upper_pc),
            shape=list(self.shape),
            cell_size_pc=list(self.cell_size_pc),
        )

    def with_shape(self, shape: tuple[int, int, int]) -> Region:
        """The same box cut into a different number of cells (e.g. 64^3 or 128^3)."""
        return Region(self.lower_pc, self.upper_pc, tuple(shape), name=f"{self.name}@{shape}")

    # ---- geometry -----------------------------------------------------------------------------
    @property
    def cell_size_pc(self) -> tuple[float, float, float]:
        return tuple(
            (hi - lo) / n
            for lo, hi, n in zip(self.lower_pc, self.upper_pc, self.shape, strict=True)
        )

    @property
    def num_cells(self) -> int:
        return int(np.prod(self.shape))

    @property
    def cell_volume_pc3(self) -> float:
        return float(np.prod(self.cell_size_pc))

    def edges_pc(self, axis: int) -> np.ndarray:
        """The ``shape[axis] + 1`` cell edges along one axis (pc)."""
        return np.linspace(self.lower_pc[axis], self.upper_pc[axis], self.shape[axis] + 1)

    def centres_pc(self, axis: int) -> np.ndarray:
        """The ``shape[axis]`` cell centres along one axis (pc)."""
        e = self.edges_pc(axis)
        return 0.5 * (e[:-1] + e[1:])

    def cell_centres_pc(self) -> np.ndarray:
        """All cell centres, shape ``(nx, ny, nz, 3)`` (pc)."""
        grids = np.meshgrid(*(self.centres_pc(a) for a in range(3)), indexing="ij")
        return np.stack(grids, axis=-1)

    def contains(self, xyz_pc) -> np.ndarray:
        """Whether points ``(..., 3)`` lie inside the closed box."""
        xyz = np.asarray(xyz_pc)
        lo, hi = np.asarray(self.lower_pc), np.asarray(self.upper_pc)
        return np.all((xyz >= lo) & (xyz <= hi), axis=-1)

    @property
    def contains_sun(self) -> bool:
        return bool(self.contains(np.zeros(3)))

    def cell_index(self, xyz_pc) -> np.ndarray:
        """Integer cell indices ``(..., 3)`` of points; -1 on axes where a point is outside."""
        xyz = np.asarray(xyz_pc, dtype=np.float64)
        lo = np.asarray(self.lower_pc)
        size = np.asarray(self.cell_size_pc)
        n = np.asarray(self.shape)
        idx = np.floor((xyz - lo) / size).astype(np.int64)
        # Points exactly on the upper face belong to the last cell.
        on_upper = np.isclose(xyz, np.asarray(self.upper_pc))
        idx = np.where(on_upper, n - 1, idx)
        return np.where((idx >= 0) & (idx < n), idx, -1)

    def __str__(self) -> str:
        bounds = ", ".join(
            f"{a} [{lo:g}, {hi:g}]"
            for a, lo, hi in zip("XYZ", self.lower_pc, self.upper_pc, strict=True)
        )
        cells = "x".join(map(str, self.shape))
        size = "x".join(f"{s:g}" for s in self.cell_size_pc)
        return f"Region {self.name}: {bounds} pc, {cells} cells of {size} pc"


def _triple(value, what: str, kind):
    try:
        items = tuple(value)
    except TypeError as err:
        raise RegionError(f"{what} must be three numbers (X, Y, Z), got {value!r}") from err
    if len(items) != 3:
        raise RegionError(f"{what} must be three numbers (X, Y, Z), got {len(items)}")
    try:
        out = tuple(kind(v) for v in items)
    except (TypeError, ValueError) as err:
        raise RegionError(f"{what} must be numbers, got {value!r}") from err
    if kind is int and any(float(v) != int(v) for v in items):
        raise RegionError(f"{what} must be whole numbers, got {value!r}")
    return out


# ---- coordinates (jax.numpy: inside jit) --------------------------------------------------------
def galactic_to_cartesian(l_deg, b_deg, distance_pc):
    """Galactic (l, b in deg; distance in pc) -> heliocentric XYZ ``(..., 3)`` in pc."""
    l_rad = jnp.deg2rad(l_deg)
    b_rad = jnp.deg2rad(b_deg)
    cos_b = jnp.cos(b_rad)
    return jnp.stack(
        [
            distance_pc * cos_b * jnp.cos(l_rad),
            distance_pc * cos_b * jnp.sin(l_rad),
            distance_pc * jnp.sin(b_rad),
        ],
        axis=-1,
    )


def cartesian_to_galactic(xyz_pc):
    """Heliocentric XYZ ``(..., 3)`` in pc -> (l in [0, 360) deg, b in deg, distance in pc)."""
    x, y, z = xyz_pc[..., 0], xyz_pc[..., 1], xyz_pc[..., 2]
    distance = jnp.sqrt(x**2 + y**2 + z**2)
    l_deg = jnp.mod(jnp.rad2deg(jnp.arctan2(y, x)), 360.0)
    b_deg = jnp.rad2deg(jnp.arctan2(z, jnp.hypot(x, y)))
    return l_deg, b_deg, distance


# ---- coordinates (numpy float64: catalogues, the GP grid, map queries) ------------------------
def galactic_to_cartesian_np(l_deg, b_deg, distance_pc) -> np.ndarray:
    """As `galactic_to_cartesian`, in numpy float64 (the jnp one runs in float32 unless x64)."""
    l_rad, b_rad = np.deg2rad(l_deg), np.deg2rad(b_deg)
    d = np.asarray(distance_pc, dtype=np.float64)
    cos_b = np.cos(b_rad)
    return np.stack(
        [d * cos_b * np.cos(l_rad), d * cos_b * np.sin(l_rad), d * np.sin(b_rad)], axis=-1
    )


def cartesian_to_galactic_np(xyz_pc):
    """As `cartesian_to_galactic`, in numpy float64: (l in [0, 360) deg, b deg, distance pc)."""
    xyz = np.asarray(xyz_pc, dtype=np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    distance = np.sqrt(x**2 + y**2 + z**2)
    l_deg = np.mod(np.rad2deg(np.arctan2(y, x)), 360.0)
    b_deg = np.rad2deg(np.arctan2(z, np.hypot(x, y)))
    return l_deg, b_deg, distance


# ---- coordinates (astropy: at the I/O boundary) -------------------------------------------------
def galactic_to_cartesian_astropy(l_deg, b_deg, distance_pc) -> np.ndarray:
    """As `galactic_to_cartesian`, through astropy's heliocentric Galactic frame."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    c = SkyCoord(
        l=np.asarray(l_deg) * u.deg,
        b=np.asarray(b_deg) * u.deg,
        distance=np.asarray(distance_pc) * u.pc,
        frame="galactic",
    )
    cart = c.cartesian
    return np.stack([cart.x.to_value(u.pc), cart.y.to_value(u.pc), cart.z.to_value(u.pc)], -1)


def skycoord_to_cartesian(coords) -> np.ndarray:
    """Any astropy `SkyCoord` with distances (any frame) -> heliocentric Galactic XYZ in pc."""
    import astropy.units as u

    gal = coords.transform_to("galactic")
    if gal.distance.unit.physical_type != "length":
        raise ValueError("coordinates need distances (a length unit) to be placed in 3D")
    cart = gal.cartesian
    return np.stack([cart.x.to_value(u.pc), cart.y.to_value(u.pc), cart.z.to_value(u.pc)], -1)


def cartesian_to_galactic_astropy(xyz_pc):
    """As `cartesian_to_galactic`, through astropy: returns (l deg, b deg, distance pc)."""
    import astropy.units as u
    from astropy.coordinates import CartesianRepresentation, SkyCoord

    xyz = np.asarray(xyz_pc)
    rep = CartesianRepresentation(xyz[..., 0] * u.pc, xyz[..., 1] * u.pc, xyz[..., 2] * u.pc)
    c = SkyCoord(rep, frame="galactic")
    return (
        c.l.wrap_at(360 * u.deg).to_value(u.deg),
        c.b.to_value(u.deg),
        c.distance.to_value(u.pc),
    )
