"""Levy-flight dust density cubes (Chen, Qin & Li sect. 2.1 for SR; appendix A for LR).

A Levy flight is a random walk whose step lengths follow a heavy-tailed (Pareto) law,
``P(step > s) = (s / step_min)^(-alpha)`` for s >= step_min with 0 < alpha < 2, in isotropic
directions: long jumps between tight clusters of short steps, which gives the hierarchical,
clumpy look of interstellar clouds (Puspitarini 2014). The paper's recipe, parameterised here:

SR (`levy_density` defaults): 10 starting points drawn uniformly in the region, 10 flights from
each, 20,000 jumps a flight: 2 million particles. Particles outside the region are dropped, the
rest are counted in the region's cells, and the counts are multiplied by a constant so that most
cells (the `ceiling_quantile` of all cells) stay below a ceiling drawn uniformly in
``ceiling_range_mag_per_pc`` = [0.01, 0.05] mag/pc.

LR variant (appendix A, `LEVY_LR`): 20 starts within |Z| < 200 pc, 10 flights of 2000 steps each,
then an exponential disc profile exp(-|Z| / 120 pc) applied, and a ceiling in [0.01, 0.5] mag/pc.

Everything is pure JAX: jit- and vmap-able, deterministic given the PRNG key, on CPU or GPU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dustjax.geometry import Region


@dataclasses.dataclass(frozen=True)
class LevyParams:
    """Parameters of the Levy-flight simulator (defaults: the paper's SR setting).

    Attributes:
      num_starts: starting points, uniform in the region (or in |Z| < start_abs_z_max_pc).
      flights_per_start: flights launched from each starting point.
      jumps_per_flight: jumps (particles) in each flight.
      alpha: Pareto tail index of the step lengths (Levy flights need 0 < alpha < 2).
      step_min_cells: the shortest step, in units of the (smallest) cell size.
      ceiling_range_mag_per_pc: the density ceiling is drawn uniformly in this range (mag/pc).
      ceiling_quantile: the fraction of cells that stay below the ceiling ("most cells"). The
        paper's ranges (SR: rho up to 0.05 mag/pc, E up to ~1 mag; LR: rho up to 0.5, E up to
        ~50 mag; sect. 2.2) are met when the maximum is scaled (1.0), so that is the default.
      start_abs_z_max_pc: if set, starting points are drawn with |Z| below this (pc).
      scale_height_pc: if set, the density is multiplied by exp(-|Z| / scale_height_pc).
    """

    num_starts: int = 10
    flights_per_start: int = 10
    jumps_per_flight: int = 20_000
    alpha: float = 1.5
    step_min_cells: float = 0.2
    ceiling_range_mag_per_pc: tuple[float, float] = (0.01, 0.05)
    ceiling_quantile: float = 1.0
    start_abs_z_max_pc: float | None = None
    scale_height_pc: float | None = None

    def __post_init__(self):
        for name in ("num_starts", "flights_per_start", "jumps_per_flight"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive count, got {getattr(self, name)}")
        if not 0.0 < self.alpha < 2.0:
            raise ValueError(f"alpha must lie in (0, 2) for a Levy flight, got {self.alpha}")
        lo, hi = self.ceiling_range_mag_per_pc
        if not 0.0 < lo <= hi:
            raise ValueError(f"ceiling range must satisfy 0 < low <= high, got {(lo, hi)}")

    @property
    def num_particles(self) -> int:
        return self.num_starts * self.flights_per_start * self.jumps_per_flight


LEVY_SR = LevyParams()
LEVY_LR = LevyParams(
    num_starts=20,
    flights_per_start=10,
    jumps_per_flight=2000,
    ceiling_range_mag_per_pc=(0.01, 0.5),
    start_abs_z_max_pc=200.0,
    scale_height_pc=120.0,
)


def levy_density(key: jax.Array, region: Region, params: LevyParams = LEVY_SR) -> jax.Array:
    """One Levy-flight density cube (mag/pc), shape ``region.shape``."""
    k_start, k_len, k_ceiling = jax.random.split(key, 3)
    lower = jnp.asarray(region.lower_pc, jnp.float32)
    upper = jnp.asarray(region.upper_pc, jnp.float32)
    start_lo, start_hi = lower, upper
    if params.start_abs_z_max_pc is not None:
        zmax = params.start_abs_z_max_pc
        start_lo = start_lo.at[2].set(jnp.maximum(lower[2], -zmax))
        start_hi = start_hi.at[2].set(jnp.minimum(upper[2], zmax))
    starts = jax.random.uniform(
        k_start, (params.num_starts, 1, 1, 3), minval=start_lo, maxval=start_hi
    )
    shape = (params.num_starts, params.flights_per_start, params.jumps_per_flight)
    step_min = params.step_min_cells * float(min(region.cell_size_pc))
    # One 32-bit word per jump for the length and one for the direction (two 16-bit halves):
    # 16 bits resolve a direction to ~1e-4 rad, far below a cell, and save a third of the
    # random numbers, the dominant cost on a CPU.
    bits = jax.random.bits(k_len, (*shape, 2), jnp.uint32)
    # Pareto step lengths by inversion: s = s_min * u^(-1/alpha), u in (0, 1].
    u = ((bits[..., 0] >> 8).astype(jnp.float32) + 1.0) * (1.0 / 2**24)
    steps = step_min * u ** (-1.0 / params.alpha)
    # Isotropic directions: cos(theta) uniform in [-1, 1], phi uniform in [0, 2 pi).
    half = 1.0 / 2**16
    cos_t = ((bits[..., 1] >> 16).astype(jnp.float32) + 0.5) * (2 * half) - 1.0
    phi = ((bits[..., 1] & 0xFFFF).astype(jnp.float32) + 0.5) * (2 * jnp.pi * half)
    sin_t = jnp.sqrt(1.0 - cos_t**2)
    direction = jnp.stack([sin_t * jnp.cos(phi), sin_t * jnp.sin(phi), cos_t], axis=-1)
    positions = starts + jnp.cumsum(steps[..., None] * direction, axis=2)
    counts = bin_particles(positions.reshape(-1, 3), region)
    return finish_density(k_ceiling, counts, region, params)


def finish_density(key: jax.Array, field: jax.Array, region: Region, params) -> jax.Array:
    """The steps every simulator ends with: the optional exp(-|Z|/h) disc profile, then scaling
    so that the `ceiling_quantile` of the cube equals a ceiling drawn uniformly in
    ``ceiling_range_mag_per_pc`` (mag/pc)."""
    if params.scale_height_pc is not None:
        field = field * disc_profile(region, params.scale_height_pc)
    low, high = params.ceiling_range_mag_per_pc
    ceiling = jax.random.uniform(key, minval=low, maxval=high)
    return scale_to_ceiling(field, ceiling, params.ceiling_quantile)


def bin_particles(positions_pc: jax.Array, region: Region) -> jax.Array:
    """Count particles ``(P, 3)`` in the region's cells; particles outside are dropped."""
    lower = jnp.asarray(region.lower_pc, positions_pc.dtype)
    size = jnp.asarray(region.cell_size_pc, positions_pc.dtype)
    n = jnp.asarray(region.shape)
    idx = jnp.floor((positions_pc - lower) / size).astype(jnp.int32)
    inside = jnp.all((idx >= 0) & (idx < n), axis=-1)
    flat = (idx[:, 0] * n[1] + idx[:, 1]) * n[2] + idx[:, 2]
    overflow = region.num_cells  # one extra bin collects everything outside
    flat = jnp.where(inside, flat, overflow)
    counts = jnp.zeros(region.num_cells + 1, jnp.float32).at[flat].add(1.0)
    return counts[:-1].reshape(region.shape)


def disc_profile(region: Region, scale_height_pc: float) -> jax.Array:
    """exp(-|Z| / h) at the cell centres, broadcastable to ``region.shape``."""
    z = jnp.asarray(region.centres_pc(2), jnp.float32)
    return jnp.exp(-jnp.abs(z) / scale_height_pc)[None, None, :]


def scale_to_ceiling(field: jax.Array, ceiling: jax.Array, quantile: float) -> jax.Array:
    """Multiply a non-negative field so that its `quantile` equals `ceiling` (mag/pc).

    When that quantile is zero (a sparse field), the largest value is used instead.
    """
    q = jnp.quantile(field, quantile)
    reference = jnp.where(q > 0, q, jnp.max(field))
    return jnp.where(reference > 0, field * (ceiling / reference), field)


def levy_param_summary(params: LevyParams) -> dict:
    d = dataclasses.asdict(params)
    d["num_particles"] = params.num_particles
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


__all__ = [
    "LEVY_LR",
    "LEVY_SR",
    "LevyParams",
    "bin_particles",
    "disc_profile",
    "levy_density",
    "scale_to_ceiling",
]
