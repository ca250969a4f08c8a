"""Tests of dustjax.polaris (projections, scores, metrics, reference, correction, tiling) and
the POLARIS pipeline end to end on the unet_test config."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import polaris


# ---- projections and targets ----------------------------------------------------------------
def test_projection_of_a_uniform_cube_gives_n_everywhere_and_N_equal_n_L():
    cube = np.full((4, 5, 6), 300.0, np.float32)
    maps = polaris.project(cube, axis=2, cell_size_pc=0.05)
    assert maps["column_density"].shape == (4, 5)
    np.testing.assert_allclose(maps["column_density"], 300.0 * 6 * 0.05 * polaris.PC_CM, rtol=1e-6)
    for key in ("density_mass_weighted", "density_volume_weighted", "density_max"):
        np.testing.assert_allclose(maps[key], 300.0, rtol=1e-6)


def test_two_phase_line_of_sight_matches_eqs_2_and_3():
    n1, n2 = 10.0, 1000.0
    cube = np.zeros((2, 1, 4), np.float32)
    cube[..., :3] = n1
    cube[..., 3] = n2
    maps = polaris.project(cube, axis=2, cell_size_pc=1.0)
    mass = (3 * n1**2 + n2**2) / (3 * n1 + n2)
    np.testing.assert_allclose(maps["density_mass_weighted"], mass, rtol=1e-6)
    np.testing.assert_allclose(maps["density_volume_weighted"], (3 * n1 + n2) / 4, rtol=1e-6)
    np.testing.assert_allclose(maps["density_max"], n2)
    # <n>_V = N / L (eq. 2 and the text below it)
    np.testing.assert_allclose(
        maps["density_volume_weighted"], maps["column_density"] / (4 * polaris.PC_CM), rtol=1e-6
    )
    with pytest.raises(ValueError, match="axis"):
        polaris.project(cube, axis=3, cell_size_pc=1.0)


# ---- scores and acceptance (appendix B) -------------------------------------------------------
def test_smoothness_score_vanishes_for_flat_and_log_linear_images():
    assert polaris.smoothness_score(np.full((8, 8), 1e21)) == 0.0
    ramp = 1e20 * np.exp(np.add.outer(np.arange(8.0), 2 * np.arange(8.0)))  # log(1+x) ~ linear
    assert polaris.smoothness_score(ramp) < 1e-6
    bumpy = np.exp(np.random.default_rng(0).normal(size=(8, 8)) * 3) * 1e21
    assert polaris.smoothness_score(bumpy) > 1.0


def test_difference_score_is_zero_for_proportional_images():
    image = np.random.default_rng(1).uniform(1, 2, (6, 6))
    assert polaris.difference_score(image, 7 * image + 3) == pytest.approx(0.0, abs=1e-20)
    assert polaris.difference_score(image, -image) > 0


def test_acceptance_is_the_sigmoid_of_eq_14():
    assert polaris.acceptance_probability(2.0, 3.0, 2.0) == pytest.approx(0.5)
    assert polaris.acceptance_probability(3.0, 1.0, 2.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert polaris.acceptance_probability(100.0, 5.0, 0.0) == pytest.approx(1.0)


def test_selected_crops_never_overlap_and_diffuse_faces_are_rejected():
    rng = np.random.default_rng(2)
    face = np.exp(rng.normal(size=(64, 64))) * 1e22
    selection = polaris.CropSelection(
        crop_size=16, attempts_per_face=300, steepness=0.0, max_diffuse_fraction=1.0
    )  # f(s) = 1/2 for every score
    corners = polaris.select_crops(rng, face, face, selection)
    assert len(corners) >= 4
    for i, (r1, c1) in enumerate(corners):
        for r2, c2 in corners[i + 1 :]:
            assert abs(r1 - r2) >= 16 or abs(c1 - c2) >= 16
    diffuse = polaris.CropSelection(
        crop_size=16, attempts_per_face=50, max_diffuse_fraction=0.5, diffuse_column_cm2=1e30
    )
    assert polaris.select_crops(rng, face, face, diffuse) == []


# ---- metrics (eqs. 4-6) ---------------------------------------------------------------------
def test_mse_accuracy_and_residual_bins_on_hand_made_images():
    true = np.zeros((2, 2, 2))
    pred = np.array([[[0.0, 0.1], [0.3, 0.0]], [[1.0, 1.0], [1.0, 0.05]]])
    assert polaris.mse(pred, true) == pytest.approx(np.mean(pred**2))
    np.testing.assert_allclose(polaris.accuracy_per_image(pred, true, 0.2), [0.75, 0.25])
    curve = polaris.accuracy_curve(pred, true, [0.2, 2.0])
    np.testing.assert_allclose(curve["mean"], [0.5, 1.0])
    np.testing.assert_allclose(curve["std"], [0.25, 0.0])
    true_b = np.array([[[1.0, 1.0], [3.0, 3.0]]])
    pred_b = true_b + np.array([[[0.1, 0.3], [-1.0, -1.0]]])
    bins = polaris.residuals_per_bin(pred_b, true_b, [0.0, 2.0, 4.0])
    np.testing.assert_allclose(bins["mean"], [0.2, -1.0])
    np.testing.assert_array_equal(bins["count"], [2, 2])
    mask = np.ones_like(pred, bool)
    mask[1] = False
    assert polaris.mse(pred, true, mask) == pytest.approx(np.mean(pred[0] ** 2))


# ---- the pointwise reference and the residual correction --------------------------------------
def test_reference_recovers_a_deterministic_mapping_and_round_trips():
    x = np.random.default_rng(3).uniform(20, 23, 20000)
    y = 0.8 * x - 15 + 0.1 * np.sin(3 * x)
    for method in ("binned_mean", "binned_median", "isotonic"):
        ref = polaris.PointwiseReference.fit(x, y, method, num_bins=200)
        assert polaris.mse(ref(x), y) < 1e-4
        again = polaris.PointwiseReference.from_dict(ref.to_dict())
        np.testing.assert_array_equal(again(x), ref(x))
    with pytest.raises(ValueError, match="unknown method"):
        polaris.PointwiseReference.fit(x, y, "spline")


def test_isotonic_fit_is_the_pool_adjacent_violators_solution():
    np.testing.assert_allclose(polaris._isotonic([1.0, 3.0, 2.0], [1.0, 1.0, 1.0]), [1, 2.5, 2.5])
    np.testing.assert_allclose(
        polaris._isotonic([4.0, 1.0, 1.0, 5.0], [1.0, 1.0, 2.0, 1.0]), [1.75, 1.75, 1.75, 5.0]
    )


def test_reference_is_beaten_only_with_context():
    """Noise the reference cannot see (a neighbour-dependent target) leaves it an MSE floor."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (50, 8, 8))
    y = x + 0.3 * np.roll(x, 1, axis=2)  # depends on the neighbour: invisible pointwise
    ref, scores = polaris.best_pointwise_reference(x[:40], y[:40], x[40:], y[40:], 64)
    assert min(scores.values()) == pytest.approx(polaris.mse(ref(x[40:]), y[40:]))
    assert polaris.mse(ref(x[40:]), y[40:]) == pytest.approx(0.09 / 12, rel=0.25)


def test_residual_correction_removes_a_smooth_bias():
    rng = np.random.default_rng(5)
    true = rng.uniform(1, 5, 50000)
    pred = true - 0.1 * (true - 1) ** 2 / 4 + rng.normal(0, 0.05, true.size)  # underestimates
    corr = polaris.ResidualCorrection.fit(pred, true, values_per_bin=500, window=3)
    assert polaris.mse(corr(pred), true) < 0.2 * polaris.mse(pred, true)
    again = polaris.ResidualCorrection.from_dict(corr.to_dict())
    np.testing.assert_array_equal(again(pred), corr(pred))


# ---- tiled prediction and resampling (appendix D) --------------------------------------------
def test_tiles_cover_the_map_and_overlap_as_asked():
    assert polaris.tile_starts(10, 4, 4) == [0, 4, 6]
    assert polaris.tile_starts(4, 4, 2) == [0]
    assert polaris.tiles_per_axis(4) == (2, 2) and polaris.tiles_per_axis(2) == (2, 1)
    image = np.random.default_rng(6).normal(size=(37, 50))
    out, count = polaris.predict_tiled(lambda t: t * 2.0, image, 16, 4, batch_size=5)
    np.testing.assert_allclose(out, 2 * image, rtol=1e-6)
    assert count.min() >= 1 and count[8:-8, 8:-8].min() >= 4


def test_invalid_pixels_are_masked_and_small_maps_padded():
    image = np.random.default_rng(7).normal(size=(5, 7))
    image[2, 3] = np.nan
    calls = []

    def model(tiles):
        calls.append(tiles.shape)
        assert np.all(np.isfinite(tiles))  # NaN never reaches the model
        return tiles + 1.0

    out, _ = polaris.predict_tiled(model, image, 8, 1)
    assert calls == [(1, 8, 8)]
    assert np.isnan(out[2, 3]) and np.isfinite(np.delete(out.ravel(), 2 * 7 + 3)).all()
    np.testing.assert_allclose(out[0], image[0] + 1.0, rtol=1e-5, atol=1e-6)


def test_resample_keeps_constants_and_masks_blank_regions():
    image = np.full((40, 60), 3.0)
    image[:20, :30] = np.nan
    out, valid = polaris.resample(image, (20, 30))
    np.testing.assert_allclose(out[valid], 3.0, rtol=1e-5)
    assert not valid[:8, :13].any() and valid[12:, 17:].all()


# ---- engine glue -----------------------------------------------------------------------------
def test_dihedral_augment_moves_input_and_target_together():
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))
    batch = {polaris.INPUT_KEY: x, polaris.TARGET_KEY: 2 * x + 1}
    out = jax.jit(polaris.dihedral_augment)(batch, jax.random.key(1))
    np.testing.assert_allclose(out[polaris.TARGET_KEY], 2 * out[polaris.INPUT_KEY] + 1, rtol=1e-6)
    for i in range(6):
        variants = [jnp.rot90(x[i], k) for k in range(4)]
        variants += [v[:, ::-1] for v in variants]
        assert any(bool(jnp.all(v == out[polaris.INPUT_KEY][i])) for v in variants)


def test_model_batch_is_the_shifted_log10():
    crops = {"column_density": np.full((2, 4, 4), 10**21.5), "density_mass_weighted":
             np.full((2, 4, 4), 10**3.5)}  # fmt: skip
    batch = polaris.to_model_batch(crops, "mass_weighted")
    np.testing.assert_allclose(batch[polaris.INPUT_KEY], 0.0, atol=1e-6)
    np.testing.assert_allclose(batch[polaris.TARGET_KEY], 1.0, atol=1e-6)
    assert batch[polaris.INPUT_KEY].shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match="unknown target"):
        polaris.to_model_batch(crops, "mean")


def test_simulated_crop_dataset_has_physical_features_and_consistent_targets():
    from dustjax.sims import clouds

    grid = clouds.CloudGrid(
        n_cells=32,
        cell_size_pc=0.2,
        num_filaments=2,
        points_per_filament=128,
        num_cores=4,
        core_window_cells=5,
    )
    selection = polaris.CropSelection(crop_size=16, attempts_per_face=30, max_diffuse_fraction=1)
    features, info = polaris.simulate_crop_dataset(0, 10, grid, selection)
    assert set(features) == set(polaris.FEATURE_NAMES)
    assert all(v.shape == (10, 16, 16) and v.dtype == np.float32 for v in features.values())
    f = features
    # <n>_V <= <n>_M <= max n along every line of sight, <n>_V = N / L
    assert np.all(f["density_volume_weighted"] <= f["density_mass_weighted"] * (1 + 1e-5))
    assert np.all(f["density_mass_weighted"] <= f["density_max"] * (1 + 1e-5))
    np.testing.assert_allclose(
        f["density_volume_weighted"], f["column_density"] / (32 * 0.2 * polaris.PC_CM), rtol=1e-5
    )
    again, _ = polaris.simulate_crop_dataset(0, 10, grid, selection)
    np.testing.assert_array_equal(again["column_density"], f["column_density"])
    assert info["num_cubes"] >= 1


# ---- end to end: simulate, train, resume, evaluate, predict on a FITS map --------------------
def _write_map(path, *, bunit="H2 cm-2", wcs=True, shape=(30, 44)):
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(8)
    data = 10 ** (21.3 + 0.3 * rng.standard_normal(shape))
    data[4, 5] = np.nan
    data[10, 10] = 0.0
    header = fits.Header()
    if wcs:
        w = WCS(naxis=2)
        w.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
        w.wcs.cdelt = [-0.02, 0.02]
        w.wcs.crpix = [22, 15]
        w.wcs.crval = [170.0, -16.0]
        header = w.to_header()
    if bunit:
        header["BUNIT"] = bunit
    fits.PrimaryHDU(data, header=header).writeto(path)
    return data


def test_unet_test_config_end_to_end(tmp_path):
    from astropy.io import fits

    from dustjax import io as dio
    from dustjax import train
    from experiments import predict_map as pm
    from experiments.configs import unet_test

    config = unet_test.get_config()
    workdir = tmp_path / "run"
    summary = train.train_and_evaluate(config, workdir)
    assert summary["epochs_run"] == 2 and math.isfinite(summary["best_val_loss"])
    with config.unlocked():
        config.num_epochs = 3
    resumed = train.train_and_evaluate(config, workdir)  # resumes at epoch 2
    assert resumed["epochs_run"] == 3
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 3

    metrics = polaris.evaluate_workdir(workdir, tmp_path / "validation")
    ratio = metrics["val_mse_model"] / metrics["val_mse_reference"]
    assert metrics["mse_ratio_model_over_reference"] == pytest.approx(ratio)
    assert metrics["val_mse_model"] == pytest.approx(resumed["best_val_loss"], rel=1e-4)
    for name in ["polaris_metrics.json", "residual_correction.json", *metrics["figures"]]:
        assert (tmp_path / "validation" / name).stat().st_size > 0
    assert dio.read_json(tmp_path / "validation" / "polaris_metrics.json")["target"] == (
        "mass_weighted"
    )

    # A map at 0.1 pc per pixel (0.02 deg at 286 pc) for a model at 0.2 pc per pixel.
    fits_path = tmp_path / "map.fits"
    data = _write_map(fits_path)
    distance = 0.1 / math.radians(0.02)
    out = tmp_path / "map_density.fits"
    result = pm.predict_map(
        fits_path, workdir, distance, out, predictions_per_pixel=4, batch_size=4,
        residual_correction="none",
    )  # fmt: skip
    assert result["model_shape"] == [15, 22]
    with fits.open(out) as hdul:
        density, header = hdul[0].data, hdul[0].header
    assert density.shape == data.shape and header["BUNIT"] == "cm-3"
    assert header["CTYPE1"] == "GLON-TAN" and header["CDELT2"] == pytest.approx(0.02)
    assert np.isnan(density[4, 5]) and np.isnan(density[10, 10])
    assert np.isfinite(density).sum() == data.size - 2 and np.nanmin(density) > 0
    assert (tmp_path / "map_density.png").stat().st_size > 0

    # The appendix-C baseline written for predict_map (--residual_correction) loads and applies
    # (predict_map with it runs in the slow notebook test).
    baseline = polaris.ResidualCorrection.from_dict(
        dio.read_json(tmp_path / "validation" / "residual_correction.json")
    )
    assert np.all(np.isfinite(baseline(np.linspace(0.0, 4.0, 9))))

    # Unusable maps get one-line errors before any model is loaded.
    _write_map(tmp_path / "nounit.fits", bunit=None)
    with pytest.raises(pm.MapError, match="BUNIT"):
        pm.predict_map(tmp_path / "nounit.fits", workdir, distance)
    _write_map(tmp_path / "nowcs.fits", wcs=False)
    with pytest.raises(pm.MapError, match="celestial WCS"):
        pm.predict_map(tmp_path / "nowcs.fits", workdir, distance)
    _write_map(tmp_path / "jy.fits", bunit="MJy/sr")
    with pytest.raises(pm.MapError, match="not a column density"):
        pm.predict_map(tmp_path / "jy.fits", workdir, distance)
    with pytest.raises(pm.MapError, match="distance"):
        pm.predict_map(fits_path, workdir, -1.0)
