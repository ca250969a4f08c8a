"""POLARIS projections and targets (Ribeiro 2025, sect. 2.1, eqs. 2-3) and the network's units.

Units: number densities n in cm^-3, column densities N in cm^-2, lengths in pc. Networks see
log10 quantities shifted by fixed constants (`model_input`; the targets by `LOG10_DENSITY_SHIFT`,
`dustjax.polaris.data.to_model_batch`); metrics are in log10.
"""

from __future__ import annotations

import jax.numpy as jnp

from dustjax.geometry import PC_CM

#: Names of the column density feature and the three targets in datasets and batches.
COLUMN = "column_density"
TARGETS = {
    "mass_weighted": "density_mass_weighted",  # <n>_M = sum n^2 / sum n (eq. 3)
    "volume_weighted": "density_volume_weighted",  # <n>_V = N / L (eq. 2)
    "max": "density_max",  # max_z n
}
FEATURE_NAMES = (COLUMN, *TARGETS.values())

#: Shifts that centre the network's log10 inputs and outputs near zero.
LOG10_COLUMN_SHIFT = 21.5  # log10(N / cm^-2)
LOG10_DENSITY_SHIFT = 2.5  # log10(n / cm^-3)


def project(density, axis: int, cell_size_pc: float) -> dict:
    """Column density and the three line-of-sight targets of a cube along one axis.

    Args:
      density: (nx, ny, nz) number density, cm^-3.
      axis: line-of-sight axis (0, 1 or 2); the image keeps the other two axes in order.
      cell_size_pc: cell size (pc); dz in cm = cell_size_pc * PC_CM.

    Returns:
      dict of 2D maps: column_density N = sum n dz (cm^-2); density_mass_weighted
      <n>_M = sum n^2 / sum n (eq. 3); density_volume_weighted <n>_V = mean n = N / L (eq. 2);
      density_max = max n (all cm^-3).
    """
    density = jnp.asarray(density)
    if density.ndim != 3:
        raise ValueError(f"density must be a 3D cube, got shape {density.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    total = jnp.sum(density, axis=axis)
    return {
        COLUMN: total * (cell_size_pc * PC_CM),
        TARGETS["mass_weighted"]: jnp.sum(density**2, axis=axis) / total,
        TARGETS["volume_weighted"]: total / density.shape[axis],
        TARGETS["max"]: jnp.max(density, axis=axis),
    }


def model_input(column_density):
    """Network input: log10(N / cm^-2) - LOG10_COLUMN_SHIFT."""
    return jnp.log10(column_density) - LOG10_COLUMN_SHIFT


def log10_density_from_output(output):
    """The network output without its `LOG10_DENSITY_SHIFT`: log10(n / cm^-3)."""
    return output + LOG10_DENSITY_SHIFT
