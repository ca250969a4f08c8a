"""The simulated test of Dharmawardena et al. (2022, sect. 3), with analytic ground truth.

Density (mag/pc) inside the shell ``d_min <= d <= d_max`` (zero outside, so that the background
integrates to ``1.6e-3 * (500 - 180) = 0.5`` mag as in the paper):

    rho(x) = rho_bg + sum_k a_k exp(-|x - c_k|^2 / (2 w_k^2))

with three clumps at random places inside the (l, b, d) box. Stars are uniform in l, b and d^3
(uniform space density); their extinction is the exact line-of-sight integral (error functions
for the clumps), plus zero-mean Gaussian noise of 10% of the true extinction. A noise floor
(``sigma_floor``, default 0.01 mag; the paper gives none) keeps the nearest stars, whose true
extinction tends to 0, from having vanishing uncertainties.

The paper does not give the clump amplitudes or widths; we draw widths in ``clump_width_pc`` and
peak densities in ``clump_peak``, which give columns of about 0.5-3 mag through a clump, in line
with its figs. 1 and 4.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import erf

from dustjax.catalog import StarCatalog
from dustjax.geometry import galactic_to_cartesian_np


@dataclasses.dataclass(frozen=True)
class ClumpField:
    """Background plus Gaussian clumps inside a distance shell (all lengths in pc)."""

    background: float
    d_range_pc: tuple[float, float]
    centres_xyz: np.ndarray  # (K, 3)
    widths_pc: np.ndarray  # (K,)
    peaks: np.ndarray  # (K,) mag/pc

    def density(self, xyz_pc) -> np.ndarray:
        """rho (mag/pc) at points ``(..., 3)``."""
        xyz = np.asarray(xyz_pc, np.float64)
        d = np.linalg.norm(xyz, axis=-1)
        rho = np.full(d.shape, self.background)
        for c, w, a in zip(self.centres_xyz, self.widths_pc, self.peaks, strict=True):
            rho = rho + a * np.exp(-np.sum((xyz - c) ** 2, axis=-1) / (2 * w * w))
        inside = (d >= self.d_range_pc[0]) & (d <= self.d_range_pc[1])
        return np.where(inside, rho, 0.0)

    def extinction(self, l_deg, b_deg, distance_pc) -> np.ndarray:
        """Exact integral of rho from the Sun to (l, b, d) (mag), by error functions."""
        n = galactic_to_cartesian_np(l_deg, b_deg, np.ones_like(np.asarray(distance_pc, float)))
        d0, d1 = self.d_range_pc
        s1 = np.clip(np.asarray(distance_pc, np.float64), d0, d1)
        ext = self.background * (s1 - d0)
        for c, w, a in zip(self.centres_xyz, self.widths_pc, self.peaks, strict=True):
            t = n @ c  # distance of closest approach along the ray
            perp2 = np.maximum(c @ c - t * t, 0.0)
            scale = math.sqrt(2.0) * w
            ext = ext + a * np.exp(-perp2 / (2 * w * w)) * w * math.sqrt(math.pi / 2) * (
                erf((s1 - t) / scale) - erf((d0 - t) / scale)
            )
        return ext

    def to_dict(self) -> dict:
        return dict(
            background=self.background,
            d_range_pc=list(self.d_range_pc),
            centres_xyz=self.centres_xyz.tolist(),
            widths_pc=self.widths_pc.tolist(),
            peaks=self.peaks.tolist(),
        )


def random_clump_field(
    rng: np.random.Generator,
    *,
    l_range_deg=(50.0, 90.0),
    b_range_deg=(-10.0, 10.0),
    d_range_pc=(180.0, 500.0),
    background=1.6e-3,
    num_clumps=3,
    clump_width_pc=(12.0, 25.0),
    clump_peak=(0.01, 0.04),
    margin=0.15,
) -> ClumpField:
    """Clumps at random (l, b, d) inside the box, ``margin`` of each range away from its edges."""

    def inner(lo_hi, size):
        lo, hi = lo_hi
        pad = margin * (hi - lo)
        return rng.uniform(lo + pad, hi - pad, size)

    lon = inner(l_range_deg, num_clumps)
    lat = inner(b_range_deg, num_clumps)
    dist = inner(d_range_pc, num_clumps)
    return ClumpField(
        background=float(background),
        d_range_pc=(float(d_range_pc[0]), float(d_range_pc[1])),
        centres_xyz=galactic_to_cartesian_np(lon, lat, dist),
        widths_pc=rng.uniform(*clump_width_pc, num_clumps),
        peaks=rng.uniform(*clump_peak, num_clumps),
    )


def simulate_stars(
    field: ClumpField,
    rng: np.random.Generator,
    *,
    num_stars=120_000,
    l_range_deg=(50.0, 90.0),
    b_range_deg=(-10.0, 10.0),
    noise_fraction=0.1,
    sigma_floor=0.01,
):
    """Stars uniform in l, b and d^3 with noisy extinctions; returns (catalogue, true A)."""
    d0, d1 = field.d_range_pc
    lon = rng.uniform(*l_range_deg, num_stars)
    lat = rng.uniform(*b_range_deg, num_stars)
    dist = np.cbrt(rng.uniform(d0**3, d1**3, num_stars))
    true = field.extinction(lon, lat, dist)
    sigma = np.maximum(noise_fraction * true, sigma_floor)
    observed = true + sigma * rng.standard_normal(num_stars)
    catalog = StarCatalog.from_arrays(
        l_deg=lon,
        b_deg=lat,
        distance_pc=dist,
        extinction=observed,
        sigma_extinction=sigma,
        source="simulated (Dharmawardena et al. 2022, sect. 3)",
    )
    return catalog, true


def paper_simulation(seed: int = 0, **kwargs):
    """The sect. 3 test: (field, catalogue, true extinctions); kwargs go to the two steps."""
    rng = np.random.default_rng(seed)
    field_keys = {
        "l_range_deg",
        "b_range_deg",
        "d_range_pc",
        "background",
        "num_clumps",
        "clump_width_pc",
        "clump_peak",
    }
    star_keys = {"num_stars", "l_range_deg", "b_range_deg", "noise_fraction", "sigma_floor"}
    unknown = set(kwargs) - field_keys - star_keys
    if unknown:
        raise TypeError(f"unknown simulation settings: {sorted(unknown)}")
    field = random_clump_field(rng, **{k: v for k, v in kwargs.items() if k in field_keys})
    catalog, true = simulate_stars(
        field, rng, **{k: v for k, v in kwargs.items() if k in star_keys}
    )
    return field, catalog, true
