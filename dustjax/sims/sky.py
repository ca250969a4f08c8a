"""Dust density cubes that look like the real sky: a disc, a diffuse turbulent medium, clouds,
cavities, with every amplitude drawn over a wide prior (issue 17, item 1).

The paper's simulators (Levy flights for SR, a log-normal field for LR) put the density ceiling
at 0.01-0.5 mag/pc, whereas the real sky at 60 pc holds 1e-4 - 1e-2 mag/pc. This simulator draws
each cube from physical priors instead, in mag/pc (A_V per pc), and is meant for any region (SR,
LR, custom boxes and cell counts). One cube is

    rho(x) = cavity(x) * [ rho_mid * D(x) * S(x) + C(x) ]

- **Disc** D(x) = exp(-|Z - z_mid(X, Y)| / h) * exp(-(g . (X, Y)) / L): an exponential dust disc
  of scale height h (Drimmel & Spergel 2001: 134 pc; Li et al. 2018, ApJ 858, 75: 103 pc;
  Marshall et al. 2006: 125 pc; the thin dust disc grows from 60 to 200 pc between Galactocentric
  radii 5 and 14 kpc, arXiv:2601.02724; a fit to the shared Bayestar19 anticentre cube gives
  50-65 pc), so h is drawn in [50, 200] pc. The mid-plane lies below the Sun (Sun 23 pc above the
  dust disc, Li et al. 2018; 21 pc, Bennett & Bovy 2019) and is corrugated and warped (Radcliffe
  wave, Alves et al. 2020, amplitude ~160 pc): z_mid is drawn around -20 pc with a random tilt.
  The radial scale length L (2.26 kpc, Drimmel & Spergel 2001; 3.19 kpc, Li et al. 2018) acts in
  a random horizontal direction g (a box can lie anywhere in the disc), normalised to 1 at the
  region's centre.
- **Diffuse medium** S(x) = exp(sigma g(x) - sigma^2 / 2) (mean 1), g a unit Gaussian random
  field with P(k) ~ (k^2 + k_0^2)^(-beta/2): beta in [3.0, 4.0] around Kolmogorov's 11/3 (the
  log-density of supersonic turbulence, Kowal et al. 2007; Federrath et al. 2010; the shared
  cubes' log-density spectra fall as k^-3.05 at 3 pc (SR) and k^-3.44 at 20 pc (LR), and as
  k^-3.5 / k^-4.2 once regridded to 6 / 60 pc cells, see tools/sky_vs_real.py); an outer scale
  2 pi / k_0 drawn log-uniform in [100, 2000] pc (supernova driving injects at ~100 pc, Joung &
  Mac Low 2006, but the ISM keeps a single power law up to kpc scales, e.g. the LMC's HI,
  Elmegreen, Kim & Staveley-Smith 2001; a 50-300 pc outer scale leaves 60 pc cells white, far
  flatter than the shared LR cube); and a log-normal width sigma in [0.8, 2.0]
  (sigma^2 = ln(1 + b^2 M^2), Padoan & Nordlund 2002, for M ~ 1-10, b ~ 0.3-1).
  rho_mid, the mid-plane mean of the diffuse dust, is drawn log-uniform in [2e-5, 5e-3] mag/pc
  (A_V/L = 0.02 - 5 mag/kpc: the classic plane average 1.8 mag/kpc, Whittet 2003, and
  n_H ~ 1 cm^-3 with A_V/N_H = 5.3e-22 mag cm^2, Bohlin et al. 1978, i.e. 1.6e-3 mag/pc, lie
  inside; the inner disc at R ~ 5 kpc holds ~4x the local value for a 2.3 kpc scale length;
  cavities, interarm and outer-disc boxes hold far less; the shared LR cube's mid-plane layer
  holds ~1.5e-3).
- **Clouds** C(x): complexes of Gaussian clumps placed by a Levy walk (Pareto step lengths,
  index 1.5, with a random persistence so that some complexes are filaments and some clusters),
  their centres uniform in X and Y (the box widened by 10 %) and Laplace-distributed in Z about
  the mid-plane with the disc's scale height. A clump of radius s peaks at
  A (s / 10 pc)^-1.1 (Larson 1981's density-size relation) with the complex amplitude A drawn
  log-uniform in [3e-3, 1e-1] mag/pc (n_H ~ 2-60 cm^-3 averaged over 10 pc) and a per-clump
  factor in [0.1, 1]. Clumps are deposited as exact cell averages (error functions), so clumps
  smaller than a cell keep their mass. The number of complexes is drawn uniformly per cube.
- **Cavities**: a random fraction (uniform in [0, 0.5]) of the box is emptied by thresholding a
  smooth random field, and a Local-Bubble-like cavity around the Sun (radius 50-200 pc in
  Lallement et al. 2014 and Pelgrims et al. 2020; present with probability 0.8) is emptied too;
  with probability 0.25 a cone of directions from the Sun (half-angle 10-60 deg, isotropic axis)
  is emptied as well (low-extinction windows; the maps' survey gaps such as Bayestar19's sky
  south of declination -30 deg, exact zeros in a box that reaches it);
  "emptied" multiplies the density by a depletion drawn log-uniform in [1e-5, 1e-1] (the Local
  Bubble's gas, n_H ~ 1e-3 - 1e-2 cm^-3 against ~1 outside, holds even less dust; Bayestar19 puts
  exact zeros there).

- **Map-like smearing**: half the cubes are smeared along the lines of sight from the Sun by a
  log-normal distance kernel of relative width 3-30 % ("fingers of God": maps built from stars
  spread each cloud over its distance uncertainty; Bayestar19's clouds carry ~5 % distance
  errors, Zucker et al. 2019, and its 0.125-mag distance-modulus bins are 5.8 % of the distance,
  but its posterior mean smears far clouds over several 60 pc cells, as the shared LR cube shows).
  The other half keep the sharp true-sky look.

No ceiling is imposed: Bayestar19's rendering clips at 0.036 mag/pc and is a posterior mean
(smoother than the sky), so the simulator keeps structure down to the cell scale and peaks above
that clip. Each cube's effective resolution is drawn too: a Gaussian smoothing of FWHM 0-1 cell
(the literature route smooths a map to the region's cells, FWHM ~1 cell for LR) applied to the
random fields, the clumps (mass kept) and the cavity edges.

Regions: `SKY_SR` and `SKY_LR` differ only in the cloud population (count, clump radii, walk
steps); `SkyParams()` (the registry default) takes them from the region by name
("SR", "LR", "SR@..."), or by cell size for custom regions (>= 20 pc: LR's).

Pure JAX: jit- and vmap-able, deterministic given the PRNG key, on CPU or GPU; every random knob
is a traced scalar, so one compilation serves the whole prior.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import jax.scipy.ndimage
import numpy as np
from jax.scipy.special import erf, erfc, ndtri

from dustjax.geometry import Region

# Region-dependent fields (None in `SkyParams()`: filled from the region by `resolve`).
_REGION_FIELDS = ("num_complexes_range", "clumps_per_complex", "clump_radius_range_pc", "step_pc")
_PRESETS = {
    # SR (192 pc box, 6 pc cells): a few complexes (the local kpc^2 holds ~10-100 cloud
    # complexes, Zucker et al. 2020: 0-6 in 0.04 kpc^2 including the box's surroundings),
    # clumps of 1.5-20 pc, walk steps of 4 pc.
    "SR": dict(
        num_complexes_range=(0, 6),
        clumps_per_complex=16,
        clump_radius_range_pc=(1.5, 20.0),
        step_pc=4.0,
    ),
    # LR (1920 pc box, 60 pc cells): up to 64 complexes in 3.7 kpc^2, clumps of 4-60 pc.
    "LR": dict(
        num_complexes_range=(2, 64),
        clumps_per_complex=8,
        clump_radius_range_pc=(4.0, 60.0),
        step_pc=20.0,
    ),
}


@dataclasses.dataclass(frozen=True)
class SkyParams:
    """Priors of the sky simulator; each ``*_range`` is drawn per cube (sources in the module doc).

    Attributes:
      diffuse_mid_range_mag_per_pc: log-uniform prior of rho_mid, the mid-plane mean density of
        the diffuse medium (mag/pc).
      sigma_ln_range: uniform prior of the log-normal width (natural log) of the diffuse medium.
      spectral_index_range: uniform prior of beta in P(k) ~ (k^2 + k_0^2)^(-beta/2) of ln rho.
      driving_scale_range_pc: log-uniform prior of the outer scale 2 pi / k_0 (pc).
      padding: the random fields are drawn on a periodic grid this many times the region.
      scale_height_range_pc: uniform prior of the disc's scale height h (pc).
      midplane_range_pc: uniform prior of the mid-plane's Z at the region's centre (pc).
      tilt_max: the mid-plane's slope dZ/dX and dZ/dY are uniform in [-tilt_max, tilt_max].
      scale_length_range_pc: uniform prior of the radial scale length L (pc); None: no gradient.
      cloud_amplitude_range_mag_per_pc: log-uniform prior of the clump peak density at 10 pc.
      clump_factor_range: log-uniform per-clump factor on the complex amplitude.
      larson_index: peak ~ (radius / 10 pc)^-larson_index.
      levy_alpha: Pareto index of the walk's step lengths (P(step > s) = (s / step_pc)^-alpha).
      max_step_factor: steps are capped at this many times ``step_pc``.
      complex_flattening: the walk's vertical steps are multiplied by this (complexes lie flat).
      num_complexes_range: the number of complexes is uniform in [low, high] (high is static).
      clumps_per_complex: clumps per complex (static).
      clump_radius_range_pc: log-uniform prior of a clump's Gaussian sigma (pc).
      step_pc: the walk's shortest step (pc).
      empty_fraction_range: uniform prior of the fraction of the volume emptied.
      empty_smoothness: spectral index of the field that carves the empty regions (steep: smooth).
      bubble_probability: chance that a cube has a cavity around the Sun.
      bubble_radius_range_pc: uniform prior of that cavity's radius (pc).
      depletion_range: log-uniform prior of the factor applied inside emptied regions.
      cone_probability: chance that a cube has an empty cone of directions from the Sun.
      cone_half_angle_range_deg: uniform prior of that cone's half-angle (its axis is isotropic).
      radial_smearing_probability: chance that a cube is smeared along the lines of sight.
      radial_smearing_range: uniform prior of that smearing's relative width in distance.
      smoothing_fwhm_cells_range: uniform prior of the effective resolution, the FWHM (in cells)
        of a Gaussian applied to the random fields, the clumps and the cavity edges.
    """

    diffuse_mid_range_mag_per_pc: tuple[float, float] = (2e-5, 5e-3)
    sigma_ln_range: tuple[float, float] = (0.8, 2.0)
    spectral_index_range: tuple[float, float] = (3.0, 4.0)
    driving_scale_range_pc: tuple[float, float] = (100.0, 2000.0)
    padding: int = 2
    scale_height_range_pc: tuple[float, float] = (50.0, 200.0)
    midplane_range_pc: tuple[float, float] = (-80.0, 40.0)
    tilt_max: float = 0.1
    scale_length_range_pc: tuple[float, float] | None = (2000.0, 4000.0)
    cloud_amplitude_range_mag_per_pc: tuple[float, float] = (3e-3, 1e-1)
    clump_factor_range: tuple[float, float] = (0.1, 1.0)
    larson_index: float = 1.1
    levy_alpha: float = 1.5
    max_step_factor: float = 20.0
    complex_flattening: float = 0.3
    num_complexes_range: tuple[int, int] | None = None
    clumps_per_complex: int | None = None
    clump_radius_range_pc: tuple[float, float] | None = None
    step_pc: float | None = None
    empty_fraction_range: tuple[float, float] = (0.0, 0.5)
    empty_smoothness: float = 5.0
    bubble_probability: float = 0.8
    bubble_radius_range_pc: tuple[float, float] = (50.0, 200.0)
    depletion_range: tuple[float, float] = (1e-5, 1e-1)
    cone_probability: float = 0.25
    cone_half_angle_range_deg: tuple[float, float] = (10.0, 60.0)
    radial_smearing_probability: float = 0.5
    radial_smearing_range: tuple[float, float] = (0.03, 0.3)
    smoothing_fwhm_cells_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        for name in (
            "diffuse_mid_range_mag_per_pc",
            "driving_scale_range_pc",
            "cloud_amplitude_range_mag_per_pc",
            "clump_factor_range",
            "depletion_range",
        ):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        lo, hi = self.scale_height_range_pc
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale_height_range_pc must satisfy 0 < low <= high, got {(lo, hi)}")
        lo, hi = self.empty_fraction_range
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"empty_fraction_range must lie in [0, 1), got {(lo, hi)}")
        if int(self.padding) < 1:
            raise ValueError(f"padding must be >= 1, got {self.padding}")
        if self.num_complexes_range is not None:
            lo, hi = self.num_complexes_range
            if not 0 <= int(lo) <= int(hi):
                raise ValueError(f"num_complexes_range must satisfy 0 <= low <= high: {(lo, hi)}")
        if self.clumps_per_complex is not None and int(self.clumps_per_complex) < 1:
            raise ValueError(f"clumps_per_complex must be >= 1, got {self.clumps_per_complex}")
        if not 0.0 < self.levy_alpha < 2.0:
            raise ValueError(f"levy_alpha must lie in (0, 2), got {self.levy_alpha}")

    def resolve(self, region: Region) -> SkyParams:
        """These parameters with the region-dependent fields (left None) taken from the region."""
        missing = {f: None for f in _REGION_FIELDS if getattr(self, f) is None}
        if not missing:
            return self
        preset = _PRESETS[preset_name(region)]
        return dataclasses.replace(self, **{f: preset[f] for f in missing})


def preset_name(region: Region) -> str:
    """ "SR" or "LR": by the region's name, else by its cell size (>= 20 pc: LR)."""
    name = region.name.split("@")[0].upper()
    if name in _PRESETS:
        return name
    return "LR" if max(region.cell_size_pc) >= 20.0 else "SR"


SKY = SkyParams()
SKY_SR = SKY.resolve(Region.named("SR"))
SKY_LR = SKY.resolve(Region.named("LR"))


# ---- random draws ----------------------------------------------------------------------------
def _uniform(key, bounds):
    lo, hi = bounds
    return jax.random.uniform(key, minval=lo, maxval=hi)


def _log_uniform(key, bounds, shape=()):
    lo, hi = bounds
    return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


def _standard_field(key, shape, cell_size, spectral_index, outer_scale_pc, smoothing_pc=0.0):
    """A periodic unit-variance Gaussian field, P(k) ~ (k^2 + k_0^2)^(-spectral_index / 2),
    smoothed by a Gaussian of standard deviation ``smoothing_pc``.

    ``spectral_index``, ``outer_scale_pc`` and ``smoothing_pc`` may be traced; k in rad/pc.
    """
    noise = jax.random.normal(key, shape, jnp.float32)
    pairs = zip(shape[:-1], cell_size[:-1], strict=True)
    freqs = [2 * np.pi * np.fft.fftfreq(n, d) for n, d in pairs]
    freqs.append(2 * np.pi * np.fft.rfftfreq(shape[-1], cell_size[-1]))
    k2 = sum(np.meshgrid(*[f**2 for f in freqs], indexing="ij")).astype(np.float32)
    k0 = 2 * jnp.pi / outer_scale_pc
    amplitude = (jnp.asarray(k2) + k0**2) ** (-spectral_index / 4.0)
    amplitude = amplitude * jnp.exp(-0.5 * jnp.asarray(k2) * smoothing_pc**2)
    amplitude = amplitude.at[(0,) * len(shape)].set(0.0)  # no power in the mean
    field = jnp.fft.irfftn(jnp.fft.rfftn(noise) * amplitude, s=shape)
    return (field - field.mean()) / field.std()


def smoothed_exponential(u, scale, sigma):
    """exp(-|u| / scale) convolved with a unit Gaussian of standard deviation ``sigma`` (> 0):

    0.5 exp(s^2 / 2h^2) [exp(-a / h) erfc((s^2 / h - a) / (sqrt 2 s))
                         + exp(a / h) erfc((s^2 / h + a) / (sqrt 2 s))],  a = |u|, h = scale.
    """
    a = jnp.abs(u)
    r2s = math.sqrt(2.0) * sigma
    lead = jnp.exp(-a / scale) * erfc((sigma**2 / scale - a) / r2s)
    # exp(a/h) erfc(x) with x >= a / (sqrt 2 s): written as exp(a/h - x^2) erfcx(x) would be
    # exact; erfc underflows to 0 first (x > ~10), long before exp(a/h) overflows (a/h > 88).
    trail = jnp.exp(jnp.minimum(a / scale, 80.0)) * erfc((sigma**2 / scale + a) / r2s)
    return 0.5 * jnp.exp(0.5 * (sigma / scale) ** 2) * (lead + trail)


def _crop(field, shape):
    return field[: shape[0], : shape[1], : shape[2]]


# ---- the cube ---------------------------------------------------------------------------------
def sky_density(key: jax.Array, region: Region, params: SkyParams = SKY) -> jax.Array:
    """One sky-like density cube (mag/pc, float32), shape ``region.shape``."""
    p = params.resolve(region)
    keys = iter(jax.random.split(key, 24))
    shape = region.shape
    cell = np.asarray(region.cell_size_pc, np.float32)
    centres = [jnp.asarray(region.centres_pc(a), jnp.float32) for a in range(3)]
    x, y, z = jnp.meshgrid(*centres, indexing="ij")
    centre = 0.5 * (np.asarray(region.lower_pc) + np.asarray(region.upper_pc))

    # Effective resolution: a Gaussian smoothing of FWHM in [0, 1] cell (Bayestar19 regridded to
    # the region is ~1 cell; the true sky is sharper), applied to the fields, clumps and edges.
    fwhm_cells = _uniform(next(keys), p.smoothing_fwhm_cells_range)
    smoothing_pc = fwhm_cells * float(np.mean(cell)) / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    # Disc: exponential in |Z - z_mid(X, Y)|, a radial gradient in a random direction.
    scale_height = _uniform(next(keys), p.scale_height_range_pc)
    tilt = jax.random.uniform(next(keys), (2,), minval=-p.tilt_max, maxval=p.tilt_max)
    z_mid_centre = _uniform(next(keys), p.midplane_range_pc)

    def z_mid(xs, ys):
        return z_mid_centre + tilt[0] * (xs - centre[0]) + tilt[1] * (ys - centre[1])

    # The cusp of exp(-|u| / h) is rounded by the resolution: the cell's width (variance
    # dz^2 / 12) and the drawn smoothing, added in quadrature.
    dz = float(region.cell_size_pc[2])
    disc = smoothed_exponential(
        z - z_mid(x, y), scale_height, jnp.hypot(smoothing_pc, dz / 12**0.5)
    )
    if p.scale_length_range_pc is not None:
        angle = jax.random.uniform(next(keys), maxval=2 * jnp.pi)
        length = _uniform(next(keys), p.scale_length_range_pc)
        along = jnp.cos(angle) * (x - centre[0]) + jnp.sin(angle) * (y - centre[1])
        disc = disc * jnp.exp(-along / length)

    # Diffuse medium: a log-normal turbulent field of mean 1, drawn on a padded periodic grid.
    padded = tuple(int(p.padding) * n for n in shape)
    sigma_ln = _uniform(next(keys), p.sigma_ln_range)
    beta = _uniform(next(keys), p.spectral_index_range)
    outer = _log_uniform(next(keys), p.driving_scale_range_pc)
    g = _standard_field(next(keys), padded, tuple(cell), beta, outer, smoothing_pc)
    g = _crop(g, shape)
    diffuse = jnp.exp(sigma_ln * g - 0.5 * sigma_ln**2)
    rho_mid = _log_uniform(next(keys), p.diffuse_mid_range_mag_per_pc)
    density = rho_mid * disc * diffuse

    # Clouds.
    clouds = _clouds(next(keys), region, p, scale_height, z_mid, smoothing_pc)
    density = density + clouds

    # Cavities: a random fraction emptied by a smooth field, and a bubble around the Sun.
    depletion = _log_uniform(next(keys), p.depletion_range)
    empty_fraction = _uniform(next(keys), p.empty_fraction_range)
    smooth = _standard_field(next(keys), padded, tuple(cell), p.empty_smoothness, 1e9, smoothing_pc)
    smooth = _crop(smooth, shape)
    threshold = ndtri(jnp.clip(empty_fraction, 1e-6, 1 - 1e-6))
    keep = jax.nn.sigmoid((smooth - threshold) / 0.1)
    has_bubble = jax.random.uniform(next(keys)) < p.bubble_probability
    radius = _uniform(next(keys), p.bubble_radius_range_pc)
    edge = jnp.sqrt(max(10.0, 0.5 * float(cell.max())) ** 2 + smoothing_pc**2)
    distance = jnp.sqrt(x**2 + y**2 + z**2)
    outside = jax.nn.sigmoid((distance - radius) / edge)
    keep = keep * jnp.where(has_bubble, outside, 1.0)
    # Empty sky: a cone of directions from the Sun without dust (low-extinction windows and
    # the maps' survey gaps, e.g. Bayestar19's sky south of declination -30 deg).
    # (Skipped when off, so that cubes equal those of the simulator before cones: 2ea20ba.)
    k_has_cone, k_axis, k_angle = next(keys), next(keys), next(keys)
    if p.cone_probability > 0:
        has_cone = jax.random.uniform(k_has_cone) < p.cone_probability
        axis = jax.random.normal(k_axis, (3,))
        axis = axis / (jnp.linalg.norm(axis) + 1e-12)
        half_angle = jnp.deg2rad(_uniform(k_angle, p.cone_half_angle_range_deg))
        cosine = (axis[0] * x + axis[1] * y + axis[2] * z) / jnp.maximum(distance, 1e-6)
        in_cone = jax.nn.sigmoid((cosine - jnp.cos(half_angle)) / 0.005)  # a sharp edge, ~1 deg
        keep = keep * jnp.where(has_cone, 1.0 - in_cone, 1.0)
    density = density * (depletion + (1.0 - depletion) * keep)

    # Map-like radial smearing ("fingers of God"): maps built from stars smear each cloud along
    # the line of sight by the distance uncertainty; drawn for a fraction of the cubes.
    k_has_smearing, k_fraction = next(keys), next(keys)
    if p.radial_smearing_probability > 0:
        has_smearing = jax.random.uniform(k_has_smearing) < p.radial_smearing_probability
        fraction = _uniform(k_fraction, p.radial_smearing_range)
        density = radial_smear(density, region, jnp.where(has_smearing, fraction, 0.0))
    return density.astype(jnp.float32)


def radial_smear(density, region: Region, fraction, num_nodes: int = 11) -> jax.Array:
    """The density smoothed along the rays from the Sun with a log-normal distance kernel:

    rho_s(x) = sum_i w_i exp(f t_i) rho(x exp(f t_i)),  (t_i, w_i) Gauss-Hermite nodes of N(0, 1),

    a smoothing of relative width f = ``fraction`` in distance (traced; 0 returns the input) that
    keeps every ray's column, int rho dr, and so the extinction behind a cloud, as a map does.
    Trilinear interpolation (adds < 1 cell of blur); samples beyond the region take the nearest
    face's value.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    weights = weights / weights.sum()
    centres = jnp.asarray(region.cell_centres_pc(), jnp.float32).reshape(-1, 3)
    lower = jnp.asarray(region.lower_pc, jnp.float32)
    cell = jnp.asarray(region.cell_size_pc, jnp.float32)
    out = jnp.zeros(region.num_cells, jnp.float32)
    for t, w in zip(nodes, weights, strict=True):
        stretch = jnp.exp(fraction * float(t))
        index = ((centres * stretch - lower) / cell - 0.5).T
        out = out + float(w) * stretch * jax.scipy.ndimage.map_coordinates(
            density, list(index), order=1, mode="nearest"
        )
    return out.reshape(region.shape)


def _clouds(key, region: Region, p: SkyParams, scale_height, z_mid, smoothing_pc) -> jax.Array:
    """Cloud complexes: Levy walks of Gaussian clumps, deposited as exact cell averages."""
    n_complex = int(p.num_complexes_range[1])
    n_clump = int(p.clumps_per_complex)
    if n_complex == 0:
        return jnp.zeros(region.shape, jnp.float32)
    keys = iter(jax.random.split(key, 12))
    lower = np.asarray(region.lower_pc, np.float32)
    upper = np.asarray(region.upper_pc, np.float32)
    margin = 0.1 * (upper - lower)

    # Complex centres: uniform in X, Y (box widened by 10 %), Laplace in Z about the mid-plane.
    xy = jax.random.uniform(
        next(keys), (n_complex, 2), minval=lower[:2] - margin[:2], maxval=upper[:2] + margin[:2]
    )
    z_offset = scale_height * jax.random.laplace(next(keys), (n_complex,))
    starts = jnp.concatenate([xy, (z_mid(xy[:, 0], xy[:, 1]) + z_offset)[:, None]], axis=1)

    # Levy walks: Pareto steps, directions persistent by a per-complex factor in [0, 0.9].
    u = jax.random.uniform(next(keys), (n_complex, n_clump), minval=1e-6, maxval=1.0)
    steps = jnp.minimum(p.step_pc * u ** (-1.0 / p.levy_alpha), p.max_step_factor * p.step_pc)
    steps = steps.at[:, 0].set(0.0)
    raw = jax.random.normal(next(keys), (n_complex, n_clump, 3))
    persistence = jax.random.uniform(next(keys), (n_complex,), maxval=0.9)

    def turn(direction, fresh):
        d = persistence[:, None] * direction + (1.0 - persistence[:, None]) * fresh
        d = d / (jnp.linalg.norm(d, axis=-1, keepdims=True) + 1e-12)
        return d, d

    fresh = raw / (jnp.linalg.norm(raw, axis=-1, keepdims=True) + 1e-12)
    _, directions = jax.lax.scan(turn, fresh[:, 0], jnp.swapaxes(fresh, 0, 1))
    directions = jnp.swapaxes(directions, 0, 1)
    # Complexes lie flat in the disc (the Radcliffe wave: 2.7 kpc long, ~100 pc thick, Alves et
    # al. 2020): vertical steps are shortened, which also keeps the disc's scale height.
    flatten = jnp.asarray([1.0, 1.0, p.complex_flattening], jnp.float32)
    walk = jnp.cumsum(steps[..., None] * directions * flatten, axis=1)
    positions = starts[:, None, :] + walk

    # Amplitudes: Larson-scaled peaks, a per-complex amplitude, and a random number of complexes.
    radius = _log_uniform(next(keys), p.clump_radius_range_pc, (n_complex, n_clump))
    amplitude = _log_uniform(next(keys), p.cloud_amplitude_range_mag_per_pc, (n_complex, 1))
    factor = _log_uniform(next(keys), p.clump_factor_range, (n_complex, n_clump))
    count = jax.random.randint(
        next(keys), (), int(p.num_complexes_range[0]), int(p.num_complexes_range[1]) + 1
    )
    active = (jnp.arange(n_complex) < count)[:, None]
    peak = jnp.where(active, amplitude * factor * (radius / 10.0) ** (-p.larson_index), 0.0)
    # Smoothing widens each clump and keeps its mass (peak s^3 constant).
    smoothed = jnp.sqrt(radius**2 + smoothing_pc**2)
    peak, radius = peak * (radius / smoothed) ** 3, smoothed

    return deposit_gaussians(positions.reshape(-1, 3), radius.reshape(-1), peak.reshape(-1), region)


def deposit_gaussians(positions_pc, radii_pc, peaks, region: Region) -> jax.Array:
    """Cell averages of a sum of isotropic Gaussians ``peak exp(-|x - c|^2 / (2 s^2))``.

    Separable per axis: the mean of a 1D Gaussian over a cell [a, b] is
    sqrt(pi / 2) (s / dx) [erf((b - c) / (sqrt 2 s)) - erf((a - c) / (sqrt 2 s))], so a clump
    smaller than a cell keeps its mass, peak (2 pi)^(3/2) s^3, exactly (when inside the region).
    ``positions_pc`` (K, 3), ``radii_pc`` and ``peaks`` (K,); returns ``region.shape``.
    """
    profiles = []
    for axis in range(3):
        edges = jnp.asarray(region.edges_pc(axis), jnp.float32)
        dx = float(region.cell_size_pc[axis])
        t = (edges[None, :] - positions_pc[:, axis, None]) / (math.sqrt(2.0) * radii_pc[:, None])
        mass = jnp.maximum(jnp.diff(erf(t), axis=1), 0.0)  # float32 erf: guard against -0
        profiles.append(math.sqrt(math.pi / 2) * radii_pc[:, None] / dx * mass)
    wx, wy, wz = profiles
    return jnp.einsum("ki,kj,kl->ijl", wx * peaks[:, None], wy, wz)


__all__ = [
    "SKY",
    "SKY_LR",
    "SKY_SR",
    "SkyParams",
    "deposit_gaussians",
    "preset_name",
    "sky_density",
]
