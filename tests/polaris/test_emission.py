"""Tests of the 13CO LTE ray tracing (dustjax.polaris.emission): analytic slabs, limits, Doppler
shifts, line energy across channel widths, eq. 9 by scan vs its closed form, and line data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import PC_CM
from dustjax.polaris import emission as em

SPECTRAL = em.SpectralAxis.centred(6.0, 48)  # 0.25 km/s channels


def _slab(n_h, temperature, nz=40, shape=(3,)):
    density = jnp.full((*shape, nz), n_h, jnp.float32)
    return density, jnp.full_like(density, temperature), jnp.zeros_like(density)


@pytest.mark.parametrize("n_h", [30.0, 3e3, 3e4])  # thin, tau ~ 1, thick (tau_peak ~ 20)
def test_isothermal_uniform_slab_matches_the_analytic_brightness(n_h):
    temperature, cell_pc, sigma = 12.0, 0.05, 0.3
    density, t, v = _slab(n_h, temperature)
    t_b = em.ppv_cube(density, t, v, cell_pc, SPECTRAL, subgrid_sigma_kms=sigma)
    # analytic: tau(v) of the whole slab = N(13CO)-proportional integral x channel profile
    sigma_tot = math.sqrt(float(em.thermal_dispersion_kms(temperature)) ** 2 + sigma**2)
    kappa = float(em.integrated_opacity_per_cm(n_h, temperature))
    length_cm = 40 * cell_pc * PC_CM
    phi = np.asarray(em.channel_profile(0.0, sigma_tot, SPECTRAL.edges))
    tau = kappa * length_cm * phi
    expected = (
        float(em.radiation_temperature(temperature)) - float(em.radiation_temperature(em.T_CMB))
    ) * -np.expm1(-tau)
    np.testing.assert_allclose(np.asarray(t_b[0]), expected, rtol=2e-4, atol=1e-6)
    if n_h > 1e4:
        assert tau.max() > 10  # the thick case saturates at J(T) - J(T_CMB)
        peak = float(em.radiation_temperature(temperature) - em.radiation_temperature(em.T_CMB))
        assert abs(float(t_b[0].max()) - peak) < 1e-3 * peak


def test_optically_thin_integrated_intensity_is_proportional_to_column_density():
    rng = np.random.default_rng(0)
    density = jnp.asarray(rng.lognormal(0.0, 1.0, (6, 64)) * 0.05, jnp.float32)  # tau < 1e-3
    temperature = 10.0
    t_b = em.ppv_cube(density, temperature, 0.0, 0.1, SPECTRAL, subgrid_sigma_kms=0.4)
    w = np.asarray(em.moment_maps(t_b, SPECTRAL)["integrated_intensity"])
    column = np.asarray(density).sum(-1) * 0.1 * PC_CM
    ratio = w / column
    assert np.ptp(ratio) / ratio.mean() < 1e-3  # W / N the same on every line of sight
    # and equal to (J(T) - J(T_CMB)) int tau dv / N
    per_column = float(em.integrated_opacity_per_cm(1.0, temperature)) * (
        float(em.radiation_temperature(temperature) - em.radiation_temperature(em.T_CMB))
    )
    np.testing.assert_allclose(ratio, per_column, rtol=2e-3)


@pytest.mark.parametrize("velocity", [-3.3, 0.0, 2.1, 4.62])
def test_a_cell_moving_at_v_appears_at_v(velocity):
    density = jnp.zeros((64,), jnp.float32).at[17].set(1e3)
    v_los = jnp.zeros((64,)).at[17].set(velocity)
    t_b = np.asarray(em.ppv_cube(density, 10.0, v_los, 0.1, SPECTRAL, subgrid_sigma_kms=0.2))
    centre = SPECTRAL.centres[np.argmax(t_b)]
    assert abs(centre - velocity) <= SPECTRAL.channel_width_kms / 2 + 1e-6
    m1 = float(em.moment_maps(t_b, SPECTRAL)["centroid_velocity"])
    assert abs(m1 - velocity) < 0.01


def test_cloud_ppv_sees_receding_gas_at_positive_velocity_along_every_axis():
    n = 8
    density = np.full((n, n, n), 1e-3, np.float32)
    density[2, 5, 3] = 2e3
    velocity = np.zeros((3, n, n, n), np.float32)
    velocity[:, 2, 5, 3] = (-1.5, -2.5, 3.0)  # receding along x, y; approaching along z
    state = {"density": density, "velocity": velocity, "temperature": np.full_like(density, 10.0)}
    for axis, pixel, expected in [(0, (5, 3), 1.5), (1, (2, 3), 2.5), (2, (2, 5), -3.0)]:
        t_b = em.cloud_ppv(state, axis, 0.1, SPECTRAL, subgrid_sigma_kms=0.2)
        m1 = em.moment_maps(t_b, SPECTRAL)["centroid_velocity"]
        assert abs(float(m1[pixel]) - expected) < 0.01


@pytest.mark.parametrize("n_h", [10.0, 3e4])
def test_line_energy_is_conserved_across_channel_widths(n_h):
    rng = np.random.default_rng(1)
    density = jnp.asarray(n_h * rng.lognormal(0.0, 0.5, (2, 32)), jnp.float32)
    v_los = jnp.asarray(rng.normal(0.0, 1.0, (2, 32)), jnp.float32)
    integrals = []
    for width in (0.05, 0.2, 0.5, 1.0):
        spectral = em.SpectralAxis.centred(8.0, int(round(16.0 / width)))
        oversample = max(1, int(round(width / 0.025)))  # thick lines: resolve the saturation
        t_b = em.ppv_cube(density, 10.0, v_los, 0.05, spectral, subgrid_sigma_kms=0.15,
                          oversample=oversample)  # fmt: skip
        integrals.append(np.asarray(t_b.sum(-1) * width))
    integrals = np.asarray(integrals)
    rtol = 1e-4 if n_h < 100 else 1e-3
    np.testing.assert_allclose(integrals, integrals[0][None].repeat(4, 0), rtol=rtol)


def test_scan_equals_the_closed_form_of_eq_9():
    rng = np.random.default_rng(2)
    density = jnp.asarray(rng.lognormal(8.0, 2.0, (4, 50)), jnp.float32)
    temperature = jnp.asarray(rng.uniform(6.0, 30.0, (4, 50)), jnp.float32)
    v_los = jnp.asarray(rng.normal(0.0, 2.0, (4, 50)), jnp.float32)
    t_b = em.ppv_cube(density, temperature, v_los, 0.05, SPECTRAL, subgrid_sigma_kms=0.2)
    tau = em.optical_depth(density, temperature, v_los, 0.05, SPECTRAL, subgrid_sigma_kms=0.2)
    assert float(tau.sum(-2).max()) > 5  # a mix of thin and thick channels
    j_bg = em.radiation_temperature(em.T_CMB)
    closed = em.ray_trace_closed_form(tau, em.radiation_temperature(temperature), j_bg) - j_bg
    np.testing.assert_allclose(np.asarray(t_b), np.asarray(closed), atol=2e-5)


def test_vmap_over_clouds_equals_one_cloud_at_a_time():
    rng = np.random.default_rng(3)
    states = {
        "density": rng.lognormal(5.0, 1.5, (3, 6, 6, 6)).astype(np.float32),
        "velocity": rng.normal(0.0, 1.5, (3, 3, 6, 6, 6)).astype(np.float32),
        "temperature": rng.uniform(8.0, 20.0, (3, 6, 6, 6)).astype(np.float32),
    }
    batched = em.batched_cloud_ppv(states, 1, 0.1, SPECTRAL, subgrid_sigma_kms=0.3)
    for c in range(3):
        one = em.cloud_ppv({k: v[c] for k, v in states.items()}, 1, 0.1, SPECTRAL,
                           subgrid_sigma_kms=0.3)  # fmt: skip
        np.testing.assert_allclose(np.asarray(batched[c]), np.asarray(one), atol=1e-5)
    assert batched.shape == (3, 6, 6, SPECTRAL.num_channels)


def test_line_data_and_lte_formulas_against_independent_values():
    line = em.CO13_10
    # A_10 from the CDMS dipole moment (0.11046 D) reproduces the adopted 6.33e-8 s^-1
    assert abs(em.einstein_a_from_dipole(line.frequency_hz, 0.11046) / 6.33e-8 - 1) < 2e-3
    assert abs(line.t_nu - 5.2888) < 1e-3  # h nu / k
    assert abs(float(line.level_energy_k(1)) - 5.2888) < 1e-3  # E_1 = h nu_10
    for t in (5.0, 10.0, 30.0, 100.0):  # linear rotor: Q = 1/x + 1/3 + x/15 + 4x^2/315 + ...
        x = em.H_PLANCK * line.rotational_constant_hz / (em.K_BOLTZMANN * t)
        approx = 1 / x + 1 / 3 + x / 15 + 4 * x**2 / 315
        assert abs(float(em.partition_function(t)) / approx - 1) < 1e-3, t
    # J(T_CMB) at 110.2 GHz
    assert (
        abs(float(em.radiation_temperature(em.T_CMB)) - 5.2888 / math.expm1(5.2888 / 2.7255)) < 1e-5
    )
    # Mangum & Shirley (2015, eq. 30 with their rigid-rotor Q = kT / hB + 1/3): the route
    # through the dipole moment, N = 3h / (8 pi^3 S mu^2) Q / g_u e^{E_u/kT} / (e^{h nu/kT} - 1)
    # int tau dv, S = J_u / (2 J_u + 1) = 1/3, g_u = 3: 2.48e14 (T + 0.88) / (1 - e^{-5.29/T})
    # cm^-2 per km/s; ours (through A_10 and the level sum) agrees within 1 %.
    mu = 0.11046 * em.DEBYE
    coefficient = 3 * em.H_PLANCK / (8 * math.pi**3 * mu**2) * em.KMS  # S g_u = 1
    hb_k = em.H_PLANCK * line.rotational_constant_hz / em.K_BOLTZMANN
    for t in (8.0, 15.0, 40.0):
        ours = float(em.column_density_13co(1.0, t))
        textbook = coefficient * (t / hb_k + 1 / 3) / -math.expm1(-line.t_nu / t)
        assert abs(ours / textbook - 1) < 0.01
    # and our opacity inverts it: int alpha dv x L for n_H gives back chi n_H L
    kappa = float(em.integrated_opacity_per_cm(1e3, 10.0))  # per cm, km/s
    n13 = float(em.column_density_13co(kappa * PC_CM, 10.0))
    assert abs(n13 / (1.4e-6 * 1e3 * PC_CM) - 1) < 1e-4
    # 13CO thermal width at 10 K
    assert abs(float(em.thermal_dispersion_kms(10.0)) - 0.05352) < 2e-4


def test_moment_maps_of_a_gaussian_line():
    spectral = em.SpectralAxis.centred(10.0, 200)
    v = spectral.centres
    t_b = 2.0 * np.exp(-0.5 * ((v - 1.3) / 0.7) ** 2)
    m = em.moment_maps(jnp.asarray(t_b[None]), spectral)
    assert abs(float(m["integrated_intensity"][0]) - 2.0 * 0.7 * math.sqrt(2 * math.pi)) < 1e-3
    assert abs(float(m["centroid_velocity"][0]) - 1.3) < 1e-4
    assert abs(float(m["velocity_dispersion"][0]) - 0.7) < 1e-3
    assert abs(float(m["peak_tb"][0]) - 2.0 * math.exp(-0.5 * (0.05 / 0.7) ** 2)) < 1e-4
    empty = em.moment_maps(jnp.zeros((1, 200)), spectral)
    assert float(empty["centroid_velocity"][0]) == 0.0


def test_bad_spectral_axis_and_oversample_are_refused():
    with pytest.raises(ValueError, match="num_channels"):
        em.SpectralAxis(0.0, 0.5, 0)
    with pytest.raises(ValueError, match="oversample"):
        em.ppv_cube(jnp.ones((4,)), 10.0, 0.0, 0.1, SPECTRAL, oversample=0)
    assert jax.devices()  # (keeps jax imported for the CPU backend)
