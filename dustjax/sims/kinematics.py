"""Gas velocities and temperatures for the simulated molecular clouds (POLARIS part III).

The cloud simulator (`dustjax.sims.clouds`) makes number-density cubes only; molecular line
emission (`dustjax.polaris.emission`) also needs the gas velocity (Doppler shifts) and the gas
temperature (excitation and thermal line width). This module adds both, in pure JAX on the same
grid (`CloudGrid`), with every physical knob a traced scalar (`KinematicsParams`, a pytree).

**Turbulent velocity.** Each Cartesian component is a zero-mean Gaussian random field whose 3D
power spectrum is P(k) ~ (k^2 + k_0^2)^(-(3 + 2 gamma)/2), k_0 = 2 pi / driving scale. Below the
driving scale this gives a second-order structure function <|dv(l)|^2> ~ l^(2 gamma), i.e.
Larson's size-linewidth relation sigma_v(L) ~ L^gamma (gamma = 0.38: Larson 1981; 0.5: Solomon et
al. 1987, Burgers-like supersonic turbulence; Kolmogorov would be 1/3). The field is split in
Fourier space with the projection of Federrath et al. (2010), P = zeta P_perp + (1 - zeta) P_par
(zeta = 1 purely solenoidal, 0 purely compressive, 1/2 the natural mixture), and scaled so that
the one-dimensional (per component) rms over the box equals Larson's relation at the box size,
sigma_1D(L_box) = sigma_1pc (L_box / 1 pc)^gamma. The default, sigma_1pc = 0.72 km/s with
gamma = 0.5, is the relation of Solomon et al. (1987), sigma_v = 0.72 S^0.5 km/s (S in pc);
Larson's (1981) sigma = 1.10 km/s L^0.38 is one config change away.

Motions below a cell are not resolved by the grid; `subgrid_dispersion_kms` gives the
one-dimensional turbulent dispersion within a cell that the same relation predicts,
sigma_1pc (cell / 1 pc)^gamma, the "turbulent" part of the line width of each cell.

**Temperature.** T = clip(T_0 (n / n_ref)^q, T_min, T_max): uniform for q = 0 (the paper's
isothermal ORION run), colder in dense gas for q < 0 (dense cores are shielded from the
interstellar radiation field: ~8-10 K in cores, 15-20 K in the diffuse envelope).

Clouds are saved as compressed .npz files holding density, velocity and temperature together
(`save_cloud` / `load_cloud`, written atomically); `data_gen/make_cloud_cubes.py` writes them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.sims.clouds import CloudGrid, CloudParams, _wavenumbers_sq, simulate_cloud


class KinematicsParams(NamedTuple):
    """Velocity and temperature knobs of one cloud (floats or traced scalars).

    Attributes:
      linewidth_1pc_kms: sigma_1pc, the one-dimensional velocity dispersion on a 1 pc scale, km/s.
      linewidth_index: gamma of sigma_v(L) = sigma_1pc (L / pc)^gamma (0.38 - 0.5 observed).
      driving_scale_pc: scale above which the velocity power spectrum flattens, pc.
      solenoidal_weight: zeta of the Helmholtz projection (1 solenoidal, 0 compressive, 0.5 mix).
      temperature_k: T_0, the gas temperature at `temperature_reference_cm3`, K.
      temperature_index: q of T = T_0 (n / n_ref)^q (0: isothermal).
      temperature_reference_cm3: n_ref, cm^-3.
      temperature_min_k, temperature_max_k: clipping range of T, K.
    """

    linewidth_1pc_kms: float = 0.72
    linewidth_index: float = 0.5
    driving_scale_pc: float = 20.0
    solenoidal_weight: float = 0.5
    temperature_k: float = 10.0
    temperature_index: float = 0.0
    temperature_reference_cm3: float = 1e3
    temperature_min_k: float = 5.0
    temperature_max_k: float = 100.0


def larson_dispersion_kms(scale_pc, params: KinematicsParams = KinematicsParams()):
    """sigma_1D(L) = sigma_1pc (L / 1 pc)^gamma, km/s."""
    return params.linewidth_1pc_kms * jnp.asarray(scale_pc) ** params.linewidth_index


def subgrid_dispersion_kms(grid: CloudGrid, params: KinematicsParams = KinematicsParams()):
    """The unresolved (microturbulent) one-dimensional dispersion inside one cell, km/s."""
    return larson_dispersion_kms(grid.cell_size_pc, params)


def velocity_field(key, grid: CloudGrid, params: KinematicsParams = KinematicsParams()):
    """Turbulent velocity (3, n, n, n) in km/s: components (v_x, v_y, v_z) on the cloud's axes.

    Larson-like spectrum, Helmholtz-projected with weight zeta and scaled so that each
    component's rms over the box is sigma_1pc (L_box / pc)^gamma (see the module docstring).
    """
    return _velocity_field(key, grid, KinematicsParams(*(jnp.float32(v) for v in params)))


@functools.partial(jax.jit, static_argnames="grid")
def _velocity_field(key, grid: CloudGrid, params: KinematicsParams):
    n = grid.n_cells
    shape = (n, n, n)
    white = jax.random.normal(key, (3, *shape), dtype=jnp.float32)
    k_full = 2.0 * jnp.pi * jnp.fft.fftfreq(n, d=grid.cell_size_pc)
    k_half = 2.0 * jnp.pi * jnp.fft.rfftfreq(n, d=grid.cell_size_pc)
    k_vec = jnp.stack(jnp.meshgrid(k_full, k_full, k_half, indexing="ij"))  # (3, n, n, n//2+1)
    k2 = _wavenumbers_sq(n, grid.cell_size_pc)
    k0 = 2.0 * jnp.pi / params.driving_scale_pc
    amplitude = (k2 + k0**2) ** (-(3.0 + 2.0 * params.linewidth_index) / 4.0)
    amplitude = amplitude.at[0, 0, 0].set(0.0)  # no bulk motion
    # Nyquist modes have no direction (k and -k coincide): drop them so the projection is exact.
    nyquist = jnp.pi / grid.cell_size_pc
    at_nyquist = (jnp.abs(k_vec) >= nyquist * (1 - 1e-6)).any(axis=0) if n % 2 == 0 else False
    amplitude = jnp.where(at_nyquist, 0.0, amplitude)
    modes = jnp.fft.rfftn(white, axes=(1, 2, 3)) * amplitude
    # Helmholtz projection zeta P_perp + (1 - zeta) P_par, P_par = k k^T / k^2.
    k2_safe = jnp.where(k2 > 0, k2, 1.0)
    parallel = k_vec * jnp.sum(k_vec * modes, axis=0) / k2_safe
    zeta = params.solenoidal_weight
    modes = zeta * (modes - parallel) + (1.0 - zeta) * parallel
    velocity = jnp.fft.irfftn(modes, s=shape, axes=(1, 2, 3))
    velocity = velocity - jnp.mean(velocity, axis=(1, 2, 3), keepdims=True)
    rms_1d = jnp.sqrt(jnp.mean(velocity**2))  # mean over the three components
    target = params.linewidth_1pc_kms * grid.box_size_pc**params.linewidth_index
    return (velocity * (target / rms_1d)).astype(jnp.float32)


def gas_temperature(density, params: KinematicsParams = KinematicsParams()):
    """T = clip(T_0 (n / n_ref)^q, T_min, T_max) in K, from number density n in cm^-3."""
    ratio = jnp.asarray(density, jnp.float32) / params.temperature_reference_cm3
    temperature = params.temperature_k * ratio**params.temperature_index
    return jnp.clip(temperature, params.temperature_min_k, params.temperature_max_k).astype(
        jnp.float32
    )


def simulate_cloud_state(
    key,
    grid: CloudGrid,
    params: CloudParams = CloudParams(),
    kinematics: KinematicsParams = KinematicsParams(),
) -> dict:
    """One cloud with its gas state: {"density" (n,n,n) cm^-3, "velocity" (3,n,n,n) km/s,
    "temperature" (n,n,n) K}. The density is `simulate_cloud(key, ...)` (the same cube as the
    column-only pipeline for the same key); the velocity comes from an independent key."""
    density = simulate_cloud(key, grid, params)
    velocity = velocity_field(jax.random.fold_in(key, 0x5E10C), grid, kinematics)
    return {
        "density": density,
        "velocity": velocity,
        "temperature": gas_temperature(density, kinematics),
    }


def sample_kinematics(
    key,
    *,
    linewidth_index_range=(0.38, 0.5),
    linewidth_1pc_range_kms=(0.6, 1.1),
    temperature_range_k=(8.0, 15.0),
    base: KinematicsParams | None = None,
) -> KinematicsParams:
    """Draw per-cloud kinematics for a randomised dataset: gamma, sigma_1pc and T_0 uniform in
    their ranges, the rest from `base`."""
    base = KinematicsParams() if base is None else base
    k_g, k_s, k_t = jax.random.split(key, 3)
    uniform = functools.partial(jax.random.uniform, shape=())
    return base._replace(
        linewidth_index=uniform(k_g, minval=linewidth_index_range[0],
                                maxval=linewidth_index_range[1]),
        linewidth_1pc_kms=uniform(k_s, minval=linewidth_1pc_range_kms[0],
                                  maxval=linewidth_1pc_range_kms[1]),
        temperature_k=uniform(k_t, minval=temperature_range_k[0],
                              maxval=temperature_range_k[1]),
    )  # fmt: skip


CLOUD_KEYS = ("density", "velocity", "temperature")
CLOUD_UNITS = {"density": "cm^-3", "velocity": "km/s", "temperature": "K"}


def save_cloud(path, state: dict, cell_size_pc: float, metadata: dict | None = None) -> Path:
    """Write a cloud (density, velocity, temperature) as one compressed .npz, atomically.

    The file also holds ``cell_size_pc``, the units and `metadata` (as JSON text)."""
    from dustjax import io as dio

    path = Path(path)
    missing = [k for k in CLOUD_KEYS if k not in state]
    if missing:
        raise ValueError(f"cloud state lacks {missing}; it needs {list(CLOUD_KEYS)}")
    n = np.shape(state["density"])
    if np.shape(state["velocity"]) != (3, *n) or np.shape(state["temperature"]) != n:
        raise ValueError(
            f"cloud arrays disagree: density {n}, velocity {np.shape(state['velocity'])} "
            f"(want {(3, *n)}), temperature {np.shape(state['temperature'])}"
        )
    meta = {"cell_size_pc": float(cell_size_pc), "units": CLOUD_UNITS} | (metadata or {})
    with dio.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                **{k: np.asarray(state[k], np.float32) for k in CLOUD_KEYS},
                metadata=np.array(dio.dumps_json(meta)),
            )
    return path


def load_cloud(path) -> tuple[dict, dict]:
    """(state dict of numpy arrays, metadata dict) of a file written by `save_cloud`."""
    import json

    with np.load(Path(path)) as f:
        missing = [k for k in (*CLOUD_KEYS, "metadata") if k not in f.files]
        if missing:
            raise ValueError(f"{path} is not a saved cloud: it lacks {missing}")
        state = {k: np.asarray(f[k]) for k in CLOUD_KEYS}
        metadata = json.loads(str(f["metadata"]))
    return state, metadata


def structure_function_slope(velocity, cell_size_pc: float, lags=(1, 2, 4, 8)) -> float:
    """log-log slope of the second-order structure function <|v(x + l) - v(x)|^2> over `lags`
    (cells, along all three axes, periodic): ~2 gamma below the driving scale. For tests and
    diagnostics."""
    velocity = np.asarray(velocity, np.float64)
    values = []
    for lag in lags:
        s2 = np.mean([np.mean((np.roll(velocity, lag, axis=a) - velocity) ** 2) for a in (1, 2, 3)])
        values.append(s2)
    lengths = np.asarray(lags, np.float64) * cell_size_pc
    return float(np.polyfit(np.log(lengths), np.log(values), 1)[0])


__all__ = [
    "CLOUD_KEYS",
    "KinematicsParams",
    "gas_temperature",
    "larson_dispersion_kms",
    "load_cloud",
    "sample_kinematics",
    "save_cloud",
    "simulate_cloud_state",
    "structure_function_slope",
    "subgrid_dispersion_kms",
    "velocity_field",
]
