"""Turbulent molecular-cloud density cubes without an MHD code (POLARIS part II substitute).

The POLARIS paper trains on a 512^3 cut (0.05 pc per cell, 25.6 pc across) of the ORION MHD
simulation, which cannot be fetched here. This module builds statistically similar number-density
cubes n(x, y, z) in cm^-3 from three ingredients, all in pure JAX (CPU, GPU, TPU; jit-able, with
the grid shape static and every physical knob a traced scalar so one compilation serves a whole
randomised dataset):

1. **Turbulent log-normal field.** Supersonic isothermal turbulence gives a log-normal density PDF
   whose width grows with the Mach number M and the forcing parameter b,
   sigma_ln^2 = ln(1 + b^2 M^2) (Padoan & Nordlund; Federrath et al. 2008). We draw a Gaussian
   random field g with power spectrum P(k) ~ (k^2 + k_0^2)^(-beta/2) (beta ~ 11/3, k_0 = 2 pi /
   driving scale), scale it to unit variance and set n_turb = n_0 exp(sigma_ln g - sigma_ln^2 / 2),
   so the volume-weighted mean of n_turb is n_0.
2. **Filaments.** Each filament spine is a persistent random walk (a worm-like chain) of given
   length, deposited as a line with cloud-in-cell weights and smoothed by a Gaussian of the given
   FWHM (the "universal" ~0.1 pc filament width of Arzoumanian et al. 2011) in Fourier space. The
   smoothed line profile F(x) is ~1 on the spine, and the cloud becomes n_turb (1 + C F) with a
   per-filament contrast C, so filaments inherit the turbulent fluctuations along them.
3. **Dense cores.** Plummer-like spheres n_c / (1 + (r / r_c)^2)^(p / 2), truncated smoothly at
   the edge of a small window, placed on filament spines (most of them) or at random positions.

A large-scale envelope dims the outskirts of the box (the "edges of the simulation" that the
paper's crop score avoids), an additive floor sets the diffuse background, and a ceiling caps the
densest voxels. With the defaults n spans about 10 to 10^6 cm^-3 and the column density through a
25.6 pc box is ~10^21-10^23 cm^-2, the range of Herschel maps of nearby clouds.

The turbulent field is periodic (FFT); filaments and cores wrap around the box; the envelope is
not periodic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CloudGrid:
    """Static (shape-defining) settings of a cloud cube; changing one recompiles.

    Attributes:
      n_cells: cells per side of the cubic grid (paper: 512).
      cell_size_pc: cell size in pc (paper: 0.05 pc, so 512 cells = 25.6 pc).
      num_filaments: filaments per cube.
      points_per_filament: samples along each spine; the spacing length / points must stay below
        half a cell for a continuous line (checked in `simulate_cloud`).
      num_cores: dense cores per cube.
      core_window_cells: odd side (cells) of the cube over which each core is evaluated; the core
        profile is tapered to zero at its edge.
    """

    n_cells: int = 512
    cell_size_pc: float = 0.05
    num_filaments: int = 16
    points_per_filament: int = 512
    num_cores: int = 48
    core_window_cells: int = 15

    def __post_init__(self):
        if self.n_cells < 8:
            raise ValueError(f"n_cells must be >= 8, got {self.n_cells}")
        if not self.cell_size_pc > 0:
            raise ValueError(f"cell_size_pc must be > 0, got {self.cell_size_pc}")
        if self.core_window_cells % 2 != 1 or self.core_window_cells > self.n_cells:
            raise ValueError(
                f"core_window_cells must be odd and <= n_cells, got {self.core_window_cells}"
            )
        if self.num_filaments < 0 or self.num_cores < 0 or self.points_per_filament < 2:
            raise ValueError("num_filaments and num_cores must be >= 0, points_per_filament >= 2")

    @property
    def box_size_pc(self) -> float:
        return self.n_cells * self.cell_size_pc


class CloudParams(NamedTuple):
    """Physical knobs of one cloud (each a float or a traced scalar; a pytree, so jit-friendly).

    Attributes:
      mean_density_cm3: n_0, volume-weighted mean of the turbulent component, cm^-3.
      sigma_ln: standard deviation of ln n of the turbulent component (= sqrt(ln(1 + b^2 M^2))).
      spectral_index: beta in P(k) ~ (k^2 + k_0^2)^(-beta/2) of ln n (11/3: Kolmogorov-like).
      driving_scale_pc: turbulence injection scale 2 pi / k_0, pc; larger-scale power flattens.
      filament_fwhm_pc: full width at half maximum of the filament cross-section, pc.
      filament_contrast_min, filament_contrast_max: range of the on-spine density contrast C
        (n = n_turb (1 + C F)), drawn log-uniformly per filament.
      filament_length_min_pc, filament_length_max_pc: range of spine lengths (uniform), pc.
      filament_bend: rms change of the unit tangent per sqrt(pc) of spine (0: straight lines).
      core_radius_min_pc, core_radius_max_pc: range of the flat inner radius r_c (log-uniform), pc.
      core_peak_min_cm3, core_peak_max_cm3: range of central densities n_c (log-uniform), cm^-3.
      core_profile_index: p, the outer slope of n ~ r^-p (2: isothermal sphere).
      core_on_filament_fraction: probability that a core sits on a filament spine.
      envelope_depth_dex: how far (dex) the density drops from the box centre to the mid-faces;
        0 disables the envelope.
      density_floor_cm3: additive diffuse background, cm^-3.
      density_ceiling_cm3: hard upper cap, cm^-3.
    """

    mean_density_cm3: float = 100.0
    sigma_ln: float = 1.5
    spectral_index: float = 11.0 / 3.0
    driving_scale_pc: float = 10.0
    filament_fwhm_pc: float = 0.1
    filament_contrast_min: float = 10.0
    filament_contrast_max: float = 200.0
    filament_length_min_pc: float = 2.0
    filament_length_max_pc: float = 8.0
    filament_bend: float = 0.6
    core_radius_min_pc: float = 0.02
    core_radius_max_pc: float = 0.08
    core_peak_min_cm3: float = 1e4
    core_peak_max_cm3: float = 5e5
    core_profile_index: float = 2.0
    core_on_filament_fraction: float = 0.8
    envelope_depth_dex: float = 0.7
    density_floor_cm3: float = 10.0
    density_ceiling_cm3: float = 1e6


def sigma_ln_from_mach(mach_number, forcing_parameter=0.4):
    """Width of ln n for isothermal turbulence: sqrt(ln(1 + b^2 M^2)) (b = 1/3 solenoidal, 1
    compressive, 0.4 mixed)."""
    return jnp.sqrt(jnp.log1p((forcing_parameter * mach_number) ** 2))


def sample_cloud_params(
    key,
    *,
    mach_range=(4.0, 12.0),
    forcing_parameter=0.4,
    mean_density_range_cm3=(50.0, 300.0),
    spectral_index_range=(3.4, 4.0),
    envelope_depth_range_dex=(0.3, 1.2),
    base: CloudParams | None = None,
) -> CloudParams:
    """Draw the per-cloud physical knobs of a randomised dataset.

    The Mach number (uniform), mean density (log-uniform), spectral index (uniform) and envelope
    depth (uniform) vary from cube to cube; the other fields come from `base` (defaults).
    """
    base = CloudParams() if base is None else base
    k_mach, k_n0, k_beta, k_env = jax.random.split(key, 4)
    mach = jax.random.uniform(k_mach, (), minval=mach_range[0], maxval=mach_range[1])
    log_n0 = jax.random.uniform(
        k_n0,
        (),
        minval=math.log(mean_density_range_cm3[0]),
        maxval=math.log(mean_density_range_cm3[1]),
    )
    beta = jax.random.uniform(
        k_beta, (), minval=spectral_index_range[0], maxval=spectral_index_range[1]
    )
    envelope = jax.random.uniform(
        k_env, (), minval=envelope_depth_range_dex[0], maxval=envelope_depth_range_dex[1]
    )
    return base._replace(
        mean_density_cm3=jnp.exp(log_n0),
        sigma_ln=sigma_ln_from_mach(mach, forcing_parameter),
        spectral_index=beta,
        envelope_depth_dex=envelope,
    )


def _wavenumbers_sq(n_cells: int, cell_size_pc: float):
    """|k|^2 in pc^-2 on the rfft grid (n, n, n // 2 + 1)."""
    k_full = 2.0 * jnp.pi * jnp.fft.fftfreq(n_cells, d=cell_size_pc)
    k_half = 2.0 * jnp.pi * jnp.fft.rfftfreq(n_cells, d=cell_size_pc)
    return k_full[:, None, None] ** 2 + k_full[None, :, None] ** 2 + k_half[None, None, :] ** 2


def gaussian_random_field(key, grid: CloudGrid, spectral_index, driving_scale_pc):
    """Zero-mean, unit-variance periodic Gaussian field with P(k) ~ (k^2 + k_0^2)^(-beta/2)."""
    n = grid.n_cells
    white = jax.random.normal(key, (n, n, n), dtype=jnp.float32)
    k2 = _wavenumbers_sq(n, grid.cell_size_pc)
    k0 = 2.0 * jnp.pi / driving_scale_pc
    amplitude = (k2 + k0**2) ** (-spectral_index / 4.0)  # sqrt of P(k)
    amplitude = amplitude.at[0, 0, 0].set(0.0)  # no mean mode
    field = jnp.fft.irfftn(jnp.fft.rfftn(white) * amplitude, s=(n, n, n))
    field = field - jnp.mean(field)
    return (field / jnp.std(field)).astype(jnp.float32)


def _log_uniform(key, shape, low, high):
    return jnp.exp(jax.random.uniform(key, shape, minval=jnp.log(low), maxval=jnp.log(high)))


def filament_spines(key, grid: CloudGrid, params: CloudParams):
    """Spine points (num_filaments, points, 3) in cell units (unwrapped) and per-filament contrast.

    Each spine is a worm-like chain: the unit tangent performs a random walk with rms change
    `filament_bend` per sqrt(pc), starting from a random point and isotropic direction.
    """
    f, p = grid.num_filaments, grid.points_per_filament
    k_start, k_dir, k_len, k_walk, k_contrast = jax.random.split(key, 5)
    start = jax.random.uniform(k_start, (f, 1, 3)) * grid.n_cells
    direction = jax.random.normal(k_dir, (f, 3))
    length_pc = jax.random.uniform(
        k_len, (f,), minval=params.filament_length_min_pc, maxval=params.filament_length_max_pc
    )
    step_pc = length_pc / (p - 1)
    kicks = jax.random.normal(k_walk, (p - 1, f, 3)) * (
        params.filament_bend * jnp.sqrt(step_pc)[None, :, None]
    )

    def bend(tangent, kick):
        tangent = tangent + kick
        tangent = tangent / jnp.linalg.norm(tangent, axis=-1, keepdims=True)
        return tangent, tangent

    direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
    _, tangents = jax.lax.scan(bend, direction, kicks)  # (p - 1, f, 3)
    steps = jnp.moveaxis(tangents, 0, 1) * (step_pc / grid.cell_size_pc)[:, None, None]
    spines = start + jnp.concatenate([jnp.zeros((f, 1, 3)), jnp.cumsum(steps, axis=1)], axis=1)
    contrast = _log_uniform(
        k_contrast, (f,), params.filament_contrast_min, params.filament_contrast_max
    )
    return spines, contrast, step_pc


def filament_profile(key, grid: CloudGrid, params: CloudParams):
    """Sum over filaments of C_f F_f(x): ~C_f on each spine, Gaussian cross-section of given FWHM.

    Returns the contrast field (n, n, n) and the spine points (for placing cores).
    """
    n = grid.n_cells
    spines, contrast, step_pc = filament_spines(key, grid, params)
    if grid.num_filaments == 0:
        return jnp.zeros((n, n, n), jnp.float32), spines
    # Cloud-in-cell deposit of line "mass" (contrast x length) per cell volume, in pc^-2;
    # trapezoid weights (half at both ends) so that each filament deposits exactly C L.
    trapezoid = jnp.ones(spines.shape[1]).at[jnp.array([0, -1])].set(0.5)
    weight = (contrast * step_pc)[:, None] * trapezoid[None, :]
    points = spines.reshape(-1, 3) - 0.5  # cell i has its centre at i + 0.5
    weight = weight.reshape(-1) / grid.cell_size_pc**3
    base = jnp.floor(points)
    frac = points - base
    base = base.astype(jnp.int32)
    line = jnp.zeros((n, n, n), jnp.float32)
    for corner in range(8):
        offset = jnp.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        w = jnp.prod(jnp.where(offset == 1, frac, 1.0 - frac), axis=-1) * weight
        idx = (base + offset) % n
        line = line.at[idx[:, 0], idx[:, 1], idx[:, 2]].add(w)
    # Gaussian smoothing in Fourier space; an infinite line of unit weight then peaks at
    # 1 / (2 pi sigma_eff^2), with sigma_eff^2 including the CIC kernel's variance (cell^2 / 6).
    sigma_pc = params.filament_fwhm_pc / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    k2 = _wavenumbers_sq(n, grid.cell_size_pc)
    smooth = jnp.fft.irfftn(jnp.fft.rfftn(line) * jnp.exp(-0.5 * k2 * sigma_pc**2), s=(n, n, n))
    sigma_eff2 = sigma_pc**2 + grid.cell_size_pc**2 / 6.0
    return jnp.maximum(smooth * (2.0 * jnp.pi * sigma_eff2), 0.0).astype(jnp.float32), spines


def core_field(key, grid: CloudGrid, params: CloudParams, spines):
    """Sum of truncated Plummer-like cores n_c [(1 + r^2/r_c^2)^(-p/2) - edge value]_+ (cm^-3)."""
    n, w = grid.n_cells, grid.core_window_cells
    c = grid.num_cores
    if c == 0:
        return jnp.zeros((n, n, n), jnp.float32)
    k_on, k_fil, k_pt, k_free, k_r, k_peak = jax.random.split(key, 6)
    free = jax.random.uniform(k_free, (c, 3)) * n
    if grid.num_filaments > 0:
        fil = jax.random.randint(k_fil, (c,), 0, grid.num_filaments)
        pt = jax.random.randint(k_pt, (c,), 0, grid.points_per_filament)
        on_spine = spines[fil, pt]
        on = jax.random.uniform(k_on, (c, 1)) < params.core_on_filament_fraction
        centres = jnp.where(on, on_spine, free)
    else:
        centres = free
    centres = jnp.mod(centres, n)
    radius_cells = (
        _log_uniform(k_r, (c,), params.core_radius_min_pc, params.core_radius_max_pc)
        / grid.cell_size_pc
    )
    peak = _log_uniform(k_peak, (c,), params.core_peak_min_cm3, params.core_peak_max_cm3)

    half = w // 2
    offsets = jnp.arange(-half, half + 1)
    window = jnp.stack(jnp.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    centre_cell = jnp.floor(centres).astype(jnp.int32)  # cell holding the centre
    cells = centre_cell[:, None, :] + window[None]  # (c, w^3, 3)
    r2 = jnp.sum((cells + 0.5 - centres[:, None, :]) ** 2, axis=-1)  # cell units
    p = params.core_profile_index
    rc2 = radius_cells[:, None] ** 2
    edge = (1.0 + (half + 0.5) ** 2 / rc2) ** (-p / 2.0)
    profile = jnp.maximum((1.0 + r2 / rc2) ** (-p / 2.0) - edge, 0.0) / (1.0 - edge)
    values = (peak[:, None] * profile).reshape(-1)
    idx = jnp.mod(cells, n).reshape(-1, 3)
    return jnp.zeros((n, n, n), jnp.float32).at[idx[:, 0], idx[:, 1], idx[:, 2]].add(values)


def envelope_factor(grid: CloudGrid, depth_dex):
    """10^(-depth (r / R)^2) with r the distance to the box centre, R half the box, r/R capped
    at 1 (so mid-faces and corners both sit `depth_dex` below the centre)."""
    n = grid.n_cells
    x = (jnp.arange(n) + 0.5) / n * 2.0 - 1.0
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    return 10.0 ** (-depth_dex * jnp.minimum(r2, 1.0))


def simulate_cloud(key, grid: CloudGrid, params: CloudParams = CloudParams()):
    """One number-density cube n (n_cells, n_cells, n_cells) in cm^-3 (float32).

    n = min(floor + envelope x [n_turb (1 + sum_f C_f F_f) + cores], ceiling), with the
    components described in the module docstring. Axis order (x, y, z); `project` in
    `dustjax.polaris` sums along any of them. Jitted with `grid` static; callable under
    jit/vmap with traced `params` (the spine-sampling check then runs only on concrete values).
    """
    try:
        check_spine_sampling(grid, params)
    except (jax.errors.ConcretizationTypeError, TypeError):
        pass  # traced params: checked by whoever built them
    return _simulate_cloud(key, grid, params)


@functools.partial(jax.jit, static_argnames="grid")
def _simulate_cloud(key, grid: CloudGrid, params: CloudParams):
    params = CloudParams(*(jnp.asarray(v, jnp.float32) for v in params))
    k_turb, k_fil, k_core = jax.random.split(key, 3)
    g = gaussian_random_field(k_turb, grid, params.spectral_index, params.driving_scale_pc)
    n_turb = params.mean_density_cm3 * jnp.exp(params.sigma_ln * g - 0.5 * params.sigma_ln**2)
    filaments, spines = filament_profile(k_fil, grid, params)
    cores = core_field(k_core, grid, params, spines)
    density = (n_turb * (1.0 + filaments) + cores) * envelope_factor(
        grid, params.envelope_depth_dex
    )
    density = jnp.minimum(density + params.density_floor_cm3, params.density_ceiling_cm3)
    return density.astype(jnp.float32)


def check_spine_sampling(grid: CloudGrid, params: CloudParams) -> None:
    """Raise if filament spines are sampled coarser than half a cell (gaps in the line)."""
    if grid.num_filaments == 0:
        return
    spacing = float(params.filament_length_max_pc) / (grid.points_per_filament - 1)
    if spacing > 0.5 * grid.cell_size_pc:
        raise ValueError(
            f"filament spine spacing {spacing:.3g} pc exceeds half a cell "
            f"({0.5 * grid.cell_size_pc:.3g} pc): raise points_per_filament to at least "
            f"{math.ceil(2 * float(params.filament_length_max_pc) / grid.cell_size_pc) + 1}"
        )
