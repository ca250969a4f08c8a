"""Log-normal Gaussian-random-field dust density cubes (Chen, Qin & Li sect. 2.1, region LR).

The log-density is a Gaussian random field with a power-law spectrum P(k) ~ k^spectral_index,
drawn by filtering white noise in Fourier space on a periodic grid `padding` times larger than the
region (so that the cube itself is not periodic), standardised and scaled to a standard deviation
`sigma_ln` of ln(rho). Then, as the paper describes:

1. the Z layer of highest mean density is shifted to Z = 0 (a roll along Z of the periodic field);
2. an exponential disc profile exp(-|Z| / 120 pc) is applied;
3. the cube is scaled so that most cells (`ceiling_quantile`) stay below a ceiling drawn uniformly
   in [0.01, 0.5] mag/pc.

Pure JAX: jit- and vmap-able, deterministic given the PRNG key, on CPU or GPU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.geometry import Region
from dustjax.sims.levy import finish_density


@dataclasses.dataclass(frozen=True)
class LognormalParams:
    """Parameters of the log-normal simulator (defaults: the paper's LR setting).

    Attributes:
      spectral_index: P(k) ~ k^spectral_index of the log-density field (-3: Kolmogorov-like 3D
        density slopes lie between -3 and -4; steeper gives smoother, larger structures).
      sigma_ln: standard deviation of ln(rho) before the disc profile (log-normal width); 1.5
        gives extinctions up to ~50 mag over the LR region, the paper's range (sect. 2.2).
      padding: the field is drawn on a periodic grid this many times the region per axis.
      scale_height_pc: scale height of the exponential disc profile (pc).
      ceiling_range_mag_per_pc: the ceiling is drawn uniformly in this range (mag/pc).
      ceiling_quantile: the fraction of cells that stay below the ceiling. The paper's ranges
        (SR: rho up to 0.05 mag/pc, E up to ~1 mag; LR: rho up to 0.5, E up to ~50 mag; sect. 2.2)
        are met when the maximum is scaled (1.0), so that is the default.
    """

    spectral_index: float = -3.0
    sigma_ln: float = 1.5
    padding: int = 2
    scale_height_pc: float | None = 120.0
    ceiling_range_mag_per_pc: tuple[float, float] = (0.01, 0.5)
    ceiling_quantile: float = 1.0

    def __post_init__(self):
        if self.sigma_ln <= 0:
            raise ValueError(f"sigma_ln must be positive, got {self.sigma_ln}")
        if int(self.padding) < 1:
            raise ValueError(f"padding must be >= 1, got {self.padding}")
        lo, hi = self.ceiling_range_mag_per_pc
        if not 0.0 < lo <= hi:
            raise ValueError(f"ceiling range must satisfy 0 < low <= high, got {(lo, hi)}")


LOGNORMAL_LR = LognormalParams()


def gaussian_random_field(
    key: jax.Array, shape: tuple[int, ...], cell_size: tuple[float, ...], spectral_index: float
) -> jax.Array:
    """A periodic, zero-mean, unit-variance Gaussian field with P(k) ~ |k|^spectral_index."""
    noise = jax.random.normal(key, shape, jnp.float32)
    freqs = [np.fft.fftfreq(n, d) for n, d in zip(shape[:-1], cell_size[:-1], strict=True)]
    freqs.append(np.fft.rfftfreq(shape[-1], cell_size[-1]))
    k2 = sum(np.meshgrid(*[f**2 for f in freqs], indexing="ij"))
    k2[(0,) * len(shape)] = np.inf  # no power in the mean
    amplitude = jnp.asarray(np.where(np.isfinite(k2), k2 ** (spectral_index / 4.0), 0.0))
    field = jnp.fft.irfftn(jnp.fft.rfftn(noise) * amplitude, s=shape)
    return (field - field.mean()) / field.std()


def lognormal_density(
    key: jax.Array, region: Region, params: LognormalParams = LOGNORMAL_LR
) -> jax.Array:
    """One log-normal density cube (mag/pc), shape ``region.shape``."""
    k_field, k_ceiling = jax.random.split(key)
    padded = tuple(params.padding * n for n in region.shape)
    log_field = params.sigma_ln * gaussian_random_field(
        k_field, padded, region.cell_size_pc, params.spectral_index
    )
    density = jnp.exp(log_field)
    # Shift the densest Z layer (mean over X and Y of the region's footprint) to Z = 0.
    layer_mean = density[: region.shape[0], : region.shape[1], :].mean(axis=(0, 1))
    z_zero = int(np.argmin(np.abs(region.centres_pc(2))))
    density = jnp.roll(density, z_zero - jnp.argmax(layer_mean), axis=2)
    density = density[: region.shape[0], : region.shape[1], : region.shape[2]]
    return finish_density(k_ceiling, density, region, params)
