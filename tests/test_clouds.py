"""Tests of the molecular-cloud simulator (dustjax.sims.clouds)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import PC_CM
from dustjax.sims import clouds

TURBULENCE_ONLY = clouds.CloudParams(
    envelope_depth_dex=0.0, density_floor_cm3=0.0, density_ceiling_cm3=1e30
)


def _grid(**kw):
    base = dict(
        n_cells=32,
        cell_size_pc=0.1,
        num_filaments=0,
        points_per_filament=64,
        num_cores=0,
        core_window_cells=7,
    )
    return clouds.CloudGrid(**(base | kw))


def test_gaussian_field_is_standardised_with_the_requested_spectral_slope():
    grid = _grid(n_cells=64, cell_size_pc=1.0)
    beta = 3.0
    field = np.asarray(clouds.gaussian_random_field(jax.random.key(0), grid, beta, 1e6))
    assert abs(field.mean()) < 1e-5 and abs(field.std() - 1.0) < 1e-4
    power = np.abs(np.fft.fftn(field)) ** 2
    k = np.sqrt(sum(f**2 for f in np.meshgrid(*[np.fft.fftfreq(64)] * 3, indexing="ij")))
    shells = np.arange(4, 24)  # shell-averaged P(k) between k = 4 and 24 (in units 1/64)
    kk = [k[(k * 64 >= s) & (k * 64 < s + 1)].mean() for s in shells]
    pk = [power[(k * 64 >= s) & (k * 64 < s + 1)].mean() for s in shells]
    slope = np.polyfit(np.log(kk), np.log(pk), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.25)


def test_turbulent_component_is_lognormal_with_mean_n0_and_width_sigma():
    grid = _grid(n_cells=64, cell_size_pc=0.1)
    params = TURBULENCE_ONLY._replace(mean_density_cm3=200.0, sigma_ln=1.0, driving_scale_pc=0.5)
    density = np.asarray(clouds.simulate_cloud(jax.random.key(1), grid, params))
    assert np.std(np.log(density)) == pytest.approx(1.0, rel=1e-3)  # field standardised exactly
    # <n> = n0 exp(-s^2/2) <exp(s g)>; with g exactly standardised the sample mean is close
    assert density.mean() == pytest.approx(200.0, rel=0.05)


def test_sigma_ln_from_mach_matches_the_turbulence_relation():
    assert float(clouds.sigma_ln_from_mach(10.0, 0.4)) == pytest.approx(math.sqrt(math.log(17.0)))


def test_filament_field_conserves_line_mass_and_peaks_near_the_contrast():
    grid = _grid(n_cells=48, cell_size_pc=1.0, num_filaments=1, points_per_filament=200)
    params = clouds.CloudParams(
        filament_fwhm_pc=3.0,
        filament_contrast_min=5.0,
        filament_contrast_max=5.0,
        filament_length_min_pc=20.0,
        filament_length_max_pc=20.0,
        filament_bend=0.0,
    )
    field, spines = clouds.filament_profile(jax.random.key(2), grid, params)
    field = np.asarray(field)
    sigma2 = (3.0 / 2.3548200450309493) ** 2 + 1.0 / 6.0
    # Fourier smoothing keeps the k = 0 mode: sum F dV = 2 pi sigma_eff^2 C L
    assert field.sum() == pytest.approx(2 * np.pi * sigma2 * 5.0 * 20.0, rel=1e-3)
    assert field.max() == pytest.approx(5.0, rel=0.25)
    length = np.linalg.norm(np.asarray(spines[0, -1] - spines[0, 0]))
    assert length == pytest.approx(20.0, rel=1e-4)  # a straight spine of the drawn length


def test_single_core_peaks_at_its_central_density_and_is_truncated():
    grid = _grid(n_cells=32, cell_size_pc=0.01, num_cores=1, core_window_cells=11)
    params = clouds.CloudParams(
        core_radius_min_pc=0.03,
        core_radius_max_pc=0.03,
        core_peak_min_cm3=1e5,
        core_peak_max_cm3=1e5,
        core_on_filament_fraction=0.0,
    )
    cores = np.asarray(clouds.core_field(jax.random.key(3), grid, params, jnp.zeros((0, 2, 3))))
    assert 0.8e5 < cores.max() <= 1e5
    assert np.count_nonzero(cores) <= 11**3
    assert cores.min() >= 0.0


def test_default_cloud_is_deterministic_and_in_a_realistic_range():
    grid = _grid(
        n_cells=64, cell_size_pc=0.1, num_filaments=4, points_per_filament=200, num_cores=8
    )
    params = clouds.CloudParams()
    a = np.asarray(clouds.simulate_cloud(jax.random.key(4), grid, params))
    b = np.asarray(clouds.simulate_cloud(jax.random.key(4), grid, params))
    c = np.asarray(clouds.simulate_cloud(jax.random.key(5), grid, params))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and a.shape == (64, 64, 64)
    assert a.min() >= params.density_floor_cm3 and a.max() <= params.density_ceiling_cm3
    assert a.max() > 1e3  # filaments and cores reach dense gas
    column = a.sum(axis=2) * 0.1 * PC_CM
    assert 1e20 < np.median(column) < 1e23


def test_randomised_params_work_under_vmap():
    grid = _grid(
        n_cells=16,
        cell_size_pc=0.2,
        num_filaments=2,
        points_per_filament=100,
        num_cores=2,
        core_window_cells=5,
    )
    keys = jax.random.split(jax.random.key(6), 3)
    params = jax.vmap(clouds.sample_cloud_params)(keys)
    cubes = jax.vmap(lambda k, p: clouds.simulate_cloud(k, grid, p))(keys, params)
    assert cubes.shape == (3, 16, 16, 16) and bool(jnp.all(jnp.isfinite(cubes)))
    assert float(jnp.min(params.sigma_ln)) > 0


def test_bad_grids_and_undersampled_spines_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        _grid(core_window_cells=6)
    with pytest.raises(ValueError, match="n_cells"):
        _grid(n_cells=4)
    grid = _grid(num_filaments=1, points_per_filament=10)
    with pytest.raises(ValueError, match="points_per_filament"):
        clouds.simulate_cloud(jax.random.key(0), grid, clouds.CloudParams())
