"""config.observation.subcell_factor (dustjax.vnet.observe): the stars integrate a density
simulated on a finer grid, the target is its block mean on the region's cells."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import sharding, sims
from dustjax.geometry import Region
from dustjax.vnet import data as vdata
from dustjax.vnet import observe as ob
from dustjax.vnet import refine
from dustjax.vnet.normalisation import normalisation_of


def _config(factor=None, enabled=True, simulator="sky"):
    """The toy sky recipe (8^3 cells of 24 pc, <= 1,000 stars); the sky simulator without its
    radial smearing and cones (quicker to compile), or the recipe's log-normal cubes."""
    from experiments.configs.vnet_sky_test import get_config

    c = get_config()
    if simulator == "sky":
        c.data.simulator = "sky"
        c.data.simulator_params = dict(radial_smearing_probability=0.0, cone_probability=0.0)
    c.observation.enabled = enabled
    if factor is not None:
        c.observation.subcell_factor = factor
    return c


def _make(config, batch_size=2):
    name, sim_params = vdata._simulator_params(config)
    obs = ob.ObservationParams.from_config(config.observation)
    return ob._observed_batch_fn(
        vdata.region_of(config), name, sim_params, obs, normalisation_of(config),
        ob.observation_enabled(config), batch_size, 0, sharding.make_mesh(None),
    )  # fmt: skip


def test_factor_one_is_the_map_grid_path():
    """F = 1 (explicit or absent) gives the batch of the map-grid simulation observed directly."""
    config = _config(simulator="lognormal")
    region = vdata.region_of(config)
    name, sim_params = vdata._simulator_params(config)
    obs = ob.ObservationParams.from_config(config.observation)
    norm = normalisation_of(config)
    seed, step, b = 5, 3, 2
    absent = _make(config, b)(seed, step)
    explicit = _make(_config(1, simulator="lognormal"), b)(seed, step)
    key = jax.random.fold_in(jax.random.key(seed), step)
    density, _ = sims.simulate_batch_fn(region, name, sim_params)(jax.random.split(key, b))
    obs_keys = jax.random.split(jax.random.fold_in(key, 1), b)
    ext, _ = jax.jit(lambda k, d: ob.observe_batch(k, d, region, obs, 0))(obs_keys, density)
    for batch in (absent, explicit):
        np.testing.assert_array_equal(np.asarray(batch["density"][..., 0]),
                                      np.asarray(norm.density(density)))  # fmt: skip
        np.testing.assert_array_equal(np.asarray(batch["extinction"][..., 0]),
                                      np.asarray(norm.extinction(ext)))  # fmt: skip


@pytest.mark.parametrize("method", ["pieces", "sort"])
def test_piecewise_constant_fine_cube_gives_the_coarse_extinctions(method):
    """A fine cube constant inside each coarse cell (the upsampled coarse cube) integrated
    through the fine region equals the coarse cube through the coarse region: the observation
    differs only by genuine sub-cell structure."""
    region = Region((-40.0, -30.0, -20.0), (40.0, 50.0, 30.0), (5, 4, 3), name="SR@test")
    fine = ob.fine_region(region, 3)
    assert fine.shape == (15, 12, 9) and fine.lower_pc == region.lower_pc
    rng = np.random.default_rng(0)
    coarse = rng.lognormal(-6.0, 1.0, region.shape).astype(np.float32)
    lo, hi = np.asarray(region.lower_pc), np.asarray(region.upper_pc)
    xyz = jnp.asarray(lo + rng.uniform(size=(500, 3)) * (hi - lo), jnp.float32)
    e_coarse = ob.integrate_stars(jnp.asarray(coarse), region, xyz, 128, method)
    e_fine = ob.integrate_stars(jnp.asarray(refine.upsample(coarse, 3)), fine, xyz, 128, method)
    np.testing.assert_allclose(np.asarray(e_fine), np.asarray(e_coarse), rtol=2e-5, atol=1e-7)
    assert float(jnp.max(e_coarse)) > 0.01
    # the whole observation: the same catalogue and cube through observe_one's density_region
    params = ob.ObservationParams(num_stars_range=(400.0, 400.0), integrator=method)
    key = jax.random.key(1)
    cube_c, _ = jax.jit(lambda d: ob.observe_one(key, d, region, params))(jnp.asarray(coarse))
    cube_f, _ = jax.jit(lambda d: ob.observe_one(key, d, region, params, density_region=fine))(
        jnp.asarray(refine.upsample(coarse, 3))
    )
    assert cube_f.shape == region.shape
    np.testing.assert_allclose(np.asarray(cube_f), np.asarray(cube_c), rtol=1e-4, atol=1e-6)


def test_factor_two_targets_the_block_mean_of_the_fine_cube():
    """F = 2: the target is the block mean of the sky cube simulated on the 2x finer grid (same
    keys, recomputed independently), the input the catalogue of that fine cube, shapes the
    region's; the smoothing's FWHM range (in cells) doubles so it stays the same in pc."""
    config = _config(2)
    region = vdata.region_of(config)
    norm = normalisation_of(config)
    obs = ob.ObservationParams.from_config(config.observation)
    assert obs.subcell_factor == 2
    seed, step, b = 7, 0, 2
    batch = _make(config, b)(seed, step)
    assert batch["density"].shape == batch["extinction"].shape == (b, *region.shape, 1)

    fine = Region(region.lower_pc, region.upper_pc, tuple(2 * n for n in region.shape), "SR")
    _, sim_params = vdata._simulator_params(config)
    p = dataclasses.replace(sim_params, smoothing_fwhm_cells_range=(0.0, 2.0))
    key = jax.random.fold_in(jax.random.key(seed), step)
    dense = jax.jit(jax.vmap(lambda k: sims.sky_density(k, fine, p)))(jax.random.split(key, b))
    target = np.stack([refine.block_mean(np.asarray(d), 2) for d in dense])
    inside = np.asarray(dense) - np.stack([refine.upsample(t, 2) for t in target])
    assert np.std(inside) > 0.01 * np.std(np.asarray(dense))  # structure inside the cells
    np.testing.assert_allclose(np.asarray(batch["density"][..., 0]),
                               np.asarray(norm.density(target)), rtol=1e-5, atol=1e-5)  # fmt: skip
    obs_keys = jax.random.split(jax.random.fold_in(key, 1), b)
    ext, _ = jax.jit(lambda k, d: ob.observe_batch(k, d, region, obs, 0, density_region=fine))(
        obs_keys, dense
    )
    np.testing.assert_allclose(np.asarray(batch["extinction"][..., 0]),
                               np.asarray(norm.extinction(ext)), rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("bad", [0, -1, 2.5, "x", True])
def test_bad_factor_raises_one_clear_error(bad):
    with pytest.raises(ValueError, match="subcell_factor must be an integer >= 1"):
        ob.ObservationParams.from_config(dict(subcell_factor=bad))
    with pytest.raises(ValueError, match="subcell_factor must be an integer >= 1"):
        ob.subcell_factor(_config(bad))


def test_factor_needs_the_observation_and_the_sky_simulator():
    kw = dict(batch_size=2, seed=0, epoch=0, train=True)
    with pytest.raises(ValueError, match="needs observation.enabled"):
        ob.simulate_observed_source(_config(2, enabled=False), "train", **kw)
    config = _config(2, simulator="lognormal")
    with pytest.raises(ValueError, match="needs the 'sky' simulator"):
        ob.simulate_observed_source(config, "train", **kw)
    assert ob.subcell_factor(_config(2)) == 2 and ob.subcell_factor(_config()) == 1


def test_subcell_lognormal_keeps_the_block_means_and_has_the_drawn_scatter():
    """The log-normal factor averages to exactly 1 over every map cell (a density constant on
    the map's cells keeps its block means), and its log has the drawn sd (a fixed range: s)
    up to the per-block normalisation's small shrinkage, (F^3 - 1) / F^3 of the variance."""
    shape, factor, s = (16, 16, 16), 2, 0.9
    w = ob.subcell_lognormal(jax.random.key(3), shape, factor, (s, s))
    np.testing.assert_allclose(np.asarray(ob.block_mean(w, factor)), 1.0, rtol=1e-5)
    logw = np.log(np.asarray(w)).reshape(8, 2, 8, 2, 8, 2)
    within = logw - logw.mean(axis=(1, 3, 5), keepdims=True)
    assert np.sqrt(np.mean(within**2) * 8 / 7) == pytest.approx(s, rel=0.05)
    zero = ob.subcell_lognormal(jax.random.key(3), shape, factor, (0.0, 0.0))
    np.testing.assert_array_equal(np.asarray(zero), 1.0)


def test_subcell_log_sd_range_adds_structure_inside_the_cells_and_keeps_the_target_exact():
    """With a log-sd range the fine cube the stars see has more scatter inside the map's cells
    than the simulator's own, on the same simulated field, and the target is still its block
    mean; a bad range, or a range without a finer grid, is one clear error."""
    region = Region((-96.0, -96.0, -96.0), (96.0, 96.0, 96.0), (8, 8, 8), name="SR")
    plain = ob.simulate_subcell_fn(region, "sky", None, 2)
    rough = ob.simulate_subcell_fn(region, "sky", None, 2, log_sd_range=(1.0, 1.0))
    keys = jax.random.split(jax.random.key(5), 2)
    fine0, _ = plain(keys)
    fine1, density1 = rough(keys)
    np.testing.assert_allclose(np.asarray(density1), np.asarray(ob.block_mean(fine1, 2)),
                               rtol=1e-5, atol=1e-12)  # fmt: skip

    def scatter(fine):
        a = np.log(np.maximum(np.asarray(fine, np.float64), 1e-12)).reshape(2, 8, 2, 8, 2, 8, 2)
        return float(np.std(a - a.mean(axis=(2, 4, 6), keepdims=True)))

    assert scatter(fine1) > 2 * scatter(fine0) and scatter(fine1) > 0.7
    with pytest.raises(ValueError, match="subcell_log_sd_range"):
        ob.ObservationParams(subcell_factor=2, subcell_log_sd_range=(1.0, 0.5))
    with pytest.raises(ValueError, match="needs subcell_factor > 1"):
        ob.ObservationParams(subcell_log_sd_range=(0.0, 1.0))
