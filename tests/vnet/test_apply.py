"""The apply pipeline: literature cubes, Monte Carlo, sub-regions, consistency, outputs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits

from dustjax import catalog as cat
from dustjax import maps
from dustjax.geometry import Region
from dustjax.los import los_operator
from dustjax.sims import stars as demo
from dustjax.vnet import apply as ap
from dustjax.vnet import gridding, plots
from dustjax.vnet.output import make_map, write_outputs

REGION = Region.named("SR").with_shape((8, 8, 8))  # 24 pc cells, k = 3


def _oracle(truth):
    """A 'model' that returns the true density whatever it is given."""
    truth = jnp.asarray(truth)
    return lambda extinction: jnp.broadcast_to(truth, extinction.shape)


def _blob_density(region, amplitude=0.02):
    c = region.cell_centres_pc()
    r2 = np.sum((c - np.array([-100.0, 10.0, 0.0])) ** 2, axis=-1)
    return (0.002 + amplitude * np.exp(-r2 / (2 * 30.0**2))).astype(np.float32)


def test_monte_carlo_dispersion_matches_the_analytic_value():
    # A linear "model" rho = c E: the per-cell dispersion is c sqrt(sum_j w_j^2 sigma_j^2).
    rng = np.random.default_rng(0)
    n = 3000
    catalog = cat.StarCatalog.from_arrays(
        xyz_pc=rng.uniform(REGION.lower_pc, REGION.upper_pc, (n, 3)),
        extinction=rng.uniform(3.0, 5.0, n),  # far from 0: no clipping
        sigma_extinction=rng.uniform(0.05, 0.3, n),
    )
    knn = gridding.knn_weights(REGION, catalog)
    c = 0.01
    predictor = lambda e: c * e  # noqa: E731
    nominal = c * knn.apply(catalog.extinction)
    mc = ap.monte_carlo(
        predictor,
        knn,
        catalog,
        REGION,
        num_redraws=400,
        batch_size=64,
        reference=nominal,
        progress=False,
    )
    expect = c * np.sqrt(
        np.sum(knn.weights**2 * catalog.sigma_extinction[knn.indices] ** 2, axis=-1)
    ).reshape(REGION.shape)
    ratio = mc["density_std"] / expect
    assert abs(np.median(ratio) - 1) < 0.03  # 512 cells x 400 redraws
    assert np.all(np.abs(ratio - 1) < 0.25)
    # The mean converges to the nominal map within its standard error.
    z = (mc["density_mean"] - nominal) / (expect / np.sqrt(400))
    assert np.abs(np.mean(z)) < 0.3 and np.std(z) < 1.3
    # Extinction dispersion: the LOS operator of a linear map, bounded by the summed sigmas.
    assert mc["extinction_std"].shape == REGION.shape and np.all(mc["extinction_std"] > 0)
    with pytest.raises(ap.ApplyError, match=">= 2"):
        ap.monte_carlo(predictor, knn, catalog, REGION, num_redraws=1)


def test_consistency_with_a_perfect_model_recovers_the_catalogue():
    truth = _blob_density(REGION)
    d = demo.demo_catalog(REGION, 3000, seed=1, density=truth, parallax_error_mas=1e-6)
    result = ap.run_catalog(
        d.catalog, REGION, _oracle(truth), num_redraws=0, truth=truth, progress=False
    )
    c = result.summary["consistency"]
    # E_rho is the true extinction; E = E_true + N(0, sigma_E) with sigma in [0.03, 0.12].
    assert abs(c["median_difference_mag"]) < 0.01
    assert 0.04 < c["spread_difference_mag"] < 0.1
    assert 0.6 < c["fraction_within_1sigma"] < 0.76
    np.testing.assert_allclose(result.star_e_rho, d.true_extinction, rtol=1e-4, atol=1e-6)
    assert result.summary["residual_vs_truth"]["dispersion"] == 0.0
    # The gridded extinction approximates the exact LOS extinction at the cell centres.
    exact = np.asarray(los_operator(REGION)(truth))
    assert np.median(np.abs(result.extinction - exact)) < 0.1


def _vergely_file(path, density, step, sun_pos, bunit="mag/pc"):
    h = fits.Header()
    h["STEP"] = step
    h["SUN_POSX"], h["SUN_POSY"], h["SUN_POSZ"] = sun_pos
    h["BUNIT"] = bunit
    fits.PrimaryHDU(np.asarray(density, np.float32).transpose(2, 1, 0), header=h).writeto(path)
    return path


def test_regrid_same_grid_is_exact_and_coarser_grid_is_smoothed(tmp_path):
    # A 16^3 cube of 24 pc cells with the Sun at cell (12, 8, 8): it contains REGION exactly.
    rng = np.random.default_rng(2)
    big = rng.uniform(0, 0.01, (16, 16, 16)).astype(np.float32)
    m = maps.DustMap.from_fits(_vergely_file(tmp_path / "c.fits", big, 24.0, (12, 8, 8)))
    out = maps.regrid_nearest(m, REGION)
    np.testing.assert_array_equal(out, big[4:12, 4:12, 4:12])
    # Finer literature cube (8 pc) onto 24 pc cells: smoothing keeps a constant constant and
    # spreads a spike over ~ the cell size.
    fine = np.full((40, 40, 40), 0.003, np.float32)
    m = maps.DustMap.from_fits(_vergely_file(tmp_path / "f.fits", fine, 8.0, (30, 20, 20)))
    np.testing.assert_allclose(maps.regrid_nearest(m, REGION), 0.003, rtol=1e-5)
    spike = np.zeros((40, 40, 40), np.float32)
    spike[18, 21, 21] = 1.0  # X in [-96, -88] pc
    m = maps.DustMap.from_fits(_vergely_file(tmp_path / "s.fits", spike, 8.0, (30, 20, 20)))
    sharp = maps.regrid_nearest(m, REGION, smooth=False)
    smooth = maps.regrid_nearest(m, REGION)
    assert sharp.max() == 0.0 or sharp.max() == 1.0
    assert 0 < smooth.max() < 0.1 and np.count_nonzero(smooth > 1e-4) > 1
    # A cube that does not cover the region: named axis and extents.
    m = maps.DustMap.from_fits(_vergely_file(tmp_path / "n.fits", big[:6], 24.0, (12, 8, 8)))
    with pytest.raises(maps.MapError, match=r"covers X in \[-288, -144\] pc"):
        maps.regrid_nearest(m, REGION)


def test_literature_path_with_a_perfect_model_and_subregion(tmp_path):
    truth = _blob_density(REGION)
    path = maps.write_cartesian_map(tmp_path / "lit.fits", REGION, truth)
    m = maps.DustMap.from_fits(path)
    r = ap.run_literature(m, REGION, _oracle(truth))
    np.testing.assert_array_equal(r.truth, truth)
    np.testing.assert_allclose(r.extinction, np.asarray(los_operator(REGION)(truth)), rtol=1e-6)
    assert r.summary["residual_vs_truth"]["dispersion"] == 0.0
    # Sub-region: the model input outside is random in the inside range.
    sub = ((-150.0, -50.0), (-50.0, 50.0), (-50.0, 50.0))
    r = ap.run_literature(m, REGION, _oracle(truth), subregion=sub)
    assert r.inside_mask.sum() == 4 * 4 * 4
    assert r.summary["edge_profile"]["depth_cells"][0] == 1.0


def test_fill_outside_and_subregion_mask():
    mask = ap.subregion_mask(REGION, ((-150, -50), (-50, 50), (-50, 50)))
    ext = jnp.asarray(np.random.default_rng(3).uniform(1, 2, REGION.shape), jnp.float32)
    filled = np.asarray(ap.fill_outside(ext, mask, jax.random.key(0)))
    inside = np.asarray(ext)[mask]
    np.testing.assert_array_equal(filled[mask], inside)
    out = filled[~mask]
    assert out.min() >= inside.min() and out.max() <= inside.max()
    assert not np.allclose(out, np.asarray(ext)[~mask])
    with pytest.raises(ap.ApplyError, match="holds no cell"):
        ap.subregion_mask(REGION, ((10, 20), (0, 1), (0, 1)))
    with pytest.raises(ap.ApplyError, match="lower, upper"):
        ap.subregion_mask(REGION, ((0, -20), (0, 1), (0, 1)))


def test_model_for_another_region_or_size_is_refused(tmp_path):
    sr, lr = Region.named("SR"), Region.named("LR")
    ap.check_model_region(sr, Region.named("SR"))
    with pytest.raises(ap.ApplyError, match="trained for Region SR.*not for Region LR"):
        ap.check_model_region(sr, lr)
    with pytest.raises(ap.ApplyError, match=r"\(32, 32, 32\) cells.*\(64, 64, 64\)"):
        ap.check_model_region(sr, sr.with_shape((64, 64, 64)))
    with pytest.raises(ap.ApplyError, match="not a training workdir"):
        ap.load_predictor(tmp_path, sr)
    # a symmetry the trained box lacks is refused before the checkpoint is read (there is none)
    from experiments.configs import vnet_lr

    (tmp_path / "config.json").write_text(json.dumps(vnet_lr.get_config().to_dict()))
    with pytest.raises(ValueError, match="'lognormal' simulations .* symmetric under 'flip_y'"):
        ap.load_predictor(tmp_path, lr, symmetry="dihedral")


def test_face_on_map_analytic():
    lr = Region.named("LR")
    rho = np.full(lr.shape, 0.001, np.float32)
    image = plots.face_on_map(rho, lr)
    # Cells of 60 pc with |Z centre| < 400 pc: centres +-30 ... +-390 -> 14 cells.
    np.testing.assert_allclose(image, 0.001 * 14 * 60.0, rtol=1e-6)


def _random_variables(model, region, seed=0):
    """Random V-net variables without compiling `init` (XLA takes ~20 s for it on 2 busy cores)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *region.shape, 1)))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return np.ones(s.shape, s.dtype)
        return (0.2 * rng.standard_normal(s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_run_catalog_with_a_vnet_writes_every_output(tmp_path):
    from dustjax.models import VNet

    model = VNet(features=(4, 8))
    variables = _random_variables(model, REGION)
    predictor = ap.density_predictor(model, variables)
    d = demo.demo_catalog(REGION, 2000, seed=4, density=_blob_density(REGION))
    sub = ((-192.0, -48.0), (-96.0, 96.0), (-96.0, 96.0))
    result = ap.run_catalog(
        d.catalog,
        REGION,
        predictor,
        num_redraws=6,
        batch_size=4,
        truth=d.density,
        subregion=sub,
        progress=False,
    )
    assert result.density.shape == REGION.shape and np.all(result.density >= 0)
    assert result.density_std.shape == REGION.shape
    files = write_outputs(tmp_path / "out", result)
    for name in (
        "fits",
        "summary",
        "slices",
        "face_on",
        "consistency",
        "truth_vs_prediction",
        "edge_effect",
    ):
        assert name in files, name
    m = maps.DustMap.from_fits(files["fits"])
    np.testing.assert_allclose(m.density, result.density)
    np.testing.assert_allclose(m.uncertainty, result.density_std)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_redraws"] == 6 and summary["k"] == 3
    assert set(summary["consistency"]) >= {"median_difference_mag", "spread_difference_mag"}
    assert summary["catalogue"]["num_stars"] < 2000  # only the stars in the sub-box are used


@pytest.mark.slow
def test_demo_catalog_from_the_simulator():
    d = demo.demo_catalog(REGION, 500, seed=5)
    assert d.density.shape == REGION.shape and d.density.max() > 0
    rel = d.catalog.sigma_distance / d.catalog.distance_pc
    assert np.median(rel) < 0.05


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    import subprocess
    import sys

    csv = tmp_path / "stars.csv"
    csv.write_text("l,b,distance,A\n180,0,50,0.1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dustjax.cli.apply", "--catalog", str(csv), "--model",
         str(tmp_path), "--workdir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path.parent, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("apply: ")
    assert "not a training workdir" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_make_map_checks_its_inputs_before_any_work(tmp_path):
    with pytest.raises(ap.ApplyError, match="exactly one of a catalogue and a literature cube"):
        make_map(tmp_path, "SR", tmp_path / "out")
    with pytest.raises(ap.ApplyError, match="exactly one"):
        make_map(tmp_path, "SR", tmp_path / "out", catalog="demo", literature_cube="c.fits")
    with pytest.raises(ap.ApplyError, match="not a training workdir"):
        make_map(tmp_path, "SR", tmp_path / "out", catalog="demo")
    assert not (tmp_path / "out").exists()


def test_make_map_runs_the_demo_catalogue_end_to_end(tmp_path, monkeypatch):
    """`make_map` (what experiments/apply.py calls) with the model's loading replaced by a
    zero predictor on REGION: the region comes from the model, the outputs are all written."""
    monkeypatch.setattr(ap, "model_region", lambda model: REGION)
    seen = {}

    def load_predictor(model, region, symmetry="none"):
        seen.update(region=region, symmetry=symmetry)
        return (lambda extinction: jnp.zeros_like(extinction)), region, None

    monkeypatch.setattr(ap, "load_predictor", load_predictor)
    files = make_map("wd", "SR", tmp_path / "out", catalog="demo", demo_stars=300,
                     num_redraws=2, batch_size=2, symmetry="flip_y", plots=False)  # fmt: skip
    assert seen["region"].shape == REGION.shape and seen["symmetry"] == "flip_y"
    assert seen["region"].lower_pc == REGION.lower_pc
    assert set(files) == {"fits", "summary", "demo_catalog"}
    assert (tmp_path / "out/demo_catalog.fits").exists()
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["model_workdir"] == "wd"
    np.testing.assert_array_equal(maps.DustMap.from_fits(files["fits"]).density, 0.0)
