"""The observation in the loop (dustjax.vnet.observe), the faint-dust normalisation and the
variance head (dustjax.vnet.normalisation), checked against independent routes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import catalog as cat
from dustjax import maps
from dustjax.geometry import Region
from dustjax.vnet import gridding
from dustjax.vnet import normalisation as nz
from dustjax.vnet import observe as ob


def _catalogue(region, n, seed):
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(region.lower_pc), np.asarray(region.upper_pc)
    xyz = lo + rng.uniform(size=(n, 3)) * (hi - lo)
    e = rng.uniform(0.0, 1.0, n)
    sig = rng.uniform(0.01, 0.1, n)
    return xyz, e, sig


def _grid_jax(region, xyz, e, sig, k, select, cap, valid=None):
    valid = np.ones(len(e), bool) if valid is None else valid
    fn = jax.jit(lambda *a: ob.grid_eq5(*a, region, k, cap=cap, select=select))
    cube, not_exact = fn(
        jnp.asarray(xyz, jnp.float32), jnp.asarray(e, jnp.float32),
        jnp.asarray(sig, jnp.float32), jnp.asarray(valid),
    )  # fmt: skip
    return np.asarray(cube), np.asarray(not_exact)


@pytest.mark.parametrize("k, select, n", [(3, "top_k", 3000), (3, "bisect", 3000),
                                          (12, "bisect", 40000), (12, "top_k", 40000)])  # fmt: skip
def test_grid_eq5_equals_numpy_gridding_where_exact(k, select, n):
    region = Region.named("SR").with_shape((16, 16, 16))
    xyz, e, sig = _catalogue(region, n, seed=k + n)
    ref = gridding.grid_extinction(
        region, cat.StarCatalog.from_arrays(extinction=e, sigma_extinction=sig, xyz_pc=xyz), k
    )
    cap = ob.ObservationParams(num_stars_range=(n, n)).cap_for(region)
    cube, not_exact = _grid_jax(region, xyz, e, sig, k, select, cap)
    assert not_exact.mean() < 0.05
    np.testing.assert_allclose(cube[~not_exact], ref[~not_exact], atol=2e-6)


def test_grid_eq5_ignores_invalid_stars_and_flags_overflow():
    region = Region.named("SR").with_shape((8, 8, 8))
    xyz, e, sig = _catalogue(region, 2000, seed=1)
    valid = np.arange(2000) < 1500
    ref = gridding.grid_extinction(
        region,
        cat.StarCatalog.from_arrays(
            extinction=e[:1500], sigma_extinction=sig[:1500], xyz_pc=xyz[:1500]
        ),
        3,
    )
    cube, not_exact = _grid_jax(region, xyz, e, sig, 3, "top_k", 16, valid)
    np.testing.assert_allclose(cube[~not_exact], ref[~not_exact], atol=2e-6)
    # a cap below the stars per cell (~3) flags (nearly) every cell
    _, flagged = _grid_jax(region, xyz, e, sig, 3, "top_k", 1, valid)
    assert flagged.mean() > 0.9


def test_integrate_stars_is_the_project_kernel():
    region = Region.named("SR").with_shape((16, 16, 16))
    rng = np.random.default_rng(3)
    density = rng.lognormal(-6, 1.5, region.shape).astype(np.float32)
    xyz, _, _ = _catalogue(region, 777, seed=4)
    got = ob.integrate_stars(jnp.asarray(density), region, jnp.asarray(xyz, jnp.float32), 100)
    want = maps.integrate_cartesian(density, region.lower_pc, region.cell_size_pc, xyz)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_observe_batch_uniform_density_gives_distance_times_density():
    """A uniform cube: every star's E = rho |x|; noise-free gridding of a linear field."""
    region = Region.named("SR").with_shape((8, 8, 8))
    params = ob.ObservationParams(
        num_stars_range=(4000, 4000), sigma_a_range=(0.0, 0.0), sigma_b_range=(0.0, 0.0)
    )
    rho = 0.01
    density = jnp.full((2, *region.shape), rho, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2)
    cubes, diag = jax.jit(lambda k, d: ob.observe_batch(k, d, region, params))(keys, density)
    r = np.linalg.norm(region.cell_centres_pc(), axis=-1)
    # the k = 3 neighbours lie within ~1 cell: E differs from rho r by at most rho x a cell
    assert np.abs(np.asarray(cubes) - rho * r).max() < rho * 1.5 * region.cell_size_pc[0]
    assert np.all(np.asarray(diag["num_stars"]) == 4000)
    # group-wise evaluation draws the same catalogues
    grouped, _ = jax.jit(lambda k, d: ob.observe_batch(k, d, region, params, group=1))(
        keys, density
    )
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(cubes), atol=1e-6)


def test_draw_stars_counts_noise_and_distance_errors():
    region = Region.named("LR").with_shape((8, 8, 8))
    params = ob.ObservationParams(num_stars_range=(1000, 5000), distance_error_range=(0.05, 0.05))
    stars = jax.jit(lambda k: ob.draw_stars(k, region, params))(jax.random.key(2))
    n = int(np.asarray(stars["valid"]).sum())
    assert 900 <= n <= 5000
    ratio = np.linalg.norm(stars["xyz_obs"], axis=-1) / np.linalg.norm(stars["xyz_true"], axis=-1)
    assert abs(np.std(np.asarray(ratio)) - 0.05) < 0.005


@pytest.mark.parametrize("name", ["eq12", "asinh"])
def test_normalisation_round_trip_and_lognormal_mean(name):
    n = nz.get_normalisation(name)
    rho = np.geomspace(1e-6, 0.5, 50)
    np.testing.assert_allclose(
        np.asarray(n.density_inverse(n.density(rho, xp=np), xp=np)), rho, rtol=1e-9
    )
    mu, sigma = 2.0, 0.7
    z = np.random.default_rng(0).normal(size=400_000)
    mc = np.mean(np.asarray(n.density_inverse(mu + sigma * z, xp=np)))
    assert abs(float(n.density_mean(mu, sigma, xp=np)) / mc - 1) < 0.01


def test_asinh_separates_faint_dust_that_eq2_crushes():
    eq12, asinh = nz.get_normalisation("eq12"), nz.get_normalisation("asinh")
    d_eq12 = float(eq12.density(1e-3, xp=np) - eq12.density(1e-4, xp=np))
    d_asinh = float(asinh.density(1e-3, xp=np) - asinh.density(1e-4, xp=np))
    assert d_eq12 < 0.01 and d_asinh > 2.0


def test_gaussian_nll_minimum_and_sigma_scale_fit():
    t = jnp.zeros((1, 4, 1))
    for log_sigma in (-1.0, 0.0, 1.0):
        pred = jnp.concatenate([jnp.ones((1, 4, 1)), jnp.full((1, 4, 1), log_sigma)], -1)
        loss = float(nz.gaussian_nll_per_example(pred, t, beta=0.0)[0])
        assert loss == pytest.approx(0.5 * np.exp(-2 * log_sigma) + log_sigma, rel=1e-6)
    rng = np.random.default_rng(0)
    truth = rng.normal(size=200_000) * 2.0  # errors of sd 2, claimed sigma 1
    c = nz.fit_sigma_scale(truth, np.zeros_like(truth), np.ones_like(truth))
    assert c == pytest.approx(2.0, rel=0.02)
    mean, sd = nz.combine_redraws(np.array([[0.0], [2.0]]), np.array([[1.0], [1.0]]))
    assert float(mean[0]) == 1.0 and float(sd[0]) ** 2 == pytest.approx(2.0 + 1.0)


def test_vnet_variance_head_and_paper_head_unchanged():
    from dustjax.models.vnet import VNet

    x = jnp.ones((1, 8, 8, 8, 1))
    paper = VNet(features=(4, 8))
    v = paper.init(jax.random.key(0), x)
    assert v["params"]["head_out"]["bias"].tolist() == [pytest.approx(0.1)]
    assert paper.apply(v, x).shape == (1, 8, 8, 8, 1)
    two = VNet(features=(4, 8), num_outputs=2, output_head="linear", output_bias_init=-0.5)
    v2 = two.init(jax.random.key(0), x)
    out = two.apply(v2, x)
    assert out.shape == (1, 8, 8, 8, 2)
    np.testing.assert_allclose(np.asarray(out[..., 0]), -0.5, atol=1e-6)  # linear: no ReLU
    np.testing.assert_allclose(np.asarray(out[..., 1]), 0.0, atol=1e-6)


@pytest.mark.slow
def test_sky_test_config_trains_and_beats_zero(tmp_path):
    """experiments/configs/vnet_sky_test.py end to end on the CPU: observation loop, asinh,
    variance head; the mean beats predicting rho_hat = 0 on validation cubes."""
    from dustjax import training
    from dustjax.vnet.data import region_of
    from experiments.configs.vnet_sky_test import get_config
    from tools.vnet_sky_device import calibrate, precise_bn

    config = get_config()
    summary = training.train_and_evaluate(config, tmp_path)
    assert np.isfinite(summary["best_val_loss"])
    # the best checkpoint's batch-norm statistics over fresh observed batches, stored beside it
    bn = precise_bn(tmp_path, 2, num_val_batches=1)
    assert bn["num_batches"] == 2 and bn["epoch"] == training.checkpoint_step(tmp_path)
    assert np.isfinite(bn["val_hat_mse_running"]) and np.isfinite(bn["val_hat_mse_population"])
    assert bn["val_hat_mse_running"] != bn["val_hat_mse_population"]
    better = bn["val_hat_mse_population"] < bn["val_hat_mse_running"]
    assert bn["used"] == ("population" if better else "running")
    assert (tmp_path / training.inference.POPULATION_STATS_FILE).exists() == better
    res = calibrate(tmp_path, config, num_batches=2)
    assert res["sim_hat_mse"] < 0.6 * res["sim_hat_mse_zero"]
    assert 0.6 < res["coverage_calibrated"] < 0.76
    assert (tmp_path / nz.CALIBRATION_FILE).exists()
    # against the apply route's band: Monte Carlo redraws + the scaled model variance
    res = calibrate(tmp_path, config, num_batches=1, num_redraws=3)
    assert 0.6 < res["coverage_mc_plus_scaled_model"] < 0.76
    assert res["coverage_mc_only"] <= res["coverage_mc_plus_model"]
    pred = nz.load_model_predictor(tmp_path)
    e = jnp.zeros((1, *region_of(config).shape))
    assert pred.density(e).shape == e.shape and pred.has_variance


def test_echoed_batches_repeat_and_mirror_in_y():
    from experiments.configs.vnet_sky_test import get_config

    config = get_config()
    config.observation.echo = 2
    batches = list(
        ob.simulate_observed_source(config, "train", batch_size=2, seed=0, epoch=0, train=True)
    )[:4]
    for key in ("extinction", "density"):
        np.testing.assert_array_equal(
            np.asarray(batches[1][key]), np.flip(np.asarray(batches[0][key]), axis=2)
        )
        assert not np.array_equal(np.asarray(batches[2][key]), np.asarray(batches[0][key]))


def test_model_predictor_point_maps_and_band():
    class Stub:  # a "network" that outputs mu = 2, log sigma = log 0.5 everywhere
        def apply(self, variables, x, train=False):
            return jnp.concatenate([jnp.full_like(x, 2.0), jnp.full_like(x, np.log(0.5))], -1)

    norm = nz.get_normalisation("asinh")
    pred = nz.ModelPredictor(Stub(), {}, norm, num_outputs=2, sigma_scale=2.0)
    e = jnp.zeros((1, 2, 2, 2))
    np.testing.assert_allclose(np.asarray(pred.density(e)), 1e-4 * np.sinh(2.0), rtol=1e-6)
    mean = nz.ModelPredictor(Stub(), {}, norm, num_outputs=2, sigma_scale=2.0, point="mean")
    np.testing.assert_allclose(
        np.asarray(mean.density(e)), 1e-4 * np.sinh(2.0) * np.exp(0.5), rtol=1e-6
    )
    mu, sigma = pred.predict_hat(e)
    band = pred.band(jnp.stack([mu, mu + 1.0]), jnp.stack([sigma, sigma]))
    total = np.sqrt(0.5 + 1.0)  # var over 2 redraws (ddof 1) + calibrated sigma^2
    np.testing.assert_allclose(np.asarray(band["p84"]), 1e-4 * np.sinh(2.5 + total), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(band["p16"]), 1e-4 * np.sinh(2.5 - total), rtol=1e-5)


def test_population_bn_stats_are_kept_only_when_they_lower_the_validation_error(tmp_path):
    """keep_better_bn_stats: better on validation -> the file stays and is used; worse or equal
    -> it is moved aside (kept for inspection, no longer read by load_trained)."""
    from dustjax.training.inference import POPULATION_STATS_FILE
    from tools.vnet_sky_device import REJECTED_POPULATION_STATS, keep_better_bn_stats

    stats = tmp_path / POPULATION_STATS_FILE
    stats.write_bytes(b"stats")
    assert keep_better_bn_stats(tmp_path, running=0.10, population=0.08) == "population"
    assert stats.read_bytes() == b"stats"
    assert keep_better_bn_stats(tmp_path, running=0.079, population=0.115) == "running"
    assert not stats.exists() and (tmp_path / REJECTED_POPULATION_STATS).read_bytes() == b"stats"
    assert keep_better_bn_stats(tmp_path, running=0.1, population=0.1) == "running"  # no file
