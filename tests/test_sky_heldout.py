"""tools.sky_heldout --save_arrays: the file holds what a CPU refinement study needs, and its
stars are the draw that made its gridded cube."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.training.workdir import CONFIG_FILE, config_to_dict
from dustjax.vnet import normalisation as nz


class _Stub:
    """A "network" with a variance head: mu = 3 x - 2, log sigma = -1 (deterministic)."""

    def apply(self, variables, x, train=False):
        return jnp.concatenate([3.0 * x - 2.0, jnp.full_like(x, -1.0)], -1)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from dustjax.configs.vnet_sky_test import get_config

    config = get_config()
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / CONFIG_FILE).write_text(json.dumps(config_to_dict(config)))
    pred = nz.ModelPredictor(_Stub(), {}, nz.normalisation_of(config), num_outputs=2,
                             sigma_scale=1.5)  # fmt: skip
    monkeypatch.setattr(nz, "load_model_predictor", lambda workdir: pred)
    return wd, pred


def test_save_arrays_round_trips_and_its_stars_grid_to_its_cube(workdir, tmp_path):
    from dustjax.vnet import gridding
    from dustjax.vnet.observe import grid_eq5
    from tools import sky_heldout

    wd, pred = workdir
    path = tmp_path / "a" / "held.npz"
    res = sky_heldout.main([f"--model={wd}", "--num_cubes=3", "--batch_size=2",
                            "--num_stars=400", "--distance_error=0.05",
                            f"--save_arrays={path}", f"--out={tmp_path / 'h.json'}"])  # fmt: skip
    assert res["arrays"] == str(path)
    arrays, meta = sky_heldout.read_arrays(path)
    region = meta["region"]
    cubes = (3, *region.shape)
    for key in ("truth", "exact", "observed", "lit_mu_hat", "lit_sigma_hat", "cat_mu_hat",
                "cat_sigma_hat"):  # fmt: skip
        assert arrays[key].shape == cubes and arrays[key].dtype == np.float32, key
    assert arrays["star_xyz_obs"].shape == (3, 400, 3) and arrays["star_valid"].dtype == bool
    assert meta["normalisation"] == pred.normalisation and meta["k"] == 3
    # the saved hats are the model's on the saved inputs (calibrated sigma included)
    mu, sigma = pred.predict_hat(jnp.asarray(arrays["observed"]))
    np.testing.assert_allclose(arrays["cat_mu_hat"], np.asarray(mu), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays["cat_sigma_hat"], 1.5 * np.exp(-1.0), rtol=1e-6)
    m, s = sky_heldout.prior_of(arrays, meta, "cat", 0)
    assert m.shape == region.shape and np.all(s > 0)
    for i in range(3):
        # grid_eq5 of the saved stars reproduces the saved cube (the same draw) ...
        cube, _ = grid_eq5(
            jnp.asarray(arrays["star_xyz_obs"][i]), jnp.asarray(arrays["star_extinction"][i]),
            jnp.asarray(arrays["star_sigma_extinction"][i]), jnp.asarray(arrays["star_valid"][i]),
            region, meta["k"], cap=meta["cap"], select=meta["select"],
        )  # fmt: skip
        np.testing.assert_allclose(np.maximum(np.asarray(cube), 0), arrays["observed"][i],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        # ... and so does the numpy gridding of the catalogue built from them (apply's route)
        catalog = sky_heldout.catalogue_of(arrays, meta, i)
        assert len(catalog) == int(arrays["star_valid"][i].sum()) and len(catalog) > 300
        assert catalog.sigma_distance is not None  # f > 0 was drawn
        numpy_cube = np.maximum(gridding.grid_extinction(region, catalog), 0)
        assert np.mean(np.isclose(numpy_cube, arrays["observed"][i], rtol=1e-4, atol=1e-6)) > 0.97
    # the truth and the exact cube agree with the scores' inputs
    np.testing.assert_array_less(-1e-9, arrays["truth"])
    assert jax.numpy.all(jnp.asarray(arrays["exact"]) >= 0)


def test_save_arrays_skips_the_stars_of_a_large_catalogue(workdir, tmp_path):
    from tools import sky_heldout

    wd, _ = workdir
    path = tmp_path / "held.npz"
    sky_heldout.main([f"--model={wd}", "--num_cubes=2", "--num_stars=400",
                      "--save_max_stars=500", f"--save_arrays={path}",
                      f"--out={tmp_path / 'h.json'}"])  # fmt: skip
    arrays, meta = sky_heldout.read_arrays(path)
    assert "star_xyz_obs" not in arrays and meta["stars_saved"] is False
    assert arrays["observed"].shape[0] == 2
    with pytest.raises(ValueError, match="no stars"):
        sky_heldout.catalogue_of(arrays, meta, 0)


def test_refine_heldout_scores_the_variants_from_the_file(workdir, tmp_path):
    from dustjax.vnet import realsky
    from tools import refine_heldout, sky_heldout

    wd, _ = workdir
    path = tmp_path / "held.npz"
    held = sky_heldout.main([f"--model={wd}", "--num_cubes=2", "--num_stars=600",
                             "--refine_corr=1.5:0.2", "--refine_grid=1,2",
                             f"--save_arrays={path}", f"--out={tmp_path / 'h.json'}"])  # fmt: skip
    res = refine_heldout.main([f"--arrays={path}", "--variants=vnet,indep,corr:1.5:0.2,smooth:3",
                               "--num_steps=50", f"--out={tmp_path / 'r.json'}"])  # fmt: skip
    # the device-side score (sky_heldout --refine_corr, 1,000 steps) is the CPU one from the file
    again = refine_heldout.main([f"--arrays={path}", "--variants=corr:1.5:0.2,fine:2:1.5:0.2",
                                 f"--out={tmp_path / 'r2.json'}"])  # fmt: skip
    # the finer grid too: the device's --refine_grid=2 is refine_heldout's fine:2
    pairs = (("corr:1.5:0.2", "corr_1.5_0.2"), ("fine:2:1.5:0.2", "corr_1.5_0.2_x2"))
    for i in range(2):
        for variant, name in pairs:
            assert again["per_cube"][variant][i]["skill"] == pytest.approx(
                held["per_cube"][f"catalogue_vnet_refined_{name}"][i]["skill"], abs=1e-4
            )
    assert set(res["summary"]) == {"vnet", "indep", "corr:1.5:0.2", "smooth:3"}
    arrays, meta = sky_heldout.read_arrays(path)
    m, _ = sky_heldout.prior_of(arrays, meta, "cat", 1)  # "vnet" is the prior's median map
    want = realsky.scores(m, arrays["truth"][1], meta["region"])["skill"]
    assert res["per_cube"]["vnet"][1]["skill"] == pytest.approx(want, rel=1e-6)
    assert all(np.isfinite(v["pooled_skill"]) for v in res["summary"].values())
    oracle = refine_heldout.main([f"--arrays={path}", "--variants=vnet", "--prior_mean=truth",
                                  f"--plot={tmp_path / 'o.png'}",
                                  f"--out={tmp_path / 'o.json'}"])  # fmt: skip
    assert (tmp_path / "o_cube0.png").stat().st_size > 0 and (tmp_path / "o_cube1.png").exists()
    assert [r["skill"] for r in oracle["per_cube"]["vnet"]] == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="variant"):
        refine_heldout.parse_variant("corr:2")
    assert refine_heldout.parse_variant("fine:2:1.5:0.2:block:auto") == dict(
        kind="fine", factor=2, corr_length=1.5, nugget=0.2, reduction="block", model_error="auto"
    )
    # sub-cell structure: the truth is the fine cube's block means (the saved cube) or the fine
    # cube regridded as the real-sky truth is
    from dustjax.vnet import refine

    for how in ("block", "regrid"):
        ((region, case),) = list(refine_heldout.cases_from_heldout(path, 1, 1.0, how))
        fine, _ = refine_heldout.subcell_cube(arrays["truth"][0], 1.0, np.random.default_rng(0))
        want = arrays["truth"][0] if how == "block" else refine.to_region(fine, region, 2, how)
        np.testing.assert_allclose(case[4], want, rtol=1e-6)
    with pytest.raises(ValueError, match="subcell_truth"):
        list(refine_heldout.cases_from_heldout(path, 1, 1.0, "mean"))


def test_error_correlation_finds_the_length_and_nugget_of_a_known_field():
    """Gaussian-filtered white noise (filter sd f) has correlation exp(-d^2 / (4 f^2)): ell =
    sqrt(2) f; adding independent noise of variance v / (1 + v) of the total gives nugget v."""
    from scipy.ndimage import gaussian_filter

    from tools.refine_heldout import error_correlation

    rng = np.random.default_rng(0)
    smooth = np.stack([gaussian_filter(rng.standard_normal((32,) * 3), 2.0, mode="wrap")
                       for _ in range(3)])  # fmt: skip
    smooth /= smooth.std()
    u = smooth + np.sqrt(0.25) * rng.standard_normal(smooth.shape)  # nugget 0.25 / 1.25 = 0.2
    res = error_correlation(u, np.zeros_like(u), np.ones_like(u))
    assert res["fit_corr_length"] == pytest.approx(2.0 * np.sqrt(2.0), rel=0.15)
    assert res["fit_nugget"] == pytest.approx(0.2, abs=0.05)
    assert res["correlation"][0] == 1.0


def test_subcell_cube_keeps_every_cells_mean_and_adds_structure_inside():
    from tools.refine_heldout import subcell_cube

    truth = np.random.default_rng(1).lognormal(-7, 1, (4, 5, 6))
    fine, factor = subcell_cube(truth, 1.0, np.random.default_rng(2))
    assert fine.shape == (8, 10, 12) and factor == 2.0 and np.all(fine >= 0)
    blocks = fine.reshape(4, 2, 5, 2, 6, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(blocks, truth, rtol=1e-12)
    assert np.std(fine / np.repeat(np.repeat(np.repeat(truth, 2, 0), 2, 1), 2, 2)) > 0.5
