"""Tests of the cloud velocities and temperatures (dustjax.sims.kinematics)."""

import jax
import numpy as np
import pytest

from dustjax.sims import clouds, kinematics

GRID = clouds.CloudGrid(n_cells=48, cell_size_pc=0.1, num_filaments=2, points_per_filament=200,
                        num_cores=3, core_window_cells=5)  # fmt: skip


@pytest.mark.parametrize("gamma", [0.38, 0.5])
def test_velocity_follows_larson_scaling(gamma):
    params = kinematics.KinematicsParams(linewidth_index=gamma, driving_scale_pc=1e3)
    velocity = np.asarray(kinematics.velocity_field(jax.random.key(1), GRID, params))
    assert velocity.shape == (3, 48, 48, 48)
    # per-component rms over the box = sigma_1pc (L_box / pc)^gamma
    expected = 0.72 * GRID.box_size_pc**gamma
    np.testing.assert_allclose(np.sqrt(np.mean(velocity**2)), expected, rtol=1e-4)
    np.testing.assert_allclose(velocity.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    # second-order structure function ~ l^(2 gamma) on scales well inside the box
    slope = kinematics.structure_function_slope(velocity, GRID.cell_size_pc, lags=(2, 3, 4, 6))
    assert abs(slope - 2 * gamma) < 0.15, slope


def test_solenoidal_and_compressive_projections():
    def divergence_fraction(zeta):
        params = kinematics.KinematicsParams(solenoidal_weight=zeta)
        v = np.asarray(kinematics.velocity_field(jax.random.key(2), GRID, params), np.float64)
        k = 2 * np.pi * np.fft.fftfreq(48)
        kx, ky, kz = np.meshgrid(k, k, k, indexing="ij")
        vk = [np.fft.fftn(c) for c in v]
        div = kx * vk[0] + ky * vk[1] + kz * vk[2]
        k2 = kx**2 + ky**2 + kz**2
        power = sum(np.abs(c) ** 2 for c in vk)
        return float(np.sum(np.abs(div) ** 2 / np.where(k2 > 0, k2, 1)) / np.sum(power))

    assert divergence_fraction(1.0) < 1e-6  # purely solenoidal: div v = 0
    assert divergence_fraction(0.0) > 1 - 1e-6  # purely compressive: curl v = 0
    assert 0.2 < divergence_fraction(0.5) < 0.45  # natural mixture: 1/3 compressive


def test_temperature_uniform_and_density_dependent():
    density = np.array([10.0, 1e2, 1e3, 1e4, 1e6], np.float32)
    uniform = kinematics.gas_temperature(density, kinematics.KinematicsParams(temperature_k=12.0))
    np.testing.assert_allclose(np.asarray(uniform), 12.0)
    cold_cores = kinematics.KinematicsParams(
        temperature_k=10.0, temperature_index=-0.2, temperature_min_k=5.0, temperature_max_k=30.0
    )
    t = np.asarray(kinematics.gas_temperature(density, cold_cores))
    np.testing.assert_allclose(t[:4], 10.0 * (density[:4] / 1e3) ** -0.2, rtol=1e-5)
    assert t[-1] == 5.0 and np.all(np.diff(t) <= 0)


def test_cloud_state_saved_and_loaded_with_its_density(tmp_path):
    state = kinematics.simulate_cloud_state(jax.random.key(3), GRID)
    # the density is the column-only pipeline's cube for the same key
    np.testing.assert_array_equal(
        np.asarray(state["density"]), np.asarray(clouds.simulate_cloud(jax.random.key(3), GRID))
    )
    path = kinematics.save_cloud(tmp_path / "c.npz", state, GRID.cell_size_pc, {"seed": 3})
    loaded, meta = kinematics.load_cloud(path)
    for key in kinematics.CLOUD_KEYS:
        np.testing.assert_array_equal(loaded[key], np.asarray(state[key]))
    assert meta["cell_size_pc"] == 0.1 and meta["seed"] == 3 and meta["units"]["velocity"] == "km/s"
    bad = dict(state, velocity=np.asarray(state["velocity"])[:2])
    with pytest.raises(ValueError, match="velocity"):
        kinematics.save_cloud(tmp_path / "bad.npz", bad, 0.1)
    assert not (tmp_path / "bad.npz").exists()


def test_sampled_kinematics_stay_in_their_ranges():
    for seed in range(5):
        p = kinematics.sample_kinematics(jax.random.key(seed))
        assert 0.38 <= float(p.linewidth_index) <= 0.5
        assert 8.0 <= float(p.temperature_k) <= 15.0
