"""Real-sky evaluation: cube reading (npy + header), reflection, mock catalogue, scores, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dustjax import maps
from dustjax.geometry import Region
from dustjax.vnet import realsky

REGION = Region.named("SR").with_shape((8, 8, 8))  # 24 pc cells


def _header(lower, step, shape):
    h = {"BUNIT": "mag/pc"}
    for axis, name in enumerate("XYZ", start=1):
        h.update(
            {
                f"CTYPE{axis}": name,
                f"CUNIT{axis}": "pc",
                f"CRPIX{axis}": 1.0,
                f"CRVAL{axis}": lower[axis - 1] + 0.5 * step,
                f"CDELT{axis}": step,
            }
        )
    return h


def _slab_cube(lower=(-192.0, -96.0, -96.0), step=12.0, shape=(16, 16, 16), rho=1e-3):
    """A uniform slab |Z| < 36 pc, on a cube twice as fine as REGION."""
    zc = lower[2] + step * (np.arange(shape[2]) + 0.5)
    density = np.zeros(shape, np.float32)
    density[:, :, np.abs(zc) < 36] = rho
    return density, _header(lower, step, shape)


def test_npy_cube_reads_like_the_region_and_the_fits_writer(tmp_path):
    density, header = _slab_cube()
    np.save(tmp_path / "c.npy", density.T)  # FITS order (nz, ny, nx)
    (tmp_path / "c.header.json").write_text(json.dumps(header))
    cube = realsky.load_cube(tmp_path / "c.npy")
    np.testing.assert_array_equal(cube.density, density)
    box = Region((-192, -96, -96), (0, 96, 96), (16, 16, 16))
    for a in range(3):
        np.testing.assert_allclose(cube.edges[a], box.edges_pc(a))
    # The FITS route of the same cube gives the same map.
    pytest.importorskip("astropy")
    maps.write_cartesian_map(tmp_path / "c.fits", box, density)
    fits_cube = realsky.load_cube(tmp_path / "c.fits")
    np.testing.assert_array_equal(fits_cube.density, density)
    for a in range(3):
        np.testing.assert_allclose(fits_cube.edges[a], cube.edges[a])


def test_blank_cells_become_zero(tmp_path):
    density, header = _slab_cube()
    density[0, 0, 0] = np.nan
    density[1, 0, 0] = -1.0
    np.save(tmp_path / "c.npy", density.T)
    (tmp_path / "c.header.json").write_text(json.dumps(header))
    cube = realsky.load_cube(tmp_path / "c.npy")
    assert np.all(np.isfinite(cube.density)) and cube.density.min() == 0.0
    assert cube.meta["NUMBAD"] == 2


def test_npy_without_header_and_non_cartesian_wcs_are_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(realsky.RealSkyError, match="header"):
        realsky.load_cube(tmp_path / "c.npy")
    h = _header((0, 0, 0), 1.0, (2, 2, 2))
    h["CTYPE1"] = "GLON-CAR"
    with pytest.raises(realsky.RealSkyError, match="CTYPE"):
        realsky.cube_from_array(np.zeros((2, 2, 2)), h)


def test_negative_cdelt_and_kpc_units_are_understood():
    density = np.arange(8, dtype=np.float32).reshape(2, 2, 2)  # (nz, ny, nx)
    h = _header((0, 0, 0), 1.0, (2, 2, 2))
    h.update(CDELT1=-0.01, CRVAL1=0.015, CUNIT1="kpc")  # X centres at 15, 5 pc
    cube = realsky.cube_from_array(density, h)
    np.testing.assert_allclose(cube.edges[0], [0.0, 10.0, 20.0])
    np.testing.assert_array_equal(cube.density[:, 0, 0], density.T[::-1, 0, 0])


def test_a_mirrored_cube_is_reflected_and_keeps_every_extinction():
    density, header = _slab_cube(rho=0.0)
    rng = np.random.default_rng(0)
    density = rng.uniform(0, 1e-3, density.shape).astype(np.float32)
    cube = realsky.cube_from_array(density.T, header)
    # The same sky seen toward +X (the Galactic centre): X -> -X.
    mirrored = realsky.reflect(cube, (0,))
    assert not realsky.covers(mirrored, REGION)
    back, axes = realsky.fit_to_region(mirrored, REGION)
    assert axes == (0,)
    np.testing.assert_array_equal(back.density, cube.density)
    xyz = rng.uniform(REGION.lower_pc, REGION.upper_pc, (50, 3))
    lower = [e[0] for e in mirrored.edges]
    e_m = maps.integrate_cartesian(mirrored.density, lower, (12.0,) * 3, xyz * [-1, 1, 1])
    e_o = maps.integrate_cartesian(cube.density, [e[0] for e in cube.edges], (12.0,) * 3, xyz)
    np.testing.assert_allclose(np.asarray(e_m), np.asarray(e_o), rtol=1e-5)
    with pytest.raises(realsky.RealSkyError, match="does not cover"):
        realsky.fit_to_region(mirrored, REGION, "none")


def test_scores_known_answers():
    rng = np.random.default_rng(1)
    truth = rng.lognormal(-7, 1.5, REGION.shape)
    s = realsky.scores(truth, truth, REGION)
    assert s["skill"] == pytest.approx(1.0)
    assert s["dust_recovered"] == pytest.approx(1.0)
    assert s["log_r"] == pytest.approx(1.0)
    assert s["min_c_r"] == pytest.approx(1.0)
    zero = realsky.scores(np.zeros_like(truth), truth, REGION)
    assert zero["skill"] == pytest.approx(-(truth.mean() ** 2) / truth.var())
    assert zero["dust_recovered"] == 0.0
    mean = realsky.scores(np.full_like(truth, truth.mean()), truth, REGION)
    assert mean["skill"] == pytest.approx(0.0, abs=1e-12)
    half = realsky.scores(0.5 * truth, truth, REGION)
    assert half["dust_recovered"] == pytest.approx(0.5)
    assert half["min_c_r"] == pytest.approx(1.0)  # c_r ignores the amplitude
    # Band coverage: a band wider than every error covers all; a zero band none.
    wide = realsky.scores(0.5 * truth, truth, REGION, band=(truth - 1.0, truth + 1.0))
    assert wide["band_coverage"] == 1.0
    assert wide["band_coverage_num_cells"] == int(np.sum(truth > 1e-4))
    none = realsky.scores(0.5 * truth, truth, REGION, band=(0.5 * truth, 0.5 * truth))
    assert none["band_coverage"] == 0.0
    # Gaussian errors of known sigma: 68 % inside +- sigma (4,096 cells, binomial sd 0.007).
    big = Region.named("SR").with_shape((16, 16, 16))
    truth = rng.lognormal(-5, 1.0, big.shape)
    sigma = 0.3 * truth
    noisy = truth + sigma * rng.standard_normal(truth.shape)
    g = realsky.scores(noisy, truth, big, band=(noisy - sigma, noisy + sigma))
    assert g["band_coverage"] == pytest.approx(0.683, abs=0.025)


def test_k_range_is_the_papers():
    assert realsky.k_range(Region.named("SR")) == pytest.approx(realsky.SR_K_RANGE)
    assert realsky.k_range(Region.named("LR")) is None


def test_lr_min_c_r_skips_the_single_corner_mode():
    lr = Region.named("LR")
    rng = np.random.default_rng(6)
    truth = rng.lognormal(-8, 1, lr.shape)
    # Flip the sign of the corner (Nyquist in x, y, z) mode only: c_r there is -1.
    f = np.fft.fftn(truth)
    n = lr.shape[0] // 2
    f[n, n, n] *= -1
    pred = np.fft.ifftn(f).real
    s = realsky.scores(pred, truth, lr)
    assert s["min_c_r"] > 0.99
    from dustjax.vnet import metrics

    assert (
        np.nanmin(metrics.cross_correlation_coefficient(truth, pred, lr.cell_size_pc)["c_r"])
        < -0.99
    )


def test_mock_catalogue_extinction_and_noise():
    rho = 2e-3
    density, header = _slab_cube(rho=rho)
    density[:] = rho  # uniform: E = rho x distance (the Sun lies on the box's face)
    cube = realsky.cube_from_array(density.T, header)
    catalog, info = realsky.mock_catalog(cube, REGION, num_stars=4000, sigma_a=1e-6, sigma_b=0.0)
    assert len(catalog) == 4000 and info["num_in_region"] == 4000
    np.testing.assert_allclose(catalog.extinction, rho * catalog.distance_pc, atol=1e-5)
    noisy, _ = realsky.mock_catalog(cube, REGION, num_stars=4000, sigma_a=0.03, sigma_b=0.1)
    true_e = rho * noisy.distance_pc
    np.testing.assert_allclose(noisy.sigma_extinction, np.hypot(0.03, 0.1 * true_e), rtol=1e-6)
    pull = (noisy.extinction - true_e) / noisy.sigma_extinction
    assert abs(pull.mean()) < 0.06 and pull.std() == pytest.approx(1.0, abs=0.05)
    moved, _ = realsky.mock_catalog(cube, REGION, num_stars=4000, distance_error=0.05)
    assert moved.sigma_distance is not None and len(moved) < 4000  # some pushed out of the box


def test_distance_power_shapes_the_distance_distribution():
    rng = np.random.default_rng(2)
    box = Region.named("SR")
    uniform = np.linalg.norm(realsky.draw_positions(box, 20000, rng, 2.0), axis=1)
    near = np.linalg.norm(realsky.draw_positions(box, 20000, rng, 0.0), axis=1)
    far = np.linalg.norm(realsky.draw_positions(box, 20000, rng, 4.0), axis=1)
    assert np.median(near) < np.median(uniform) < np.median(far)


def _nothing_predicted_on_a_slab():
    """(the slab cube, a predictor of no dust, a variance head of median 0 and sigma_hat 1 in
    asinh units of 1e-3 mag/pc): the prior of a V-net that sees nothing."""
    import jax.numpy as jnp

    from dustjax.vnet.normalisation import Normalisation

    class Hat:
        normalisation = Normalisation("asinh", e0=0.05, rho0=1e-3)

        def predict_hat(self, extinction):
            return jnp.zeros_like(extinction), jnp.ones_like(extinction)

    density, header = _slab_cube()
    return realsky.cube_from_array(density.T, header), jnp.zeros_like, Hat()


def test_refined_scores_pull_a_map_that_predicts_nothing_onto_the_exact_cube():
    """The refinement of a V-net that predicts no dust (median 0, sigma_hat 1 in asinh units of
    1e-3 mag/pc) from the exact literature cube recovers the slab at a small noise floor, and
    follows the data less (the prior more) as the floor grows."""
    cube, zero, hat = _nothing_predicted_on_a_slab()
    report, _ = realsky.evaluate(
        cube, REGION, zero, route="literature", hat_model=hat, refine_floors=(0.001, 0.01, 0.03)
    )
    assert report["scores"]["dust_recovered"] == 0.0
    refined = report["refined"]
    assert list(refined) == ["floor_0.001", "floor_0.01", "floor_0.03"]
    tight = refined["floor_0.001"]["scores"]
    assert tight["skill"] > 0.95 and tight["dust_recovered"] == pytest.approx(1.0, abs=0.05)
    dust = [r["scores"]["dust_recovered"] for r in refined.values()]
    assert dust[0] > dust[1] > dust[2] > 0.0


def test_catalogue_route_refined_scores_with_correlated_prior_errors():
    """From a map of no dust (sigma_hat 1 in asinh units of 1e-3 mag/pc) the stars' refinement,
    independent or correlated, finds the slab's dust; each correlated setting has its entry."""
    cube, zero, hat = _nothing_predicted_on_a_slab()
    report, _ = realsky.evaluate(
        cube, REGION, zero, route="catalogue", hat_model=hat, num_stars=3000, sigma_a=0.003,
        sigma_b=0.01, num_redraws=0, refine_floors=(1.0,),
        refine_corr=((1.5, 0.1), (1.5, 0.1, "auto")), refine_grid=(1, 2),
    )  # fmt: skip
    refined = report["refined"]
    assert list(refined) == ["stars", "stars_corr_1.5_0.1", "stars_corr_1.5_0.1_auto",
                             "stars_corr_1.5_0.1_x2", "stars_corr_1.5_0.1_auto_x2"]  # fmt: skip
    assert refined["stars_corr_1.5_0.1_auto"]["model_error"] >= 0
    assert refined["stars_corr_1.5_0.1"]["corr_length_cells"] == 1.5
    assert refined["stars_corr_1.5_0.1_x2"]["grid_factor"] == 2
    assert refined["stars_corr_1.5_0.1_x2"]["scores"] != refined["stars_corr_1.5_0.1"]["scores"]
    for r in refined.values():
        assert r["scores"]["skill"] > 0.5 and r["scores"]["dust_recovered"] > 0.5


def test_catalogue_route_refinement_chosen_by_held_out_stars():
    """A map of no dust and precise stars of a slab: the held-out stars refuse the V-net's map
    and choose a refinement, refitted on all stars; without floors no other refinement runs."""
    cube, zero, hat = _nothing_predicted_on_a_slab()
    report, _ = realsky.evaluate(
        cube, REGION, zero, route="catalogue", hat_model=hat, num_stars=3000, sigma_a=0.003,
        sigma_b=0.01, num_redraws=0,
        refine_cv=dict(candidates="1.5:0.1,1.5:0.1:auto", seed=1, num_steps=300),
    )  # fmt: skip
    assert list(report["refined"]) == ["stars_cv"]
    r = report["refined"]["stars_cv"]
    assert r["cv"]["chosen"] in ("1.5:0.1", "1.5:0.1:auto")
    assert [row["name"] for row in r["cv"]["table"]] == ["none", "1.5:0.1", "1.5:0.1:auto"]
    assert r["scores"]["skill"] > 0.5 and report["scores"]["dust_recovered"] == 0.0


def test_literature_route_nnls_is_near_exact_on_a_uniform_slab(tmp_path):
    density, header = _slab_cube()
    cube = realsky.cube_from_array(density.T, header)
    predictor, _, info = realsky.load_model("nnls", REGION, nnls_steps=5000, route="literature")
    report, result = realsky.evaluate(cube, REGION, predictor, route="literature")
    s = report["scores"]
    assert s["skill"] > 0.99 and s["dust_recovered"] == pytest.approx(1.0, abs=0.01)
    assert s["log_r"] > 0.99
    files = realsky.write_report(tmp_path, report, result)
    assert json.loads(Path(files["json"]).read_text())["scores"]["skill"] == s["skill"]
    assert Path(files["figure"]).stat().st_size > 1000


def test_cli_catalogue_route_from_npy(tmp_path):
    from tools import realsky_vnet

    density, header = _slab_cube()
    np.save(tmp_path / "c.npy", density.T)
    (tmp_path / "c.header.json").write_text(json.dumps(header))
    report = realsky_vnet.main(
        [
            f"--cube={tmp_path / 'c.npy'}",
            "--region=SR",
            "--shape=8,8,8",
            "--route=catalogue",
            "--model=nnls",
            "--nnls_steps=300",
            "--nnls_smoothness=1e-3",
            "--sigma_a=0.003",
            "--sigma_b=0.01",
            "--num_stars=3000",
            "--num_redraws=4",
            "--batch_size=4",
            "--no_figure",
            "--save_arrays",
            f"--out={tmp_path / 'out'}",
        ]
    )
    saved = json.loads((tmp_path / "out" / "realsky.json").read_text())
    with np.load(tmp_path / "out" / "arrays.npz") as arrays:  # the map scored is the map saved
        assert "mu_hat" not in arrays and arrays["density"].shape == (8, 8, 8)
        p, t = arrays["density"].astype(float), arrays["truth"].astype(float)
        assert 1 - np.mean((p - t) ** 2) / np.var(t) == pytest.approx(
            report["scores"]["skill"], abs=1e-4
        )
        # the saved stars are the evaluated catalogue: gridding them gives the model's input
        from dustjax import catalog as cat
        from dustjax.vnet import gridding

        stars = cat.StarCatalog.from_arrays(
            xyz_pc=arrays["star_xyz_pc"].astype(float),
            extinction=arrays["star_extinction"].astype(float),
            sigma_extinction=arrays["star_sigma_extinction"].astype(float),
        )
        assert len(stars) == report["catalogue"]["num_in_region"]
        region = realsky.parse_region("SR", (8, 8, 8))
        np.testing.assert_allclose(
            np.maximum(gridding.grid_extinction(region, stars), 0), arrays["extinction"],
            rtol=1e-4, atol=1e-6,
        )  # fmt: skip
    assert saved["scores"]["skill"] == pytest.approx(report["scores"]["skill"])
    assert saved["catalogue"]["num_drawn"] == 3000 and saved["k"] == 3
    assert 0.0 <= saved["scores"]["band_coverage"] <= 1.0
    assert saved["band"].startswith("Monte Carlo (4 redraws)")
    assert saved["scores"]["skill"] > 0.5  # a slab from 3,000 stars is not hard


def test_monte_carlo_band_of_a_linear_model_has_the_analytic_width():
    from dustjax import catalog as cat
    from dustjax.vnet import gridding

    rng = np.random.default_rng(3)
    n = 3000
    catalog = cat.StarCatalog.from_arrays(
        xyz_pc=rng.uniform(REGION.lower_pc, REGION.upper_pc, (n, 3)),
        extinction=rng.uniform(3.0, 5.0, n),  # far from 0: no clipping
        sigma_extinction=rng.uniform(0.05, 0.3, n),
    )
    knn = gridding.knn_weights(REGION, catalog)
    c = 0.01
    band = realsky.monte_carlo_band(lambda e: c * e, knn, catalog, num_redraws=400, batch_size=50)
    expected = c * np.sqrt(
        np.sum(knn.weights**2 * catalog.sigma_extinction[knn.indices] ** 2, axis=1)
    ).reshape(REGION.shape)
    half = 0.5 * (band["p84"] - band["p16"])
    assert np.median(half / expected) == pytest.approx(1.0, abs=0.05)
    assert band["source"] == "Monte Carlo"

    class Hat:  # a variance head that adds a known sigma_hat; band = its own combination
        def predict_hat(self, e):
            return c * e, 0.0 * e + 7.0

        def band(self, mu, sigma):
            assert mu.shape == (400, 1, *REGION.shape) and np.all(sigma == 7.0)
            return dict(p16=mu.mean(0) - 1, p84=mu.mean(0) + 1, mean=mu.mean(0))

    hat = realsky.monte_carlo_band(
        None, knn, catalog, num_redraws=400, batch_size=50, hat_model=Hat()
    )
    assert hat["p16"].shape == REGION.shape and "variance head" in hat["source"]


@pytest.mark.slow
def test_cli_with_a_trained_workdir_warns_about_a_model_without_the_observation_loop(tmp_path):
    from dustjax import training
    from experiments.configs import vnet_test
    from tools import realsky_vnet

    config = vnet_test.get_config()  # SR at 16^3, trained on exact extinction cubes
    config.num_epochs = 1
    config.data.steps_per_epoch = 2
    config.progress_bar = False
    training.train_and_evaluate(config, tmp_path / "wd")
    density, header = _slab_cube()
    np.save(tmp_path / "c.npy", density.T)
    (tmp_path / "c.header.json").write_text(json.dumps(header))
    common = [f"--cube={tmp_path / 'c.npy'}", "--region=SR", "--shape=16,16,16",
              f"--model={tmp_path / 'wd'}", "--no_figure"]  # fmt: skip
    lit = realsky_vnet.main([*common, "--route=literature", f"--out={tmp_path / 'lit'}"])
    assert lit["model"]["variance_head"] is False and np.isfinite(lit["scores"]["skill"])
    cat_ = realsky_vnet.main(
        [*common, "--route=catalogue", "--num_stars=3000", "--num_redraws=2",
         f"--out={tmp_path / 'cat'}"]
    )  # fmt: skip
    assert "without the observation loop" in cat_["input_warnings"][0]
    assert cat_["band"].startswith("Monte Carlo (2 redraws)")
