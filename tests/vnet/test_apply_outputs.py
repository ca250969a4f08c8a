"""What `make_map` (experiments.apply) leaves on disk: an earlier run's outputs set aside, never
the user's files; nothing written before success; every cheap check before the model loads."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import pytest

from dustjax import io as dio
from dustjax.catalog import CatalogError
from dustjax.geometry import Region
from dustjax.vnet import apply as ap
from dustjax.vnet.output import make_map

REGION = Region.named("SR").with_shape((8, 8, 8))


@pytest.fixture
def zero_model(monkeypatch):
    """The model's region and loading replaced by a zero predictor on REGION; records calls."""
    calls = []
    monkeypatch.setattr(ap, "model_region", lambda model: REGION)

    def load_predictor(model, region, symmetry="none"):
        calls.append(model)
        return (lambda extinction: jnp.zeros_like(extinction)), region, None

    monkeypatch.setattr(ap, "load_predictor", load_predictor)
    return calls


def _run(outdir, **kw):
    kw = dict(dict(catalog="demo", demo_stars=300, num_redraws=0, plots=False), **kw)
    return make_map("wd", "SR", outdir, **kw)


def test_a_second_run_sets_the_first_runs_outputs_aside_and_keeps_the_users(tmp_path, zero_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # the user's own file
    (out / "truth_vs_prediction.png").write_bytes(b"old figure")  # an earlier run's
    (out / "summary.json").write_text('{"old": true}')
    (out / "demo_catalog.fits").write_bytes(b"old catalogue")
    files = _run(out)
    assert set(files) == {"fits", "summary", "demo_catalog"}
    # nothing of the earlier run beside the new map: it is in previous_run/
    assert not (out / "truth_vs_prediction.png").exists()
    previous = out / dio.PREVIOUS_RUN_DIR
    assert sorted(p.name for p in previous.iterdir()) == [
        "demo_catalog.fits", "summary.json", "truth_vs_prediction.png",
    ]  # fmt: skip
    assert (previous / "truth_vs_prediction.png").read_bytes() == b"old figure"
    assert (out / "notes.txt").read_text() == "mine"
    assert "old" not in json.loads((out / "summary.json").read_text())
    assert (out / "demo_catalog.fits").read_bytes() != b"old catalogue"
    # a catalogue given as input is never moved, even under an output's name
    files = _run(out, catalog=str(out / "demo_catalog.fits"), distance_unit="pc")
    assert (out / "demo_catalog.fits").exists() and "demo_catalog" not in files
    assert (previous / "density.fits").exists()


def test_a_failed_run_writes_nothing(tmp_path, monkeypatch, zero_model):
    def broken(*args, **kwargs):
        raise ap.ApplyError("the model is broken")

    monkeypatch.setattr(ap, "run_catalog", broken)
    with pytest.raises(ap.ApplyError, match="broken"):
        _run(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # not even demo_catalog.fits
    out = tmp_path / "old"
    out.mkdir()
    (out / "density.fits").write_bytes(b"the earlier map")
    with pytest.raises(ap.ApplyError):
        _run(out)
    assert sorted(os.listdir(out)) == ["density.fits"]  # the earlier run untouched


def test_bad_input_is_refused_before_the_model_loads(tmp_path, zero_model):
    bad = tmp_path / "stars.csv"
    bad.write_text("ra,dec\n1,2\n")
    with pytest.raises(CatalogError):
        _run(tmp_path / "out", catalog=str(bad))
    assert zero_model == [] and not (tmp_path / "out").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(dio.OutputError, match="is a file"):
        _run(blocker / "out")
    assert zero_model == []


def test_check_can_write_dir_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert dio.check_can_write_dir(target) == target and not (tmp_path / "a").exists()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("root ignores directory permissions")
        with pytest.raises(dio.OutputError, match="not writable"):
            dio.check_can_write_dir(locked / "out")
    finally:
        locked.chmod(0o700)


def test_columns_without_a_name_are_one_line():
    from experiments.apply import parse_columns

    assert parse_columns(["extinction=A0", "l=GLON"]) == {"extinction": "A0", "l": "GLON"}
    for bad in (["extinction"], ["extinction="], ["=A0"]):
        with pytest.raises(ap.ApplyError, match="logical=name pairs"):
            parse_columns(bad)


class _FakeHat:
    """A variance head that predicts no dust (rho_hat 0) with sigma_hat 1 (asinh, rho0 1e-3)."""

    def __init__(self, has_variance=True):
        from dustjax.vnet.normalisation import Normalisation

        self.has_variance = has_variance
        self.normalisation = Normalisation("asinh", e0=0.05, rho0=1e-3)

    def predict_hat(self, extinction):
        return jnp.zeros_like(extinction), jnp.ones_like(extinction)


def test_refine_fits_the_stars_and_says_what_it_did(tmp_path, zero_model, monkeypatch):
    from dustjax.vnet import normalisation

    monkeypatch.setattr(normalisation, "load_model_predictor", lambda model: _FakeHat())
    _run(tmp_path / "out", refine=True, demo_stars=2000)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    info = summary["refined"]
    assert info["source"] == "stars" and info["num_stars"] > 0
    assert info["dust_sum_network"] == 0.0 and info["dust_sum_refined"] > 0.0
    # the zero map misses the stars' extinctions; the refined one integrates back to them better
    before, after = info["consistency_network"], info["consistency_refined"]
    assert abs(after["median_difference_mag"]) < abs(before["median_difference_mag"])
    assert after["fraction_within_1sigma"] > before["fraction_within_1sigma"]


def test_refine_with_correlated_prior_errors_says_so(tmp_path, zero_model, monkeypatch):
    from dustjax.vnet import normalisation

    monkeypatch.setattr(normalisation, "load_model_predictor", lambda model: _FakeHat())
    _run(tmp_path / "out", refine=True, refine_corr_length=2.0, refine_model_error="auto",
         demo_stars=2000)  # fmt: skip
    info = json.loads((tmp_path / "out" / "summary.json").read_text())["refined"]
    assert info["corr_length_cells"] == 2.0 and info["nugget"] > 0
    assert info["model_error"] >= 0 and info["chi2_per_star"]
    before, after = info["consistency_network"], info["consistency_refined"]
    assert abs(after["median_difference_mag"]) < abs(before["median_difference_mag"])
    with pytest.raises(ap.ApplyError, match="refine_corr_length"):
        _run(tmp_path / "b", refine=True, refine_corr_length=-1.0)
    with pytest.raises(ap.ApplyError, match="refine_model_error"):
        _run(tmp_path / "c", refine=True, refine_model_error="often")


def test_refine_on_a_finer_grid_writes_the_regridded_map_and_says_so(tmp_path, zero_model,
                                                                       monkeypatch):  # fmt: skip
    """--refine_grid_factor=2: the fit on the finer grid (`refine_catalog_fine`, tested against
    sub-cell structure in test_refine) reaches apply: the summary names the factor and the
    reduction, the map differs from the same refinement on the region's cells and fits the
    stars, and the block reduction gives another map; a bad factor or reduction, or a
    literature cube, is refused before any work."""
    from dustjax.vnet import normalisation

    monkeypatch.setattr(normalisation, "load_model_predictor", lambda model: _FakeHat())
    summaries = []
    for factor in (1, 2):
        out = tmp_path / f"out{factor}"
        _run(out, refine=True, refine_corr_length=2.0, refine_grid_factor=factor,
             demo_stars=2000, write_fits=False)  # fmt: skip
        summaries.append(json.loads((out / "summary.json").read_text())["refined"])
    on_grid, info = summaries
    assert on_grid["grid_factor"] == 1 and info["grid_factor"] == 2
    assert info["reduction"] == "regrid" and "reduction" not in on_grid
    out = tmp_path / "block"
    _run(out, refine=True, refine_corr_length=2.0, refine_grid_factor=2, demo_stars=2000,
         write_fits=False, refine_reduction="block")  # fmt: skip
    block = json.loads((out / "summary.json").read_text())["refined"]
    assert block["reduction"] == "block"
    assert block["dust_sum_refined"] != pytest.approx(info["dust_sum_refined"], rel=1e-6)
    with pytest.raises(ap.ApplyError, match="refine_reduction"):
        _run(tmp_path / "r", refine=True, refine_grid_factor=2, refine_reduction="median")
    assert info["dust_sum_refined"] > 0.0
    assert info["dust_sum_refined"] != pytest.approx(on_grid["dust_sum_refined"], rel=1e-4)
    before, after = info["consistency_network"], info["consistency_refined"]
    assert abs(after["median_difference_mag"]) < abs(before["median_difference_mag"])
    with pytest.raises(ap.ApplyError, match="positive integer"):
        _run(tmp_path / "b", refine=True, refine_grid_factor=0)
    with pytest.raises(ap.ApplyError, match="literature cube"):
        make_map(None, "SR", tmp_path / "c", literature_cube="x.fits", refine=True,
                 refine_grid_factor=3)  # fmt: skip
    assert not any((tmp_path / d).exists() for d in "bcr")


def test_refine_is_refused_without_a_variance_head_or_with_nnls(tmp_path, zero_model, monkeypatch):
    from dustjax.vnet import normalisation

    monkeypatch.setattr(normalisation, "load_model_predictor", lambda model: _FakeHat(False))
    with pytest.raises(ap.ApplyError, match="variance head"):
        _run(tmp_path / "a", refine=True)
    assert not (tmp_path / "a" / "summary.json").exists()
    with pytest.raises(ap.ApplyError, match="--method=vnet"):
        make_map(None, "SR", tmp_path / "b", catalog="demo", method="nnls", refine=True)
    assert not (tmp_path / "b").exists()


def test_an_ensemble_of_models_writes_the_mean_of_their_maps(tmp_path, monkeypatch):
    """--model=a,b: each member loaded as one model is, the map written is the mean of the two
    members' maps (here constant: 1e-3 and 3e-3 mag/pc -> 2e-3), the summary names both; a
    workdir named twice, or members trained on other regions, are refused before any work;
    --refine with an ensemble refines from the members' joint prior."""
    import numpy as np
    from astropy.io import fits

    from dustjax.vnet import normalisation

    value = {"a": 1e-3, "b": 3e-3}
    monkeypatch.setattr(ap, "model_region", lambda model: REGION)

    def load_predictor(model, region, symmetry="none"):
        return (lambda e: jnp.full_like(e, value[model])), region, None

    monkeypatch.setattr(ap, "load_predictor", load_predictor)
    make_map("a,b", "SR", tmp_path / "out", catalog="demo", demo_stars=300, num_redraws=0,
             plots=False)  # fmt: skip
    with fits.open(tmp_path / "out" / "density.fits") as hdul:
        density = np.asarray(hdul[0].data, np.float64)
    np.testing.assert_allclose(density, 2e-3, rtol=1e-6)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model_workdir"] == ["a", "b"]
    with pytest.raises(ap.ApplyError, match="twice"):
        make_map("a,a", "SR", tmp_path / "x", catalog="demo", plots=False)
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr(ap, "model_region", lambda m: REGION if m == "a" else REGION.with_shape(
        (16, 16, 16)))  # fmt: skip
    with pytest.raises(ap.ApplyError, match="trained on cubes of"):
        ap.load_ensemble_predictor(["a", "b"])
    monkeypatch.setattr(ap, "model_region", lambda model: REGION)
    monkeypatch.setattr(normalisation, "load_model_predictor", lambda model: _FakeHat())
    make_map("a,b", "SR", tmp_path / "r", catalog="demo", demo_stars=2000, num_redraws=0,
             plots=False, refine=True, refine_corr_length=2.0)  # fmt: skip
    info = json.loads((tmp_path / "r" / "summary.json").read_text())["refined"]
    assert info["dust_sum_refined"] > 0 and info["dust_sum_network"] > 0
