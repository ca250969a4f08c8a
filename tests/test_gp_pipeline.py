"""End to end: the gp_test config through experiments/fit_gp.py's library call, and its outputs."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dustjax.catalog import CatalogError, StarCatalog, write_star_catalog
from dustjax.gp import pipeline, simulate
from dustjax.gp.grid import LBDGrid
from experiments.configs import gp_test


def _small_config():
    c = gp_test.get_config()
    c.fit.max_iterations = 30
    c.fit.min_iterations = 10
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import jax

    workdir = tmp_path_factory.mktemp("gp_test")
    x64_before = bool(jax.config.jax_enable_x64)
    summary = pipeline.fit_and_predict(_small_config(), workdir, progress=False)
    assert bool(jax.config.jax_enable_x64) == x64_before  # a float32 run leaves the flag alone
    assert summary["posterior_samples"] == 12
    # fit.calibration_fraction = 0.1 by default: the bands hold the post-hoc model error
    assert "post-hoc model error" in summary["star_bands"]
    assert summary["stars"]["num_fit"] + summary["stars"]["num_calibration"] == 3000
    return workdir, summary


def test_run_writes_summary_figures_and_cubes(run):
    workdir, summary = run
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk["status"] in ("converged", "max_iterations")
    assert len(on_disk["elbo_history"]) == on_disk["iterations"] > 0
    assert set(on_disk["hyperparameters"]) >= {"scale_lengths_pc", "amplitude_dex", "mean_dex"}
    m = on_disk["dust_mass_eq9_msun"]
    assert 0 < m["p16"] <= m["p50"] <= m["p84"]
    assert on_disk["gas_mass_eq9_msun"]["p50"] == pytest.approx(124 * m["p50"])
    box = on_disk["dust_mass_in_box_msun"]
    assert 0 < box["p16"] <= box["p50"] <= box["p84"] < m["p50"]  # eq. 9 puts it all at d_max
    assert on_disk["gas_mass_in_box_msun"]["p50"] == pytest.approx(124 * box["p50"])
    sim = on_disk["simulation"]
    assert sim["true_dust_mass_in_box_msun"] < sim["true_dust_mass_eq9_msun"]
    assert box["p50"] == pytest.approx(sim["true_dust_mass_in_box_msun"], rel=0.3)
    metrics = on_disk["simulation"]["metrics"]
    for key in (
        "fraction_underestimated_p84_below_true",
        "density_residual_typical",
        "max_clump_offset_in_scale_lengths",
    ):
        assert np.isfinite(metrics[key])
    for name in (
        "fig2_elbo.png",
        "fig3_star_extinctions.png",
        "fig4_extinction_maps.png",
        "fig5_density_slices.png",
        "figB1_sightlines.png",
        "final_state.npz",
        "density.fits",
        "extinction.fits",
        "total_extinction.fits",
    ):
        assert (workdir / name).stat().st_size > 0, name


def test_fits_cubes_have_a_wcs_that_maps_pixels_to_the_grid_cells(run):
    from astropy.io import fits
    from astropy.wcs import WCS

    workdir, summary = run
    grid = LBDGrid.from_dict(summary["prediction_grid"])
    with fits.open(workdir / "density.fits") as hdul:
        assert [h.name for h in hdul[1:7]] == ["P16", "P50", "P84", "FG_P16", "FG_P50", "FG_P84"]
        assert np.all(hdul["FG_P50"].data == 0.0)  # no ghost cells: no dust in front of d_min
        assert hdul["FG_P50"].data.shape == (grid.shape[1], grid.shape[0])
        p16, p50, p84 = (hdul[n].data for n in ("P16", "P50", "P84"))
        assert p50.shape == (grid.shape[2], grid.shape[1], grid.shape[0])
        assert np.all(p16 <= p50) and np.all(p50 <= p84) and np.all(p16 > 0)
        samples = hdul["SAMPLES"].data  # 12 posterior draws by default
        assert samples.shape == (12, *p50.shape) and hdul["SAMPLES"].header["NSAMPLES"] == 12
        assert hdul["SAMPLES"].header["BUNIT"] == "mag/pc" and np.all(samples > 0)
        # the draws scatter about the median cube (percentiles from 16 draws, 12 of them kept)
        assert 0.25 < np.mean(samples < p50[None]) < 0.75
        wcs = WCS(hdul["P50"].header)
    i, j, k = 3, 5, 7
    lon, lat, dist = wcs.pixel_to_world_values(i, j, k)
    assert lon == pytest.approx(grid.l_centres_deg()[i], abs=1e-6)
    assert lat == pytest.approx(grid.b_centres_deg()[j], abs=1e-6)
    assert dist == pytest.approx(grid.d_centres_pc()[k], rel=1e-9)
    with fits.open(workdir / "extinction.fits") as hdul:
        ext = hdul["P50"].data
    assert np.all(np.diff(ext, axis=0) >= -1e-6)  # median extinction grows with distance


def test_catalog_source_reads_a_csv_and_names_missing_columns(tmp_path):
    rng = np.random.default_rng(0)
    field = simulate.random_clump_field(rng)
    cat, _ = simulate.simulate_stars(field, rng, num_stars=600)
    cat = StarCatalog.from_arrays(
        l_deg=cat.l_deg,
        b_deg=cat.b_deg,
        distance_pc=cat.distance_pc,
        extinction=cat.extinction,
        sigma_extinction=cat.sigma_extinction,
    )
    table = cat.to_table()
    table.rename_column("extinction", "Aobs")
    table.remove_columns(["x", "y", "z"])
    table["l"][:3] = 120.0  # outside the grid: dropped and counted
    path = tmp_path / "stars.csv"
    table.write(path, format="ascii.csv")
    c = _small_config()
    c.data.source = "catalog"
    c.data.path = str(path)
    with pytest.raises(CatalogError, match="extinction"):
        pipeline.fit_and_predict(c, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()  # a bad catalogue leaves no (empty) workdir behind
    c.data.columns.extinction = "Aobs"
    c.fit.max_iterations = 10
    c.fit.model_error = True  # the star bands then hold the learned model error too
    c.output.plots = False
    summary = pipeline.fit_and_predict(c, tmp_path / "ok", progress=False)
    assert summary["star_bands"].startswith("true extinction")
    assert summary["stars"]["num_dropped_outside_grid"] == 3
    assert summary["stars"]["num_stars"] == 597
    assert "simulation" not in summary


def test_write_star_catalog_round_trip_is_usable(tmp_path):
    rng = np.random.default_rng(1)
    cat = StarCatalog.from_arrays(
        l_deg=rng.uniform(50, 90, 5),
        b_deg=np.zeros(5),
        distance_pc=np.full(5, 300.0),
        extinction=np.ones(5),
        sigma_extinction=np.full(5, 0.1),
    )
    write_star_catalog(tmp_path / "s.fits", cat)
    assert (tmp_path / "s.fits").exists()


REPO = Path(__file__).resolve().parent.parent


def _parse_config(*overrides):
    """The config as experiments/fit_gp.py sees it after absl parsed its command line."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["fit_gp", f"--config={REPO / 'dustjax/configs/gp_test.py'}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
    )
    fv(argv)
    return fv.config


def test_none_defaults_can_be_overridden_from_the_command_line():
    """batch_size and cell_chunk default to None, yet --config.fit.batch_size=N must parse."""
    from dustjax.gp.fit import FitSettings

    settings = FitSettings(**dict(_parse_config().fit))
    assert (settings.batch_size, settings.cell_chunk) == (None, None)
    cfg = _parse_config("--config.fit.batch_size=500", "--config.fit.cell_chunk=64")
    settings = FitSettings(**dict(cfg.fit))
    assert (settings.batch_size, settings.cell_chunk) == (500, 64)


def test_cli_reports_an_unwritable_workdir_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.fit_gp",
            f"--config={REPO / 'dustjax/configs/gp_test.py'}",
            f"--workdir={blocker / 'out'}",
            "--progress=false",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "fit_gp: error: cannot create output directory" in proc.stderr


def test_an_earlier_runs_outputs_are_set_aside_not_mixed(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "converged"}')
    (tmp_path / "density.fits").write_bytes(b"old map")
    (tmp_path / "fig2_elbo.png").write_bytes(b"old plot")
    (tmp_path / "notes.txt").write_text("mine")
    moved = pipeline.set_aside_previous_outputs(tmp_path)
    assert moved == ["density.fits", "fig2_elbo.png", "summary.json"]
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "density.fits").exists()
    assert (tmp_path / "previous_run" / "density.fits").read_bytes() == b"old map"
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not an output: left alone
    # a third run replaces the second's set-aside copy, not the user's files
    (tmp_path / "summary.json").write_text('{"status": "nan_elbo"}')
    assert pipeline.set_aside_previous_outputs(tmp_path) == ["summary.json"]
    assert not (tmp_path / "previous_run" / "density.fits").exists()
    assert "nan_elbo" in (tmp_path / "previous_run" / "summary.json").read_text()
    assert pipeline.set_aside_previous_outputs(tmp_path) == []


def test_a_rerun_moves_only_its_own_outputs_never_the_users_catalogue(tmp_path):
    (tmp_path / "density.fits").write_bytes(b"old map")
    (tmp_path / "my_catalogue.fits").write_bytes(b"the user's stars")
    (tmp_path / "fig_mine.png").write_bytes(b"the user's figure")
    assert pipeline.set_aside_previous_outputs(tmp_path) == ["density.fits"]
    assert (tmp_path / "my_catalogue.fits").read_bytes() == b"the user's stars"
    assert (tmp_path / "fig_mine.png").read_bytes() == b"the user's figure"
    assert not (tmp_path / "previous_run" / "my_catalogue.fits").exists()
    # an input catalogue that happens to carry an output's name stays where the config points
    (tmp_path / "extinction.fits").write_bytes(b"input stars")
    keep = [str(tmp_path / "extinction.fits")]
    assert pipeline.set_aside_previous_outputs(tmp_path, keep=keep) == []
    assert (tmp_path / "extinction.fits").read_bytes() == b"input stars"


def test_the_library_never_switches_jax_to_64_bit(tmp_path):
    import jax

    before = bool(jax.config.jax_enable_x64)
    with jax.enable_x64(False):
        c = _small_config()
        c.dtype = "float64"
        with pytest.raises(ValueError, match="jax_enable_x64"):
            pipeline.fit_and_predict(c, tmp_path / "w", progress=False)
        assert not jax.config.jax_enable_x64
        assert not (tmp_path / "w").exists()
    assert bool(jax.config.jax_enable_x64) == before
    # the entry point sets it, for float64 runs only
    from experiments import fit_gp

    c = _small_config()
    fit_gp.configure_jax(c)
    assert bool(jax.config.jax_enable_x64) == before
    c.dtype = "float64"
    try:
        fit_gp.configure_jax(c)
        assert jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_posterior_samples_is_a_config_key_settable_from_the_command_line():
    assert _parse_config().predict.posterior_samples == 12
    assert _parse_config("--config.predict.posterior_samples=5").predict.posterior_samples == 5


def test_more_posterior_samples_than_prediction_draws_is_refused_before_the_fit(tmp_path):
    c = _small_config()
    c.predict.posterior_samples = c.predict.num_samples + 1
    with pytest.raises(ValueError, match="posterior_samples"):
        pipeline.fit_and_predict(c, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


# ---- calibrated bands: a post-hoc model error fitted on stars held out of the fit -------------
def _calibration_run(tmp_path, monkeypatch, *, sigma_factor, calibration_fraction=0.25):
    """gp_test's simulation with the reported sigma = true sigma * sigma_factor."""
    real = simulate.paper_simulation

    def under_reported(**kwargs):
        field, cat, true_ext = real(**kwargs)
        cat = dataclasses.replace(cat, sigma_extinction=cat.sigma_extinction * sigma_factor)
        return field, cat, true_ext

    monkeypatch.setattr(simulate, "paper_simulation", under_reported)
    c = gp_test.get_config()  # its 60 iterations: a 30-iteration fit leaves heavy-tailed residuals
    c.fit.calibration_fraction = calibration_fraction
    c.output.plots = False
    c.output.fits = False
    return pipeline.fit_and_predict(c, tmp_path, progress=False)


def test_calibration_split_is_reproducible_and_sized():
    held = pipeline.calibration_split(1000, 0.1, seed=3)
    assert held.sum() == 100
    np.testing.assert_array_equal(held, pipeline.calibration_split(1000, 0.1, seed=3))
    assert not pipeline.calibration_split(1000, 0.0, seed=3).any()
    with pytest.raises(ValueError, match="calibration_fraction"):
        pipeline._calibration_fraction(1.0)


def test_calibration_widens_bands_of_under_reported_noise(tmp_path, monkeypatch):
    summary = _calibration_run(tmp_path, monkeypatch, sigma_factor=1.0 / 3.0)
    cal = summary["calibration"]
    # the held-out stars are not in the fit
    assert summary["stars"]["num_calibration"] == cal["num_stars"] == 750
    assert summary["stars"]["num_fit"] == 3000 - 750
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("frac", "floor_mag", "num_stars", "validation_coverage_observed_before",
                "validation_coverage_observed_after", "validation_coverage_true_before",
                "validation_coverage_true_after", "band_scale", "method", "methods",
                "deconvolution"):  # fmt: skip
        assert key in on_disk["calibration"]
    # the configured method's numbers are those of `methods` (both recorded: the truth is known)
    assert cal["method"] == "deconvolved" and set(cal["methods"]) == {"deconvolved", "observed"}
    chosen = cal["methods"]["deconvolved"]
    assert (chosen["band_scale"], chosen["frac"]) == (cal["band_scale"], cal["frac"])
    assert chosen["coverage_true"] == cal["validation_coverage_true_after"]
    assert pipeline._fits_meta(summary)["CALSCALE"] == cal["band_scale"]
    assert pipeline.extinction_band_scale(summary) == cal["band_scale"]
    assert summary["star_bands"].startswith("true extinction")
    assert cal["validation_coverage_observed_before"] < 0.45
    assert 0.60 <= cal["validation_coverage_observed_after"] <= 0.76
    assert cal["validation_coverage_true_before"] < cal["validation_coverage_true_after"]
    assert cal["frac"] > 0.05
    metrics = summary["simulation"]["metrics"]  # the fit stars' bands (fig. 3) are widened too
    assert (
        metrics["fraction_true_within_p16_p84"]
        > metrics["fraction_true_within_p16_p84_fit_stars_uncalibrated"]
    )


def test_calibration_finds_no_model_error_when_bands_and_noise_are_right():
    """Truth ~ N(P50, w) with the band's w, observed = truth + N(0, sigma): nothing is missing,
    so both the maximum-likelihood (realsky's) and the coverage-targeted (f, s) are ~0; and
    with the truth's scatter doubled, the targeted term brings the coverage back to 68 %."""
    from dustjax.gp import calibration

    rng = np.random.default_rng(0)
    p50 = rng.uniform(0.2, 2.0, 20000)
    w = 0.05 * p50
    pct = np.stack([p50 - w, p50, p50 + w])
    sigma = 0.1 * p50
    truth = p50 + w * rng.standard_normal(p50.size)
    observed = truth + sigma * rng.standard_normal(p50.size)
    f, s = calibration.calibrate_posthoc(pct, observed, sigma)
    assert f < 0.01 and s < 0.01
    assert calibration.calibrate_posthoc(pct, observed, sigma, target_coverage=0.68) == (0, 0)
    truth = p50 + 2 * w * rng.standard_normal(p50.size)  # bands half as wide as the truth's scatter
    observed = truth + sigma * rng.standard_normal(p50.size)
    f, s = calibration.calibrate_posthoc(pct, observed, sigma, target_coverage=0.68)
    widened = calibration.widen_bands(pct, f, s)
    assert calibration.observed_coverage(widened, observed, sigma) == pytest.approx(0.68, abs=0.01)
    assert calibration.coverage(pct, truth) < 0.45
    assert 0.62 <= calibration.coverage(widened, truth) <= 0.74


def test_every_output_records_its_provenance(run):
    """Issue 20: version, date, method, config name and hash in summary.json and every FITS."""
    from astropy.io import fits

    from dustjax import provenance

    workdir, summary = run
    prov = json.loads((workdir / "summary.json").read_text())["provenance"]
    assert prov["method"] == "gp" and prov["config_name"] == summary["config"]["name"]
    assert prov["config_hash"] == provenance.config_hash(summary["config"])
    for name in ("density.fits", "extinction.fits", "total_extinction.fits"):
        header = fits.getheader(workdir / name)
        assert header["CFGHASH"] == prov["config_hash"] and header["METHOD"] == "gp"
        assert header["DJVERS"] == prov["dustjax_version"]


def test_cube_source_draws_stars_in_a_known_density_with_its_truth():
    c = _small_config()
    c.data.source = "cube"
    c.data.cube = "lognormal:3"
    c.data.simulation.num_stars = 2000
    grid = LBDGrid.from_dict(dict(c.grid))
    catalog, counts, truth = pipeline.load_stars(c, grid)
    assert counts["num_stars"] == len(catalog) == len(truth["extinction"]) == 2000
    np.testing.assert_allclose(
        truth["extinction"],
        truth["field"].extinction(catalog.l_deg, catalog.b_deg, catalog.distance_pc),
        rtol=1e-5,
    )
    resid = (catalog.extinction - truth["extinction"]) / catalog.sigma_extinction
    assert abs(np.std(resid) - 1.0) < 0.05  # noise max(0.1 A, 0.02) mag, as reported


def test_star_predictions_use_the_fits_kernel_coordinates():
    """With log-spherical kernel coordinates the star predictions must evaluate the GP at the
    cells' log-spherical coordinates (they used XYZ whatever the fit's): the pipeline's route
    (`predict.predict_star_extinctions`) agrees with realsky's independent one, XYZ does not."""
    import jax.numpy as jnp

    from dustjax.gp import predict, realsky, svgp
    from dustjax.gp.coords import KernelCoords

    grid = LBDGrid((150.0, 180.0), (-25.0, -5.0), (100.0, 600.0), (4, 3, 5), ghost_cells=1)
    coords = KernelCoords.for_grid(grid, "log_spherical")
    cells = coords.grid_cells(grid)  # inducing points at the cells: no conditional variance
    rng = np.random.default_rng(0)
    params = svgp.init_params(
        cells, scale_lengths_pc=60.0, amplitude_dex=0.5, mean_dex=-3.0, q_std=1e-4
    )
    params["q_mean"] = jnp.asarray(rng.standard_normal(len(cells)), jnp.float32)
    lon, lat, dist = rng.uniform(151, 179, 50), rng.uniform(-24, -6, 50), rng.uniform(150, 590, 50)
    op = grid.star_operator(lon, lat, dist)
    kw = dict(jitter=1e-4, num_samples=8)
    pct = predict.predict_star_extinctions(
        params, grid, op.flat_index, op.partial_pc, kernel_coords=coords, **kw
    )
    other = realsky.star_samples(params, grid, lon, lat, dist, kernel_coords="log_spherical", **kw)
    np.testing.assert_allclose(pct[1], np.median(other, axis=0), rtol=0.02)
    xyz = predict.predict_star_extinctions(params, grid, op.flat_index, op.partial_pc, **kw)
    assert np.median(np.abs(xyz[1] / pct[1] - 1.0)) > 0.1


def test_calibration_rescales_a_learned_model_error_down_as_well_as_up():
    """The calibrated model error keeps the learned term's shape f : s and scales it to 68 %
    observed coverage: down when the learned term over-covers, up when it under-covers."""
    from dustjax.gp import calibration

    rng = np.random.default_rng(1)
    p50 = rng.uniform(0.2, 2.0, 20000)
    w = 0.02 * p50
    pct = np.stack([p50 - w, p50, p50 + w])
    sigma = 0.1 * p50
    truth = p50 + 0.08 * p50 * rng.standard_normal(p50.size)  # a model error of 8 %
    observed = truth + sigma * rng.standard_normal(p50.size)
    for learned in ((0.3, 0.0), (0.02, 0.0)):  # over- and under-covering
        f, s = calibration.calibrate_model_error(pct, observed, sigma, learned=learned)
        assert s == 0.0 and f == pytest.approx(np.sqrt(0.08**2 - 0.02**2), rel=0.1)
        widened = calibration.widen_bands(pct, f, s)
        assert calibration.observed_coverage(widened, observed, sigma) == pytest.approx(
            0.68, abs=0.01
        )
    assert calibration.calibrate_model_error(pct, observed, sigma) == calibration.calibrate_posthoc(
        pct, observed, sigma, target_coverage=0.68
    )
