"""Star catalogues sampled from a simulated dust cube: the apply path with no download.

`demo_catalog(region, num_stars, seed)`:

1. simulates a density cube (mag/pc) with the region's training simulator (`dustjax.sims`:
   Levy flights for SR, the log-normal field for LR), or takes the one given;
2. places stars uniformly in the region's volume (true positions);
3. gives each star its true extinction, the exact integral of the density from the Sun to the
   star (`dustjax.los.integrate_to_points`);
4. adds realistic errors. Distances: Gaia-like parallax errors, sigma_parallax log-normal around
   ``parallax_error_mas`` (default 0.05 mas, scatter 0.5 dex), so sigma_d = d^2 sigma_parallax
   (d in kpc, parallax in mas: sigma_d/d = d[kpc] sigma_parallax[mas]): about 1% at 200 pc and
   10% at 2 kpc; the observed distance is d + N(0, sigma_d), kept positive. Extinctions:
   sigma_E uniform in ``sigma_extinction_range`` (default 0.03-0.12 mag, typical of Gaia XP
   catalogues such as Zhang et al. 2023); the observed E is E_true + N(0, sigma_E).

Everything runs in numpy/JAX in memory (no astropy), so the GPU benchmark uses it directly;
`dustjax.catalog.write_star_catalog` writes it out as FITS/CSV/ECSV.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from dustjax.catalog import StarCatalog
from dustjax.geometry import Region, cartesian_to_galactic_np, galactic_to_cartesian_np
from dustjax.los import integrate_to_points


@dataclasses.dataclass(frozen=True)
class DemoCatalog:
    """The observed catalogue, the true density cube and the stars' true values."""

    catalog: StarCatalog
    density: np.ndarray
    true_xyz_pc: np.ndarray
    true_extinction: np.ndarray


def simulated_density(region: Region, seed: int = 0, simulator: str | None = None) -> np.ndarray:
    """One density cube (mag/pc) from the region's training simulator."""
    from dustjax import sims

    name = simulator or sims.default_simulator(region)
    # one program, not ~20 eager ones each traced and lowered again in every process (issue 22)
    simulate = jax.jit(sims.get_simulator(name), static_argnums=1)
    density = simulate(jax.random.key(seed), region)
    return np.asarray(density, np.float32)


def demo_catalog(
    region: Region,
    num_stars: int,
    seed: int = 0,
    *,
    density=None,
    simulator: str | None = None,
    parallax_error_mas: float = 0.05,
    sigma_extinction_range: tuple[float, float] = (0.03, 0.12),
) -> DemoCatalog:
    """Sample ``num_stars`` stars from a simulated (or given) density cube, with errors."""
    if num_stars < 1:
        raise ValueError(f"num_stars must be positive, got {num_stars}")
    if density is None:
        density = simulated_density(region, seed, simulator)
    density = np.asarray(density, np.float32)
    if density.shape != tuple(region.shape):
        raise ValueError(f"density has shape {density.shape}, the region {tuple(region.shape)}")
    rng = np.random.default_rng(seed)
    true_xyz = rng.uniform(region.lower_pc, region.upper_pc, (num_stars, 3))
    true_ext = np.asarray(integrate_to_points(density, region, true_xyz), np.float64)
    lon, lat, dist = cartesian_to_galactic_np(true_xyz)
    sigma_plx = parallax_error_mas * 10 ** rng.normal(0.0, 0.5, num_stars)
    sigma_d = (dist / 1000.0) ** 2 * sigma_plx * 1000.0  # pc
    obs_dist = np.abs(dist + sigma_d * rng.standard_normal(num_stars))
    lo, hi = sigma_extinction_range
    sigma_e = rng.uniform(lo, hi, num_stars)
    obs_ext = true_ext + sigma_e * rng.standard_normal(num_stars)
    obs_xyz = galactic_to_cartesian_np(lon, lat, obs_dist)
    catalog = StarCatalog(
        xyz_pc=obs_xyz,
        l_deg=lon,
        b_deg=lat,
        distance_pc=obs_dist,
        extinction=obs_ext,
        sigma_extinction=sigma_e,
        sigma_distance=sigma_d,
        num_read=num_stars,
        source=f"demo({region.name}, {num_stars} stars, seed {seed})",
    )
    return DemoCatalog(catalog, density, true_xyz, true_ext)
