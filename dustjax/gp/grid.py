"""The (l, b, d) training grid of the latent GP and its line-of-sight integral (eqs. 6-8).

Dharmawardena et al. (2022, sect. 2.4-2.5) evaluate the GP on a grid regular in Galactic
(spherical) coordinates: ``nl x nb x nd`` cells, each of uniform density. A star in the (l, b)
column ``c`` at distance ``d*`` inside distance cell ``j*`` has the model extinction

    A_mod = sum_{j < j*} rho_{c,j} (d_{j+1} - d_j) + rho_{c,j*} (d* - d_{j*})        (eqs. 7-8)

with ``d_j`` the distance edges (pc) and ``rho`` in mag/pc: the full cells in front of the star
along its column plus the partial last cell. Along the distance axis the grid has three parts:

* ``ghost_cells`` foreground "ghost" cells spanning ``[0, d_min]`` (sect. 2.4): they hold the dust
  in front of the region of interest; no star is placed in them (stars nearer than ``d_min``
  are dropped and counted);
* ``nd`` cells spanning the region of interest ``[d_min, d_max]``;
* ``background_cells`` padding cells of the same width beyond ``d_max`` that do hold stars, so that
  background stars constrain the dust inside the region.

`star_operator` builds the `dustjax.los.StarOperator` of a set of stars: per star, the flat index
of its cell and the length of its partial last cell. `dustjax.los` holds the operator and
`apply_star_operator` with every other line-of-sight integral of the package.

Longitude ranges may wrap through l = 0: ``l_range_deg = (-10, 10)`` and ``(350, 10)`` are the same.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax.numpy as jnp
import numpy as np

from dustjax.los import StarOperator

logger = logging.getLogger(__name__)


class GridError(ValueError):
    """Grid bounds or shapes that do not describe a grid."""


@dataclasses.dataclass(frozen=True)
class LBDGrid:
    """A grid regular in (l, b, d): ``shape = (nl, nb, nd)`` cells over the region of interest.

    Attributes:
      l_range_deg, b_range_deg: Galactic longitude / latitude bounds (deg); l may wrap through 0.
      d_range_pc: distance bounds of the region of interest (pc).
      shape: cells along (l, b, d) inside the region of interest.
      ghost_cells: foreground cells of equal width spanning ``[0, d_min]`` (no stars in them).
      background_cells: padding cells of the region's distance width beyond ``d_max``.
    """

    l_range_deg: tuple[float, float]
    b_range_deg: tuple[float, float]
    d_range_pc: tuple[float, float]
    shape: tuple[int, int, int]
    ghost_cells: int = 0
    background_cells: int = 0

    def __post_init__(self):
        l0, l1 = (float(v) for v in self.l_range_deg)
        b0, b1 = (float(v) for v in self.b_range_deg)
        d0, d1 = (float(v) for v in self.d_range_pc)
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise GridError(f"shape must be three positive cell counts (nl, nb, nd), got {shape}")
        if not 0.0 < l1 - l0 <= 360.0:
            raise GridError(f"l range must satisfy 0 < l_max - l_min <= 360 deg, got {l0, l1}")
        if not -90.0 <= b0 < b1 <= 90.0:
            raise GridError(f"b range must satisfy -90 <= b_min < b_max <= 90 deg, got {b0, b1}")
        if not 0.0 <= d0 < d1:
            raise GridError(f"distance range must satisfy 0 <= d_min < d_max pc, got {d0, d1}")
        if self.ghost_cells < 0 or self.background_cells < 0:
            raise GridError("ghost_cells and background_cells must be >= 0")
        if self.ghost_cells > 0 and d0 == 0.0:
            raise GridError("ghost cells need d_min > 0 (they span [0, d_min])")
        object.__setattr__(self, "l_range_deg", (l0, l1))
        object.__setattr__(self, "b_range_deg", (b0, b1))
        object.__setattr__(self, "d_range_pc", (d0, d1))
        object.__setattr__(self, "shape", shape)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LBDGrid:
        return cls(
            l_range_deg=tuple(d["l_range_deg"]),
            b_range_deg=tuple(d["b_range_deg"]),
            d_range_pc=tuple(d["d_range_pc"]),
            shape=tuple(d["shape"]),
            ghost_cells=int(d.get("ghost_cells", 0)),
            background_cells=int(d.get("background_cells", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(
            l_range_deg=list(self.l_range_deg),
            b_range_deg=list(self.b_range_deg),
            d_range_pc=list(self.d_range_pc),
            shape=list(self.shape),
            ghost_cells=self.ghost_cells,
            background_cells=self.background_cells,
        )

    def with_shape(self, shape, ghost_cells=None) -> LBDGrid:
        """The same bounds with other cell counts (the finer "prediction grid" of sect. 2.4)."""
        return dataclasses.replace(
            self,
            shape=tuple(shape),
            ghost_cells=self.ghost_cells if ghost_cells is None else ghost_cells,
        )

    # ---- axes -----------------------------------------------------------------------------------
    @property
    def full_shape(self) -> tuple[int, int, int]:
        """(nl, nb, nd_total): the modelled cells, ghost and background cells included."""
        nl, nb, nd = self.shape
        return (nl, nb, self.ghost_cells + nd + self.background_cells)

    @property
    def num_cells(self) -> int:
        return int(np.prod(self.full_shape))

    @property
    def num_columns(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def roi_slice(self) -> slice:
        """Index range of the region-of-interest cells along the full distance axis."""
        return slice(self.ghost_cells, self.ghost_cells + self.shape[2])

    def l_edges_deg(self) -> np.ndarray:
        return np.linspace(*self.l_range_deg, self.shape[0] + 1)

    def b_edges_deg(self) -> np.ndarray:
        return np.linspace(*self.b_range_deg, self.shape[1] + 1)

    def d_edges_pc(self) -> np.ndarray:
        """All ``nd_total + 1`` distance edges (pc): ghost, region of interest, background."""
        d0, d1 = self.d_range_pc
        nd = self.shape[2]
        width = (d1 - d0) / nd
        parts = []
        if self.ghost_cells:
            parts.append(np.linspace(0.0, d0, self.ghost_cells + 1)[:-1])
        parts.append(np.linspace(d0, d1, nd + 1))
        if self.background_cells:
            parts.append(d1 + width * np.arange(1, self.background_cells + 1))
        return np.concatenate(parts)

    def d_widths_pc(self) -> np.ndarray:
        return np.diff(self.d_edges_pc())

    @staticmethod
    def _centres(edges):
        return 0.5 * (edges[:-1] + edges[1:])

    def l_centres_deg(self) -> np.ndarray:
        return np.mod(self._centres(self.l_edges_deg()), 360.0)

    def b_centres_deg(self) -> np.ndarray:
        return self._centres(self.b_edges_deg())

    def d_centres_pc(self) -> np.ndarray:
        return self._centres(self.d_edges_pc())

    def cell_centres_lbd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(l, b, d) of every cell centre, each of shape ``full_shape``."""
        return tuple(
            np.meshgrid(
                self.l_centres_deg(), self.b_centres_deg(), self.d_centres_pc(), indexing="ij"
            )
        )

    def cell_centres_xyz(self) -> np.ndarray:
        """Heliocentric XYZ (pc) of every cell centre, ``(nl * nb * nd_total, 3)`` float64."""
        from dustjax.geometry import galactic_to_cartesian_np

        lon, lat, dist = self.cell_centres_lbd()
        return galactic_to_cartesian_np(lon, lat, dist).reshape(-1, 3)

    def column_solid_angle_sr(self) -> np.ndarray:
        """Solid angle (sr) of each (l, b) column, ``(nl, nb)``: dl (sin b1 - sin b0)."""
        dl = np.deg2rad(np.diff(self.l_edges_deg()))
        sinb = np.sin(np.deg2rad(self.b_edges_deg()))
        return dl[:, None] * np.diff(sinb)[None, :]

    # ---- stars ----------------------------------------------------------------------------------
    def locate(self, l_deg, b_deg, distance_pc):
        """Column index, full-axis distance cell index and in-grid mask for stars (numpy).

        A star is inside when its (l, b) falls in the grid and ``d_min <= d <= d_max +
        background`` (never in the ghost cells). Points on the far faces belong to the last cell.
        """
        l0, l1 = self.l_range_deg
        b0, b1 = self.b_range_deg
        nl, nb, _ = self.shape
        d_edges = self.d_edges_pc()
        l_off = np.mod(np.asarray(l_deg, np.float64) - l0, 360.0)
        # l exactly at l_max with a full-sky grid, or numerical wrap, maps to the last cell.
        span = l1 - l0
        l_off = np.where(np.isclose(l_off, 360.0) & (span >= 360.0), span, l_off)
        il = np.minimum(np.floor(l_off / span * nl).astype(np.int64), nl - 1)
        b = np.asarray(b_deg, np.float64)
        ib = np.minimum(np.floor((b - b0) / (b1 - b0) * nb).astype(np.int64), nb - 1)
        d = np.asarray(distance_pc, np.float64)
        jd = np.searchsorted(d_edges, d, side="right") - 1
        jd = np.minimum(jd, len(d_edges) - 2)
        inside = (
            (l_off <= span + 1e-12)
            & (b >= b0)
            & (b <= b1)
            & (d >= self.d_range_pc[0])
            & (d <= d_edges[-1])
            & np.isfinite(d)
        )
        column = np.where(inside, il * nb + np.clip(ib, 0, nb - 1), 0)
        jd = np.where(inside, jd, 0)
        return column.astype(np.int64), jd.astype(np.int64), inside

    def star_operator(self, l_deg, b_deg, distance_pc, *, dtype=None) -> StarOperator:
        """The eq. 7-8 operator for stars that lie inside; raises if any star is outside.

        Use `select_inside` first to drop (and count) stars outside the grid. The partial path
        lengths are computed in float64 and stored in ``dtype``; by default JAX's widest float
        (float64 when ``jax_enable_x64`` is on, else float32), so float64 runs are not rounded
        through float32.
        """
        dtype = np.dtype(jnp.result_type(float) if dtype is None else dtype)
        flat_index, partial = self.star_operator_arrays(l_deg, b_deg, distance_pc, dtype=dtype)
        return StarOperator(
            flat_index=jnp.asarray(flat_index),
            partial_pc=jnp.asarray(partial),
            d_widths_pc=jnp.asarray(self.d_widths_pc().astype(dtype)),
            full_shape=self.full_shape,
        )

    def star_operator_arrays(self, l_deg, b_deg, distance_pc, *, dtype) -> tuple[np.ndarray, ...]:
        """`star_operator`'s ``flat_index`` (int32) and ``partial_pc`` (``dtype``) as host
        (numpy) arrays, for callers that pad or split them before they go to the devices."""
        column, cell, inside = self.locate(l_deg, b_deg, distance_pc)
        if not np.all(inside):
            raise GridError(
                f"{int(np.sum(~inside))} star(s) lie outside the grid; drop them with "
                "LBDGrid.select_inside first"
            )
        nd_total = self.full_shape[2]
        partial = np.asarray(distance_pc, np.float64) - self.d_edges_pc()[cell]
        return (column * nd_total + cell).astype(np.int32), partial.astype(np.dtype(dtype))

    def select_inside(self, catalog):
        """Keep the stars of a `dustjax.catalog.StarCatalog` inside the grid; log the count."""
        _, _, inside = self.locate(catalog.l_deg, catalog.b_deg, catalog.distance_pc)
        dropped = int(np.sum(~inside))
        if dropped:
            logger.warning(
                "dropped %d of %d stars outside the grid (l %s, b %s, d %s pc, ghost cells "
                "hold no stars)",
                dropped,
                len(inside),
                self.l_range_deg,
                self.b_range_deg,
                (self.d_range_pc[0], float(self.d_edges_pc()[-1])),
            )
        return catalog.select(inside), dropped

    def __str__(self) -> str:
        nl, nb, nd = self.shape
        return (
            f"LBDGrid l {self.l_range_deg} deg x b {self.b_range_deg} deg x d {self.d_range_pc} pc,"
            f" {nl}x{nb}x{nd} cells + {self.ghost_cells} ghost + {self.background_cells} "
            "background distance cells"
        )
