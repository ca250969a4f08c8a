"""Where the latent GP's kernel lives: heliocentric XYZ (the paper) or log-spherical coordinates.

The paper's kernel is stationary in heliocentric Cartesian XYZ: one scale length everywhere. On a
grid regular in (l, b, d), and with the extinction of a star integrating all the dust in front of
it, that spends the resolution evenly over the *volume*, where the data ask for it evenly over
*solid angle and distance*: a cloud at 140 pc shadows a sixth of the sky of a 30-degree field for
every star behind it, yet the near part of the wedge holds a few per cent of the volume (and so of
the inducing points placed at star positions).

``"log_spherical"`` maps a point (l, b, d) to

    u = d_ref * (dl cos b, b, ln(d / d_ref))          (dl = l - l_centre, wrapped to +-180 deg)

in pc at the reference distance ``d_ref``: near d, a step of u is a physical step of
(d / d_ref) u in every direction (a conformal map up to the cos b factor), so a stationary kernel
in u has a physical scale length proportional to distance, and inducing points spread evenly in
u are spread evenly in (l, b, ln d). ``d_ref`` and ``l_centre`` come from the grid (the geometric
mean of its distance range and the middle of its longitude range), so stars and cells share them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dustjax.geometry import galactic_to_cartesian_np

KINDS = ("xyz", "log_spherical")


@dataclasses.dataclass(frozen=True)
class KernelCoords:
    """A map from (l, b, d) to the kernel's coordinates (pc), see the module docstring."""

    kind: str = "xyz"
    l_centre_deg: float = 0.0
    d_ref_pc: float = 300.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kernel coordinates must be one of {KINDS}, got {self.kind!r}")
        if self.d_ref_pc <= 0:
            raise ValueError("d_ref_pc must be positive")

    @classmethod
    def for_grid(cls, grid, kind: str = "xyz") -> KernelCoords:
        l0, l1 = grid.l_range_deg
        d0, d1 = grid.d_range_pc
        return cls(kind, float((l0 + l1) / 2.0), float(math.sqrt(max(d0, 1.0) * d1)))

    def __call__(self, l_deg, b_deg, distance_pc) -> np.ndarray:
        """Points ``(..., 3)`` (pc, float64) in the kernel's coordinates."""
        if self.kind == "xyz":
            return galactic_to_cartesian_np(l_deg, b_deg, distance_pc)
        dl = np.mod(np.asarray(l_deg, np.float64) - self.l_centre_deg + 180.0, 360.0) - 180.0
        b = np.deg2rad(np.asarray(b_deg, np.float64))
        d = np.maximum(np.asarray(distance_pc, np.float64), 1e-3)
        return self.d_ref_pc * np.stack(
            [np.deg2rad(dl) * np.cos(b), b, np.log(d / self.d_ref_pc)], axis=-1
        )

    def grid_cells(self, grid) -> np.ndarray:
        """The grid's cell centres ``(num_cells, 3)`` in the kernel's coordinates."""
        return self(*grid.cell_centres_lbd()).reshape(-1, 3)

    def stars(self, catalog) -> np.ndarray:
        return self(catalog.l_deg, catalog.b_deg, catalog.distance_pc).reshape(-1, 3)
