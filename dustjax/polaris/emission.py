r"""13CO (J = 1-0) emission of the simulated clouds by LTE ray tracing (Ribeiro 2025, part III
sect. 7.1.1, eqs. 8-9), in JAX: position-position-velocity (PPV) cubes of brightness temperature.

**Radiative transfer (eq. 9).** Along a line of sight of N cells, each with constant properties,

    I_{i+1} = I_i e^{-tau_i} + B_i (1 - e^{-tau_i}),

starting from the cosmic microwave background, I_0 = B(T_CMB). Intensities are carried in
Rayleigh-Jeans temperature units, I -> (c^2 / 2 k nu^2) I, so that the Planck function becomes
J(T) = (h nu / k) / (e^{h nu / k T} - 1) (in K) and the output is the usual radio brightness
temperature above the background, T_B = I_N - J(T_CMB). For a uniform isothermal slab this is the
analytic T_B = (J(T) - J(T_CMB)) (1 - e^{-tau}), which the tests check. `ppv_cube` runs the
recurrence cell by cell with `jax.lax.scan` over the line of sight, computing each slab's optical
depth on the fly (memory O(nx ny channels), not O(nx ny nz channels), so 512^3 clouds fit on one
GPU); `ray_trace_closed_form` is the associative (composition of affine maps) solution,
I_N = I_0 e^{-sum tau} + sum_i B_i (1 - e^{-tau_i}) e^{-sum_{j>i} tau_j}, used as an independent
check.

**Opacity (LTE).** With n(13CO) = chi n_H (chi = 1.4e-6: chi_CO = 1e-4, Fuente et al. 2019,
over the 12C/13C ratio 70; the paper's value), the lower level population
n_l = n(13CO) g_l e^{-E_l / kT} / Q(T) and the velocity-integrated absorption coefficient

    int alpha dv = (c^3 / 8 pi nu^3) A_ul (g_u / g_l) n_l (1 - e^{-h nu / k T})       [cm^-1 cm/s]

(stimulated emission included), spread over a Gaussian line profile of dispersion
sigma^2 = k T / m(13CO) + sigma_turb^2 (thermal plus unresolved turbulent width), centred on the
cell's line-of-sight velocity. tau of a channel is this times the cell length dz times the
profile averaged over the channel (a difference of error functions), so the line's integral over
velocity, int tau dv, is exact whatever the channel width (the energy test); `oversample`
sub-channels per channel, averaged in T_B, also resolve narrow optically thick lines.

**Geometry and sign convention.** The line of sight is the last axis of the arrays handed to
`ppv_cube`; the ray enters the cube at index 0 (the far side) and leaves towards the observer
after index nz - 1. Radial velocities are positive when receding (the radio convention), so for
a cloud projected along its axis a the line-of-sight velocity is v_los = -v_a (`cloud_ppv`).

**Constants and line data (CGS).** h, k, c exact (SI 2019); atomic mass unit CODATA 2018; T_CMB =
2.7255 K (Fixsen 2009). 13CO J = 1-0: rest frequency 110.201354 GHz (CDMS catalogue entry
029501, Mueller et al. 2005; also JPL); Einstein A_10 = 6.33e-8 s^-1, from the dipole moment
mu = 0.11046 D (CDMS), A = 64 pi^4 nu^3 mu^2 / (3 h c^3) x J_u / (2 J_u + 1) = 6.336e-8 s^-1
(`einstein_a_from_dipole`; LAMDA, Schoeier et al. 2005, lists 6.294e-8); rotational constant B_0 =
55101.0138 MHz (CDMS) with the distortion D_0 fixed by nu_10 = 2 B_0 - 4 D_0; mass 28.9983 u
(13C 13.0033548 + 16O 15.9949146). The LTE partition function is the explicit sum
Q(T) = sum_J (2J + 1) e^{-E_J / kT}, E_J = h (B_0 J(J+1) - D_0 J^2 (J+1)^2), J <= 80 (the
approximation kT / hB + 1/3 agrees to < 0.1 % above 5 K; the tests check it).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.geometry import PC_CM

# ---- constants (CGS) ----------------------------------------------------------------------------
H_PLANCK = 6.62607015e-27  # erg s (exact)
K_BOLTZMANN = 1.380649e-16  # erg / K (exact)
C_LIGHT = 2.99792458e10  # cm / s (exact)
ATOMIC_MASS = 1.66053906660e-24  # g (CODATA 2018)
DEBYE = 1e-18  # esu cm
T_CMB = 2.7255  # K (Fixsen 2009)
KMS = 1e5  # cm/s per km/s


@dataclasses.dataclass(frozen=True)
class LineData:
    """A rotational line of a linear molecule (J_u -> J_u - 1) and its abundance relative to H.

    Attributes:
      name: label (FITS headers, plots).
      frequency_hz: rest frequency nu_ul.
      einstein_a: spontaneous emission rate A_ul, s^-1.
      rotational_constant_hz: B_0; centrifugal_distortion_hz: D_0 (E_J = h (B J(J+1) - D J^2
        (J+1)^2)).
      molecular_mass_amu: mass of the molecule, u.
      upper_j: J_u (J_l = J_u - 1; g = 2J + 1).
      abundance: chi = n(molecule) / n_H.
    """

    name: str
    frequency_hz: float
    einstein_a: float
    rotational_constant_hz: float
    centrifugal_distortion_hz: float
    molecular_mass_amu: float
    upper_j: int = 1
    abundance: float = 1.4e-6

    @property
    def g_upper(self) -> int:
        return 2 * self.upper_j + 1

    @property
    def g_lower(self) -> int:
        return 2 * self.upper_j - 1

    @property
    def t_nu(self) -> float:
        """h nu / k, K (5.289 K for 13CO 1-0)."""
        return H_PLANCK * self.frequency_hz / K_BOLTZMANN

    def level_energy_k(self, j):
        """E_J / k in K."""
        j = jnp.asarray(j, jnp.float32)
        x = j * (j + 1.0)
        return (
            H_PLANCK
            * (self.rotational_constant_hz * x - self.centrifugal_distortion_hz * x**2)
            / K_BOLTZMANN
        )


_B_13CO = 55101.0138e6
_NU_13CO = 110.201354e9
CO13_10 = LineData(
    name="13CO(1-0)",
    frequency_hz=_NU_13CO,
    einstein_a=6.33e-8,
    rotational_constant_hz=_B_13CO,
    centrifugal_distortion_hz=(2.0 * _B_13CO - _NU_13CO) / 4.0,  # nu_10 = 2 B - 4 D
    molecular_mass_amu=13.0033548 + 15.9949146,
    upper_j=1,
    abundance=1.4e-6,  # chi_CO = 1e-4 over 12C/13C = 70 (paper sect. 7.1.1)
)


def einstein_a_from_dipole(frequency_hz: float, dipole_debye: float, upper_j: int = 1) -> float:
    """A_ul = 64 pi^4 nu^3 mu^2 / (3 h c^3) x J_u / (2 J_u + 1) for a linear rotor, s^-1."""
    mu = dipole_debye * DEBYE
    return (
        64.0 * math.pi**4 * frequency_hz**3 * mu**2 / (3.0 * H_PLANCK * C_LIGHT**3)
        * upper_j / (2 * upper_j + 1)
    )  # fmt: skip


def partition_function(temperature_k, line: LineData = CO13_10, max_j: int = 80):
    """LTE rotational partition function Q(T) = sum_J (2J + 1) exp(-E_J / kT)."""
    j = jnp.arange(max_j + 1, dtype=jnp.float32)
    energy = line.level_energy_k(j)
    t = jnp.asarray(temperature_k, jnp.float32)[..., None]
    return jnp.sum((2.0 * j + 1.0) * jnp.exp(-energy / t), axis=-1)


def radiation_temperature(temperature_k, line: LineData = CO13_10):
    """J_nu(T) = (h nu / k) / (exp(h nu / kT) - 1): the Planck function in RJ units, K."""
    t = jnp.asarray(temperature_k, jnp.float32)
    return line.t_nu / jnp.expm1(line.t_nu / t)


def thermal_dispersion_kms(temperature_k, line: LineData = CO13_10):
    """sqrt(k T / m) of the molecule, km/s (0.0535 km/s for 13CO at 10 K)."""
    mass = line.molecular_mass_amu * ATOMIC_MASS
    return jnp.sqrt(K_BOLTZMANN * jnp.asarray(temperature_k, jnp.float32) / mass) / KMS


def integrated_opacity_per_cm(density_h_cm3, temperature_k, line: LineData = CO13_10):
    """int alpha dv in cm^-1 km/s: the LTE absorption coefficient (stimulated emission
    included) integrated over the line, for n_H in cm^-3 (module docstring)."""
    t = jnp.asarray(temperature_k, jnp.float32)
    n_mol = line.abundance * jnp.asarray(density_h_cm3, jnp.float32)
    e_lower = line.level_energy_k(line.upper_j - 1)
    n_lower = n_mol * line.g_lower * jnp.exp(-e_lower / t) / partition_function(t, line)
    # (c^3 / 8 pi nu^3) A g_u / g_l in cm^3 s^-1 * ... ; divided by KMS for km/s.
    factor = C_LIGHT**3 / (8.0 * math.pi * line.frequency_hz**3) * line.einstein_a
    factor *= line.g_upper / line.g_lower / KMS
    return factor * n_lower * (-jnp.expm1(-line.t_nu / t))


@dataclasses.dataclass(frozen=True)
class SpectralAxis:
    """Uniform velocity channels: centres v_min + (i + 1/2) dv, i < num_channels, in km/s
    (radio convention, positive receding)."""

    v_min_kms: float = -8.0
    channel_width_kms: float = 0.5
    num_channels: int = 32

    def __post_init__(self):
        if self.num_channels < 1 or not self.channel_width_kms > 0:
            raise ValueError(
                f"need num_channels >= 1 and channel_width_kms > 0, got {self.num_channels}, "
                f"{self.channel_width_kms}"
            )

    @classmethod
    def centred(cls, half_width_kms: float, num_channels: int) -> SpectralAxis:
        """Channels spanning [-half_width, +half_width]."""
        width = 2.0 * half_width_kms / num_channels
        return cls(-half_width_kms, width, num_channels)

    @property
    def edges(self) -> np.ndarray:
        return self.v_min_kms + self.channel_width_kms * np.arange(self.num_channels + 1)

    @property
    def centres(self) -> np.ndarray:
        return self.v_min_kms + self.channel_width_kms * (np.arange(self.num_channels) + 0.5)


def channel_profile(v_centre_kms, sigma_kms, edges_kms):
    """Gaussian line profile averaged over each channel, (..., channels), in (km/s)^-1:
    [Phi((v_hi - v0)/sigma) - Phi((v_lo - v0)/sigma)] / dv; sums to (fraction inside) / dv."""
    edges = jnp.asarray(edges_kms, jnp.float32)
    z = (edges - jnp.asarray(v_centre_kms)[..., None]) / (
        jnp.sqrt(2.0) * jnp.asarray(sigma_kms)[..., None]
    )
    # Differences of tail masses, not of the CDF, so that far wings keep float32 precision;
    # one erfc per edge: tail = mass beyond |z| on z's side.
    tail = 0.5 * jax.scipy.special.erfc(jnp.abs(z))
    lo_z, hi_z, lo_t, hi_t = z[..., :-1], z[..., 1:], tail[..., :-1], tail[..., 1:]
    mass = jnp.where(lo_z >= 0, lo_t - hi_t, jnp.where(hi_z <= 0, hi_t - lo_t, 1.0 - lo_t - hi_t))
    return mass / jnp.diff(edges)


def _slab_optical_depth(density, temperature, v_los, dz_cm, sub_edges, subgrid_sigma, line):
    """tau (..., sub_channels) of one slab of cells of length dz_cm."""
    sigma = jnp.sqrt(thermal_dispersion_kms(temperature, line) ** 2 + subgrid_sigma**2)
    phi = channel_profile(v_los, sigma, sub_edges)
    return (integrated_opacity_per_cm(density, temperature, line) * dz_cm)[..., None] * phi


def _sub_edges(spectral: SpectralAxis, oversample: int) -> np.ndarray:
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    width = spectral.channel_width_kms / oversample
    return spectral.v_min_kms + width * np.arange(spectral.num_channels * oversample + 1)


def ppv_cube(
    density,
    temperature,
    v_los,
    cell_size_pc: float,
    spectral: SpectralAxis = SpectralAxis(),
    *,
    line: LineData = CO13_10,
    subgrid_sigma_kms=0.0,
    background_k: float = T_CMB,
    oversample: int = 1,
):
    """Brightness temperature T_B (..., channels) in K by eq. 9 along the LAST axis.

    Args:
      density: (..., nz) n_H, cm^-3. temperature: (..., nz) gas temperature = excitation
        temperature (LTE), K. v_los: (..., nz) line-of-sight velocity, km/s, positive receding.
        The ray enters at index 0 and reaches the observer after index nz - 1.
      cell_size_pc: cell length along the line of sight, pc.
      spectral: the velocity channels.
      subgrid_sigma_kms: unresolved turbulent dispersion per cell, km/s (scalar or (..., nz)).
      background_k: temperature of the background black body (the CMB).
      oversample: sub-channels per channel; T_B is their average.

    Returns T_B = I_out - J(T_bg), the continuum-subtracted brightness temperature, K.
    """
    density = jnp.asarray(density, jnp.float32)
    temperature = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), density.shape)
    v_los = jnp.broadcast_to(jnp.asarray(v_los, jnp.float32), density.shape)
    subgrid = jnp.broadcast_to(jnp.asarray(subgrid_sigma_kms, jnp.float32), density.shape)
    return _ppv_scan(
        density, temperature, v_los, subgrid, float(cell_size_pc), spectral, line,
        float(background_k), int(oversample),
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8))
def _ppv_scan(density, temperature, v_los, subgrid, cell_size_pc, spectral, line, background,
              oversample):  # fmt: skip
    dz_cm = cell_size_pc * PC_CM
    sub_edges = _sub_edges(spectral, oversample)
    j_bg = radiation_temperature(background, line)
    batch = density.shape[:-1]
    # Eq. 9 minus J_bg on both sides: the carry is T_B = I - J_bg itself, so that faint lines
    # keep float32 precision (I ~ 0.9 K of CMB plus 1e-4 K of line would lose it).
    t_b = jnp.zeros((*batch, len(sub_edges) - 1), jnp.float32)

    def step(t_b, cell):  # eq. 9 for one slab of cells
        n, t, v, s = cell
        tau = _slab_optical_depth(n, t, v, dz_cm, sub_edges, s, line)
        source = (radiation_temperature(t, line) - j_bg)[..., None]
        return t_b * jnp.exp(-tau) + source * (-jnp.expm1(-tau)), None

    cells = tuple(jnp.moveaxis(a, -1, 0) for a in (density, temperature, v_los, subgrid))
    t_b, _ = jax.lax.scan(step, t_b, cells)
    return jnp.mean(t_b.reshape(*batch, spectral.num_channels, oversample), axis=-1)


def optical_depth(density, temperature, v_los, cell_size_pc, spectral, *, line=CO13_10,
                  subgrid_sigma_kms=0.0, oversample: int = 1):  # fmt: skip
    """tau per cell and sub-channel, (..., nz, channels x oversample) (for checks and plots)."""
    return _slab_optical_depth(
        jnp.asarray(density, jnp.float32), jnp.asarray(temperature, jnp.float32),
        jnp.asarray(v_los, jnp.float32), cell_size_pc * PC_CM,
        _sub_edges(spectral, oversample), jnp.asarray(subgrid_sigma_kms, jnp.float32), line,
    )  # fmt: skip


def ray_trace_closed_form(tau, source, background):
    """Eq. 9 solved at once (the composition of the affine maps I -> I e^{-tau} + B(1 - e^{-tau})):
    I_N = I_0 e^{-sum tau} + sum_i B_i (1 - e^{-tau_i}) e^{-sum_{j > i} tau_j}.

    tau: (..., nz, channels); source B: (..., nz) or (..., nz, channels); background I_0
    broadcastable to (..., channels). Returns I_N (..., channels)."""
    tau = jnp.asarray(tau, jnp.float32)
    source = jnp.asarray(source, jnp.float32)
    if source.ndim == tau.ndim - 1:
        source = source[..., None]
    # optical depth between cell i and the observer: exclusive reverse cumulative sum
    behind = jnp.flip(jnp.cumsum(jnp.flip(tau, -2), axis=-2), -2) - tau
    emitted = jnp.sum(source * (-jnp.expm1(-tau)) * jnp.exp(-behind), axis=-2)
    return background * jnp.exp(-jnp.sum(tau, axis=-2)) + emitted


def cloud_ppv(
    state: dict,
    axis: int,
    cell_size_pc: float,
    spectral: SpectralAxis = SpectralAxis(),
    *,
    subgrid_sigma_kms=0.0,
    line: LineData = CO13_10,
    oversample: int = 1,
):
    """PPV cube (image axes in the order `dustjax.polaris.projection.project` keeps, channels)
    of a cloud state {"density", "velocity" (3, ...), "temperature"} seen along `axis`, with the
    observer on the +axis side (v_los = -v_axis)."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    density = jnp.moveaxis(jnp.asarray(state["density"]), axis, -1)
    temperature = jnp.moveaxis(jnp.asarray(state["temperature"]), axis, -1)
    v_los = -jnp.moveaxis(jnp.asarray(state["velocity"])[axis], axis, -1)
    return ppv_cube(
        density, temperature, v_los, cell_size_pc, spectral, line=line,
        subgrid_sigma_kms=subgrid_sigma_kms, oversample=oversample,
    )  # fmt: skip


def batched_cloud_ppv(
    states: dict,
    axis: int,
    cell_size_pc: float,
    spectral: SpectralAxis,
    *,
    subgrid_sigma_kms=0.0,
    line: LineData = CO13_10,
    oversample: int = 1,
):
    """`cloud_ppv` vmapped over a leading cloud axis of every array of `states` (one compiled
    program for a batch of clouds on the device); `subgrid_sigma_kms` scalar or (clouds,)."""
    sigma = jnp.broadcast_to(
        jnp.asarray(subgrid_sigma_kms, jnp.float32), (jnp.shape(states["density"])[0],)
    )

    def one(density, velocity, temperature, s):
        return cloud_ppv(
            {"density": density, "velocity": velocity, "temperature": temperature}, axis,
            cell_size_pc, spectral, subgrid_sigma_kms=s, line=line, oversample=oversample,
        )  # fmt: skip

    return jax.vmap(one)(states["density"], states["velocity"], states["temperature"], sigma)


MOMENT_NAMES = ("integrated_intensity", "centroid_velocity", "velocity_dispersion", "peak_tb")


def moment_maps(t_b, spectral: SpectralAxis, floor_k_kms: float = 1e-6) -> dict:
    """Moment maps of a PPV cube (..., channels) in K:

    integrated_intensity W = sum T_B dv (K km/s, moment 0); centroid_velocity
    sum T_B v dv / W (km/s, moment 1); velocity_dispersion sqrt(sum T_B (v - M1)^2 dv / W)
    (km/s, moment 2); peak_tb max T_B (K). Where W < `floor_k_kms` moments 1 and 2 are 0.
    """
    t_b = jnp.asarray(t_b, jnp.float32)
    v = jnp.asarray(spectral.centres, jnp.float32)
    dv = spectral.channel_width_kms
    weight = jnp.maximum(t_b, 0.0)  # absorption below the CMB does not weight the moments
    w = jnp.sum(t_b, axis=-1) * dv
    w_pos = jnp.sum(weight, axis=-1) * dv
    valid = w_pos > floor_k_kms
    safe = jnp.where(valid, w_pos, 1.0)
    m1 = jnp.sum(weight * v, axis=-1) * dv / safe
    m2 = jnp.sqrt(jnp.maximum(jnp.sum(weight * (v - m1[..., None]) ** 2, axis=-1) * dv / safe, 0.0))
    return {
        "integrated_intensity": w,
        "centroid_velocity": jnp.where(valid, m1, 0.0),
        "velocity_dispersion": jnp.where(valid, m2, 0.0),
        "peak_tb": jnp.max(t_b, axis=-1),
    }


def column_density_13co(integrated_tau_kms, temperature_k, line: LineData = CO13_10):
    """N(13CO) in cm^-2 from int tau dv (km/s) in LTE (the inverse of the opacity above, written
    as in Mangum & Shirley 2015, eq. 80 with the level sum): an independent route for tests."""
    t = jnp.asarray(temperature_k, jnp.float32)
    e_upper = line.level_energy_k(line.upper_j)
    a = 8.0 * math.pi * line.frequency_hz**3 / (C_LIGHT**3 * line.einstein_a * line.g_upper)
    return (
        a * partition_function(t, line) * jnp.exp(e_upper / t) / jnp.expm1(line.t_nu / t)
        * integrated_tau_kms * KMS
    )  # fmt: skip
