"""Simulators: determinism, the paper's ranges and recipes, and pairing with the LOS operator."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import Region
from dustjax.los import los_operator
from dustjax.sims import (
    LEVY_LR,
    LEVY_SR,
    LOGNORMAL_LR,
    LevyParams,
    default_simulator,
    get_simulator,
    simulate_batch_fn,
    simulate_pair,
)
from dustjax.sims.grf import gaussian_random_field
from dustjax.sims.levy import bin_particles, scale_to_ceiling

SMALL_LEVY = dataclasses.replace(LEVY_SR, num_starts=3, flights_per_start=2, jumps_per_flight=500)


def test_paper_parameters_are_the_defaults():
    assert LEVY_SR.num_particles == 2_000_000
    assert (LEVY_SR.num_starts, LEVY_SR.flights_per_start, LEVY_SR.jumps_per_flight) == (
        10,
        10,
        20_000,
    )
    assert LEVY_SR.ceiling_range_mag_per_pc == (0.01, 0.05)
    assert (LEVY_LR.num_starts, LEVY_LR.flights_per_start, LEVY_LR.jumps_per_flight) == (
        20,
        10,
        2000,
    )
    assert LEVY_LR.start_abs_z_max_pc == 200.0 and LEVY_LR.scale_height_pc == 120.0
    assert LOGNORMAL_LR.scale_height_pc == 120.0
    assert LOGNORMAL_LR.ceiling_range_mag_per_pc == (0.01, 0.5)
    assert default_simulator(Region.named("SR")) == "levy"
    assert default_simulator(Region.named("LR")) == "lognormal"


def test_bin_particles_counts_inside_and_drops_outside():
    region = Region((0, 0, 0), (4, 4, 4), (2, 2, 2))
    points = jnp.array(
        [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [3.9, 0.1, 2.5], [-0.1, 1, 1], [1, 1, 4.5], [2, 2, 2]]
    )
    counts = np.asarray(bin_particles(points, region))
    expected = np.zeros((2, 2, 2))
    expected[0, 0, 0] = 2
    expected[1, 0, 1] = 1
    expected[1, 1, 1] = 1
    np.testing.assert_array_equal(counts, expected)


def test_scale_to_ceiling():
    field = jnp.arange(100.0)
    np.testing.assert_allclose(float(scale_to_ceiling(field, 0.05, 1.0).max()), 0.05, rtol=1e-6)
    np.testing.assert_allclose(
        float(jnp.quantile(scale_to_ceiling(field, 0.2, 0.9), 0.9)), 0.2, rtol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(scale_to_ceiling(jnp.zeros(5), 0.1, 0.9)), 0.0)


def test_levy_is_deterministic_and_vmappable():
    region = Region.named("SR")
    sim = jax.jit(lambda k: get_simulator("levy", SMALL_LEVY)(k, region))
    keys = jax.random.split(jax.random.key(3), 3)
    batch = jax.vmap(sim)(keys)
    np.testing.assert_array_equal(np.asarray(sim(keys[1])), np.asarray(batch[1]))
    np.testing.assert_array_equal(np.asarray(sim(keys[1])), np.asarray(sim(keys[1])))
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))


def test_sr_levy_cubes_are_in_the_papers_range():
    region = Region.named("SR")
    density, extinction = simulate_batch_fn(region)(jax.random.split(jax.random.key(0), 4))
    density, extinction = np.asarray(density), np.asarray(extinction)
    peak = density.reshape(4, -1).max(1)
    assert np.all((peak >= 0.01) & (peak <= 0.05 + 1e-7))  # ceiling drawn in [0.01, 0.05]
    assert (density >= 0).all() and (density == 0).mean() > 0.05  # clumpy, with empty cells
    assert 0.05 < extinction.max() < 3.0  # "E spans 0 to about 1 mag" (sect. 2.2)


def test_levy_lr_variant_starts_near_the_plane_and_has_a_disc():
    region = Region.named("LR")
    density = np.asarray(
        jax.vmap(lambda k: get_simulator("levy_lr")(k, region))(
            jax.random.split(jax.random.key(1), 4)
        )
    )
    z = region.centres_pc(2)
    profile = density.mean(axis=(0, 1, 2))
    assert profile[np.abs(z) < 150].mean() > 20 * profile[np.abs(z) > 600].mean()


def test_lognormal_field_statistics():
    region = Region.named("LR")
    density = np.asarray(get_simulator("lognormal")(jax.random.key(2), region))
    layers = density.mean(axis=(0, 1))
    z = region.centres_pc(2)
    assert np.abs(z[np.argmax(layers)]) <= 30.0  # densest layer moved to Z = 0
    peak = density.max()
    assert 0.01 <= peak <= 0.5 + 1e-6
    ln_field = np.log(density / np.exp(-np.abs(z) / 120.0)[None, None, :])
    assert 0.8 * LOGNORMAL_LR.sigma_ln < ln_field.std() < 1.2 * LOGNORMAL_LR.sigma_ln


def test_gaussian_random_field_has_the_requested_spectrum():
    n, index = 64, -3.0
    field = np.asarray(gaussian_random_field(jax.random.key(0), (n, n, n), (1.0, 1.0, 1.0), index))
    assert abs(field.mean()) < 1e-5 and abs(field.std() - 1) < 1e-4
    power = np.abs(np.fft.rfftn(field)) ** 2
    f = np.fft.fftfreq(n)
    k = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + np.fft.rfftfreq(n)[None, None] ** 2)
    bins = np.geomspace(2.0 / n, 0.4, 10)
    which = np.digitize(k, bins)
    kk = [k[which == i].mean() for i in range(1, len(bins))]
    pp = [power[which == i].mean() for i in range(1, len(bins))]
    slope = np.polyfit(np.log(kk), np.log(pp), 1)[0]
    assert abs(slope - index) < 0.15


def test_pairs_are_integrated_by_the_los_operator():
    region = Region.named("SR")
    density, extinction = simulate_pair(jax.random.key(5), region, "levy", SMALL_LEVY)
    np.testing.assert_allclose(
        np.asarray(extinction), np.asarray(los_operator(region)(density)), rtol=1e-6
    )


def test_bad_parameters():
    with pytest.raises(ValueError, match="alpha"):
        LevyParams(alpha=2.5)
    with pytest.raises(ValueError, match="positive count"):
        LevyParams(num_starts=0)
    with pytest.raises(ValueError, match="unknown simulator"):
        get_simulator("voronoi")
