"""The real-sky test of the latent GP (issue 18): truths, stars, bands, baseline, calibration."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import galactic_to_cartesian_np
from dustjax.gp import realsky, svgp
from dustjax.gp.grid import LBDGrid

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def _uniform_cube(rho=2e-3):
    # 100 pc cube centred on (300, 0, 0), cells of 10 pc
    return realsky.CubeField(
        np.full((10, 10, 10), rho, np.float32), (250.0, -50.0, -50.0), (10.0,) * 3
    )


def test_cube_extinction_is_density_times_path_length_inside_the_cube():
    cube = _uniform_cube()
    # along +X (l = 0, b = 0): the cube spans x 250..350
    d = np.array([100.0, 260.0, 300.0, 350.0, 500.0])
    ext = cube.extinction(np.zeros(5), np.zeros(5), d)
    np.testing.assert_allclose(ext, 2e-3 * np.clip(d - 250.0, 0, 100), atol=1e-5)
    # a slanted ray: path length inside = (d - d_enter) where it enters at x = 250
    lon = np.degrees(np.arctan2(20.0, 300.0))
    d_enter = 250.0 / math.cos(math.radians(lon))
    ext = cube.extinction([lon], [0.0], [300.0])
    np.testing.assert_allclose(ext, 2e-3 * (300.0 - d_enter), rtol=1e-4)
    assert cube.density(np.array([[300.0, 0.0, 0.0], [0.0, 0.0, 0.0]])).tolist() == [
        pytest.approx(2e-3),
        0.0,
    ]


def test_npy_with_header_reads_like_fits(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1e-2, (4, 5, 6)).astype(np.float32)  # (nz, ny, nx)
    header = dict(CTYPE1="X", CRVAL1=-95.0, CDELT1=10.0, CRPIX1=1.0, CTYPE2="Y", CRVAL2=5.0,
                  CDELT2=10.0, CRPIX2=1.0, CTYPE3="Z", CRVAL3=-15.0, CDELT3=10.0, CRPIX3=1.0,
                  BUNIT="mag/pc")  # fmt: skip
    np.save(tmp_path / "c.npy", data)
    (tmp_path / "c.header.json").write_text(json.dumps(header))
    cube = realsky.load_cube(tmp_path / "c.npy")
    assert cube.density_cube.shape == (6, 5, 4)
    np.testing.assert_allclose(cube.lower_pc, (-100.0, 0.0, -20.0))
    # the first cell centre holds data[0, 0, 0]
    assert cube.density(np.array([-95.0, 5.0, -15.0])) == pytest.approx(data[0, 0, 0])
    assert cube.density(np.array([-95.0, 5.0, 15.0])) == pytest.approx(data[3, 0, 0])
    from astropy.io import fits

    hdu = fits.PrimaryHDU(data)
    hdu.header.update(header)
    hdu.writeto(tmp_path / "c.fits")
    fcube = realsky.load_cube(tmp_path / "c.fits")
    np.testing.assert_array_equal(fcube.density_cube, cube.density_cube)
    assert fcube.lower_pc == pytest.approx(cube.lower_pc)


def test_cell_volumes_and_cell_average_of_a_uniform_field_give_the_wedge_volume():
    grid = LBDGrid((10, 40), (-10, 20), (100, 300), (3, 4, 5), ghost_cells=2)
    vol = realsky.cell_volumes_pc3(grid)
    wedge = math.radians(30) * (math.sin(math.radians(20)) - math.sin(math.radians(-10)))
    assert vol.sum() == pytest.approx(wedge * 300.0**3 / 3.0)

    class Uniform:
        def density(self, xyz):
            return np.full(np.shape(xyz)[:-1], 3e-3)

    avg = realsky.cell_average(Uniform(), grid)
    np.testing.assert_allclose(avg, 3e-3)
    s = realsky.density_scores(avg, avg, avg * 1.0, grid)
    assert s["dust_ratio_median"] == pytest.approx(1.0)


def test_stars_carry_the_exact_extinction_and_the_issue_noise():
    cube = _uniform_cube()
    rng = np.random.default_rng(1)
    s = realsky.draw_stars(cube, rng, 4000, (-3, 3), (-3, 3), (260, 340))
    np.testing.assert_allclose(s["true"], cube.extinction(s["l"], s["b"], s["d"]))
    np.testing.assert_allclose(s["sigma"], np.maximum(0.1 * s["true"], 0.02))
    z = (s["observed"] - s["true"]) / s["sigma"]
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.05
    # uniform in d^3: the median distance is the cube root of the mid volume
    assert np.median(s["d"]) == pytest.approx(np.cbrt((260**3 + 340**3) / 2), rel=0.01)
    # a magnitude limit removes the far, extincted stars first
    cat = realsky.draw_stars(
        cube, rng, 2000, (-3, 3), (-3, 3), (260, 340), distribution="catalog", mag_limit=11.0
    )
    assert np.median(cat["d"]) < np.median(s["d"])


def test_knn_baseline_and_its_density_on_a_uniform_field():
    rng = np.random.default_rng(2)
    xyz = rng.uniform(-1, 1, (500, 3))
    obs = np.arange(500.0)
    q = xyz[:3]
    pct = realsky.knn_predict(xyz, obs, q, k=1)
    np.testing.assert_allclose(pct[1], obs[:3])
    # density: extinction growing as 2e-3 * (d - 100) everywhere -> density 2e-3
    grid = LBDGrid((10, 20), (-5, 5), (100, 300), (2, 2, 5))
    lon, lat = rng.uniform(10, 20, 20000), rng.uniform(-5, 5, 20000)
    d = rng.uniform(100, 360, 20000)
    rho = realsky.knn_density(galactic_to_cartesian_np(lon, lat, d), 2e-3 * (d - 100), grid)
    np.testing.assert_allclose(np.median(rho[..., 1:-1]), 2e-3, rtol=0.1)


def test_posthoc_calibration_recovers_a_known_model_error():
    rng = np.random.default_rng(3)
    n = 20000
    p50 = rng.uniform(0.1, 3.0, n)
    w = 0.02 * p50
    pct = np.stack([p50 - w, p50, p50 + w])
    sigma = np.full(n, 0.05)
    f_true, s_true = 0.15, 0.03
    extra = np.sqrt(w**2 + (f_true * p50) ** 2 + s_true**2 + sigma**2)
    observed = p50 + extra * rng.standard_normal(n)
    f, s = realsky.calibrate_posthoc(pct, observed, sigma)
    assert f == pytest.approx(f_true, rel=0.05)
    assert s == pytest.approx(s_true, abs=0.01)
    # widened bands then hold a truth drawn from the model error 68 % of the time
    truth = p50 + np.sqrt((f * p50) ** 2 + s**2 + w**2) * rng.standard_normal(n)
    cov = realsky.star_scores(realsky.widen_bands(pct, f, s), truth)["coverage_16_84"]
    assert cov == pytest.approx(0.683, abs=0.02)
    np.testing.assert_allclose(realsky.widen_bands(pct, 0.0, 0.0), pct)


def test_column_samples_have_the_marginal_moments_and_the_conditional_correlation():
    with jax.enable_x64(True):
        grid = LBDGrid((60, 70), (-5, 5), (100, 200), (2, 2, 6), ghost_cells=1)
        rng = np.random.default_rng(4)
        cells = grid.cell_centres_xyz()
        params = svgp.init_params(
            cells[::5] + 3.0, scale_lengths_pc=25.0, amplitude_dex=0.5, mean_dex=-2.5,
            q_std=0.3, dtype=jnp.float64,
        )  # fmt: skip
        params["q_mean"] = jnp.asarray(rng.normal(size=params["q_mean"].shape))
        n = 6000
        eps_u = jax.random.normal(jax.random.key(0), (n, params["q_mean"].shape[0]), jnp.float64)
        phi = np.asarray(
            realsky._column_phi_samples(params, grid, eps_u, jax.random.key(1), 1e-6)
        ).reshape(n, -1)
        mean, var = svgp.predictive_moments(params, jnp.asarray(cells), jitter=1e-6)
        np.testing.assert_allclose(phi.mean(0), mean, atol=5 * np.sqrt(float(var.max()) / n))
        np.testing.assert_allclose(phi.var(0), var, rtol=0.1)
        # the covariance of two cells of one column: B^T S S^T B + (K - B^T B) (exact)
        chol = svgp.inducing_cholesky(params, 1e-6)
        b, _ = svgp.project(params, chol, jnp.asarray(cells))
        sb = svgp.q_chol(params).T @ b
        k = svgp.kernels.rbf(jnp.asarray(cells), jnp.asarray(cells), 25.0, 0.5)
        cov = np.asarray(sb.T @ sb + k - b.T @ b)
        i, j = 1, 2  # neighbours along the first column
        emp = np.cov(phi[:, i], phi[:, j])[0, 1]
        assert emp == pytest.approx(cov[i, j], abs=5 * math.sqrt(var[i] * var[j] / n))


def test_the_test_stars_are_redrawn_identically_from_the_settings():
    """`draw_test_stars` is what run_test fits and what tools.gp_ratio_interval redraws: the
    same stars from the same settings, split into fitted, validation and held-out slices."""
    truth = _uniform_cube()
    settings = realsky.TestSettings(
        field=(150.0, 180.0, -25.0, -5.0, 100.0, 600.0), num_stars=500, num_validation=50,
        num_holdout=70, shape=(4, 4, 6), ghost_cells=2,
    )  # fmt: skip
    a, (fit, val, hold) = realsky.draw_test_stars(truth, settings)
    b, _ = realsky.draw_test_stars(truth, settings)
    for k in ("l", "b", "d", "true", "observed"):
        np.testing.assert_array_equal(a[k], b[k])
    assert len(a["d"][fit]) == 500 and len(a["d"][val]) == 50 and len(a["d"][hold]) == 70
    edges = settings.grid().d_edges_pc()
    assert a["d"].min() >= settings.grid().d_range_pc[0] and a["d"].max() <= edges[-1]


def test_ratio_interval_is_exact_for_proportional_errors_and_brackets_a_known_ratio():
    rng = np.random.default_rng(3)
    true = rng.uniform(0.05, 2.0, 4000)
    knn_err = rng.standard_normal(4000) * 0.05 * true
    # GP errors exactly half the kNN's on every star: every bootstrap round gives 0.5
    half = realsky.ratio_interval(true + 0.5 * knn_err, true + knn_err, true, num_boot=300)
    assert half["ratio"] == pytest.approx(0.5) and half["p2_5"] == pytest.approx(0.5)
    assert half["p97_5"] == pytest.approx(0.5) and half["frac_at_most_0_9"] == 1.0
    # independent errors of scales 0.045 and 0.05: the ratio's interval holds 0.9, and its width
    # is the size an independent route gives (the delta method for two medians of |normal|)
    gp_err = rng.standard_normal(4000) * 0.045 * true
    res = realsky.ratio_interval(true + gp_err, true + knn_err, true, num_boot=1000, seed=1)
    assert res["p2_5"] < 0.9 < res["p97_5"]
    # sd of the sample median m = 0.6745 s of |N(0, s)|: 1 / (2 f(m) sqrt(n)), f(m) = 2 phi(0.6745)
    # / s, so relative to m: 1 / (4 phi(0.6745) 0.6745 sqrt(n))
    sd_rel = 1 / (4 * 0.3178 * 0.6745 * math.sqrt(4000))
    expected = math.sqrt(2) * sd_rel * res["ratio"]  # two independent medians
    assert (res["p84"] - res["p16"]) / 2 == pytest.approx(expected, rel=0.25)
    with pytest.raises(ValueError, match="held-out stars"):
        realsky.ratio_interval(true[:3], true[:4], true[:4])


@pytest.mark.slow
def test_realsky_test_runs_end_to_end_on_a_small_lognormal_field():
    truth = realsky.lognormal_field(0, cell_pc=10.0)
    settings = realsky.TestSettings(
        field=(50.0, 90.0, -10.0, 10.0, 180.0, 500.0), num_stars=3000, num_validation=300,
        num_holdout=300, shape=(6, 6, 10), num_inducing=40, star_samples=16,
        kernel_coords="log_spherical", ghost_cells=2,
        fit=dict(max_iterations=40, min_iterations=10, num_samples=4, jitter=1e-4,
                 model_error=True),
        kernel="matern32", mean_function="shells", mean_shells=4, knn_residual_k=(10, 30),
        star_grid_factors=((2, 2, 1),),
    )  # fmt: skip
    result = realsky.run_test(truth, settings)
    row = realsky.summary_row(result)
    assert 0 <= row["gp_coverage"] <= 1 and row["knn_rel_error"] > 0
    assert set(result["gp"]["stars"]) == {
        "diagonal", "diagonal+posthoc", "column", "column+learned", "column+learned+posthoc",
        "pipeline", "pipeline+calibrated", "pipeline+observed", "pipeline+deconvolved",
    }  # fmt: skip
    assert row["band"] == "pipeline+deconvolved"  # what experiments/fit_gp reports
    assert result["fit"]["kernel"] == "matern32" and result["fit"]["mean_function"] == "shells"
    assert set(result["gp"]["stars_knn_residual"]) == {"k10", "k30"}
    assert set(result["gp"]["stars_fine_grid"]["2x2x1"]) == {
        "diagonal",
        "knn_residual_k10",
        "knn_residual_k30",
    }
    arrays = result["star_arrays"]
    assert arrays["hold_pct"].shape == (3, 300) and arrays["val_true"].shape == (300,)
    # the saved kNN bands give the reported kNN error and, with the GP's P50, the ratio
    assert arrays["hold_knn_pct"].shape == (3, 300)
    again = realsky.ratio_interval(arrays["hold_pct"][1], arrays["hold_knn_pct"][1],
                                   arrays["hold_true"], num_boot=50)  # fmt: skip
    assert again["ratio"] == pytest.approx(row["ratio_to_knn"], rel=1e-4)
    assert row["ratio_p16"] <= row["ratio_to_knn"] * 1.05 and row["ratio_p84"] >= row["ratio_p16"]


@pytest.mark.skipif(not (REAL / "bayestar19_LR_anticentre.fits").is_file(), reason="no real data")
def test_bayestar_cube_gives_taurus_extinction():
    cube = realsky.load_cube(REAL / "bayestar19_LR_anticentre.fits")
    # Taurus (l ~ 172, b ~ -15) at 400 pc: around a magnitude; a clear sightline far less
    taurus = cube.extinction([172.0], [-15.0], [400.0])[0]
    assert 0.3 < taurus < 5.0
    assert cube.extinction([172.0], [-15.0], [100.0])[0] < taurus


def test_log_spherical_coordinates_scale_physical_steps_by_d_ref_over_d():
    from dustjax.gp.coords import KernelCoords

    grid = LBDGrid((-10, 20), (-10, 10), (100, 400), (3, 3, 3))
    kc = KernelCoords.for_grid(grid, "log_spherical")
    assert kc.l_centre_deg == pytest.approx(5.0) and kc.d_ref_pc == pytest.approx(200.0)
    rng = np.random.default_rng(5)
    for _ in range(5):
        lon, lat, d = rng.uniform(-10, 15), rng.uniform(-9, 9), rng.uniform(100, 400)
        x0 = galactic_to_cartesian_np(lon, lat, d)
        step = rng.normal(size=3) * 1e-3  # a tiny physical step (pc)
        from dustjax.geometry import cartesian_to_galactic_np

        u0 = kc(lon, lat, d)
        u1 = kc(*cartesian_to_galactic_np(x0 + step))
        # conformal up to cos b: the length of the step grows by d_ref / d
        ratio = np.linalg.norm(u1 - u0) / np.linalg.norm(step)
        assert ratio == pytest.approx(200.0 / d, rel=0.02)
    # the wrap through l = 0 is continuous
    assert np.linalg.norm(kc(359.999, 0.0, 200.0) - kc(0.001, 0.0, 200.0)) < 0.01
    # "xyz" is the paper's Cartesian frame
    np.testing.assert_allclose(
        KernelCoords.for_grid(grid).grid_cells(grid), grid.cell_centres_xyz()
    )


def test_representation_error_vanishes_for_a_uniform_field():
    # a uniform cube far larger than the field: every grid represents it exactly
    cube = realsky.CubeField(
        np.full((8, 8, 8), 2e-3, np.float32), (-100.0, -400.0, -400.0), (100.0,) * 3
    )
    field = (-20.0, 20.0, -10.0, 10.0, 50.0, 300.0)
    res = realsky.representation_errors(
        cube, field, [(4, 3, 5)], num_stars=2000, num_holdout=500, ghost_cells=1
    )
    assert res["4x3x5"]["median_rel_error"] < 1e-4
    assert res["knn"]["median_rel_error"] > 0
