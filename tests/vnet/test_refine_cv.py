"""Choosing the catalogue refinement by held-out stars (dustjax.vnet.refine_cv)."""

import math

import numpy as np
import pytest
from catalogue_helpers import uniform_catalogue

from dustjax.geometry import Region
from dustjax.vnet import refine, refine_cv

REGION = Region((-48.0, -48.0, -48.0), (48.0, 48.0, 48.0), (8, 8, 8))
CANDIDATES = "none,0:1,1:0.3,2:0.3:auto"


def _truth(seed):
    rng = np.random.default_rng(seed)
    return (rng.lognormal(-6.0, 1.0, REGION.shape) * (rng.random(REGION.shape) < 0.8)).astype(
        np.float32
    )


def _catalogue(truth, n, seed, sigma_a, sigma_b=0.0):
    return uniform_catalogue(truth, REGION, n, seed, sigma_a, sigma_b)


def test_an_exact_prior_is_kept_when_the_stars_only_add_noise():
    """The prior is the truth; the stars are noisy (sigma 0.1 mag against extinctions of ~0.2):
    a refinement can only move the map away from the truth, so no candidate may beat no
    refinement beyond the held-out noise, and the final map is the prior itself."""
    truth = _truth(1)
    s = (0.5 * truth + 1e-4).astype(np.float32)
    catalog = _catalogue(truth, 3000, 2, sigma_a=0.1)
    rho, report = refine_cv.refine_cv(catalog, truth, s, REGION, CANDIDATES, seed=3,
                                      num_steps=200)  # fmt: skip
    assert report["chosen"] == "none", report["table"]
    np.testing.assert_array_equal(rho, truth)
    assert [r["name"] for r in report["table"]] == ["none", "0:1", "1:0.3", "2:0.3:auto"]
    assert report["num_heldout"] == 450 and report["num_fit"] == 2550


def test_a_biased_prior_is_refined_when_the_stars_are_precise():
    """The prior is the truth times 0.4 with a band that allows the truth; precise stars. A
    refinement predicts the held-out stars far better (beyond the gate), is chosen, and the final
    map (refitted on all stars) is closer to the truth than the prior."""
    truth = _truth(4)
    m = (0.4 * truth).astype(np.float32)
    s = (0.6 * truth + 1e-4).astype(np.float32)
    catalog = _catalogue(truth, 3000, 5, sigma_a=0.005, sigma_b=0.02)
    maps: dict = {}
    rho, report = refine_cv.refine_cv(catalog, m, s, REGION, CANDIDATES, seed=6, num_steps=300,
                                      maps=maps)  # fmt: skip
    assert report["chosen"] != "none", report["table"]
    row = next(r for r in report["table"] if r["name"] == report["chosen"])
    assert row["diff_vs_none"] < -report["gate"] * row["diff_se"]
    err = lambda p: float(np.mean((p - truth) ** 2))  # noqa: E731
    assert err(rho) < 0.3 * err(m)
    # the final map is the chosen setting refitted on all the stars, not the CV fit
    ell, nu, *tau = report["chosen_setting"]
    own = refine.refine_catalog(catalog, m, s, REGION, corr_length=ell, nugget=nu,
                                model_error=tau[0] if tau else 0.0, num_steps=300)  # fmt: skip
    np.testing.assert_allclose(rho, own, rtol=1e-5, atol=1e-9)
    assert not np.array_equal(maps[report["chosen"]], rho)


def test_the_choice_is_deterministic_given_the_seed():
    truth = _truth(7)
    m = (0.7 * truth).astype(np.float32)
    s = (0.5 * truth + 1e-4).astype(np.float32)
    catalog = _catalogue(truth, 1000, 8, sigma_a=0.02)
    a = refine_cv.cross_validate(catalog, m, s, REGION, "1:0.3", seed=9, num_steps=100)
    b = refine_cv.cross_validate(catalog, m, s, REGION, "1:0.3", seed=9, num_steps=100)
    drop = lambda t: [{k: v for k, v in r.items() if k != "seconds"} for r in t]  # noqa: E731
    assert drop(a["table"]) == drop(b["table"]) and a["chosen"] == b["chosen"]
    c = refine_cv.cross_validate(catalog, m, s, REGION, "1:0.3", seed=10, num_steps=100)
    assert drop(c["table"]) != drop(a["table"])
    mask = refine_cv.holdout_mask(1000, 0.2, 9)
    assert mask.sum() == 200 and np.array_equal(mask, refine_cv.holdout_mask(1000, 0.2, 9))


def test_held_out_stars_have_no_say_in_the_fit():
    """Stars outside ``fit_rows`` carry weight 0: replacing their extinctions by nonsense leaves
    the refined map (auto model error included) unchanged; all rows is no mask at all."""
    truth = _truth(11)
    m = (0.6 * truth).astype(np.float32)
    s = (0.5 * truth + 1e-4).astype(np.float32)
    catalog = _catalogue(truth, 1500, 12, sigma_a=0.01)
    keep = ~refine_cv.holdout_mask(len(catalog), 0.2, 0)
    from dustjax.catalog import StarCatalog

    e = np.where(keep, catalog.extinction, 50.0)
    spoiled = StarCatalog.from_arrays(
        xyz_pc=catalog.xyz_pc, extinction=e, sigma_extinction=catalog.sigma_extinction,
        region=REGION,
    )  # fmt: skip
    kw = dict(corr_length=1.0, nugget=0.3, model_error="auto", num_steps=150)
    a = refine.refine_catalog(catalog, m, s, REGION, fit_rows=keep, **kw)
    b = refine.refine_catalog(spoiled, m, s, REGION, fit_rows=keep, **kw)
    np.testing.assert_array_equal(a, b)
    full = refine.refine_catalog(catalog, m, s, REGION, **kw)
    np.testing.assert_array_equal(
        refine.refine_catalog(catalog, m, s, REGION, fit_rows=np.ones(len(catalog), bool), **kw),
        full,
    )
    with pytest.raises(ValueError, match="fit_rows"):
        refine.refine_catalog(catalog, m, s, REGION, fit_rows=keep[:10], **kw)


def test_the_scores_are_the_gaussian_predictive_density_and_the_pulls():
    sc = refine_cv.star_scores([1.0, 3.0], [0.5, 1.0], [2.0, 2.0], tau=0.5)
    var = np.array([0.25 + 1.0, 1.0 + 1.0])
    np.testing.assert_allclose(sc["nlpd"], 0.5 / var + 0.5 * np.log(2 * math.pi * var))
    np.testing.assert_allclose(sc["pull"], [-2.0, 1.0])
    np.testing.assert_allclose(sc["chi2"], [4.0, 1.0])


def test_bad_input_gives_one_clear_error():
    assert refine_cv.parse_candidates("2:0.3:auto,0:1") == ("none", (2.0, 0.3, "auto"), (0.0, 1.0))
    assert refine_cv.setting_name((2.0, 0.3, "auto")) == "2:0.3:auto"
    with pytest.raises(ValueError, match="twice"):
        refine_cv.parse_candidates("2:0.3,2:0.3")
    with pytest.raises(ValueError, match="ELL:NU"):
        refine_cv.parse_candidates("2")
    with pytest.raises(ValueError, match="holdout"):
        refine_cv.holdout_mask(1000, 0.0, 0)
    with pytest.raises(ValueError, match="at least 10"):
        refine_cv.holdout_mask(50, 0.1, 0)
    truth = _truth(13)
    catalog = _catalogue(truth, 200, 14, sigma_a=0.01)
    with pytest.raises(ValueError, match="criterion"):
        refine_cv.cross_validate(catalog, truth, truth + 1e-4, REGION, "1:0.3", criterion="mse")
    with pytest.raises(ValueError, match="gate"):
        refine_cv.cross_validate(catalog, truth, truth + 1e-4, REGION, "1:0.3", gate=-1.0)


def test_sky_patches_are_held_out_whole_and_counted_as_units():
    """Blocked hold-out: no patch has stars on both sides, about the asked fraction is out, and
    the paired standard error counts patches (for single-star groups it is std / sqrt(n))."""
    truth = _truth(15)
    catalog = _catalogue(truth, 4000, 16, sigma_a=0.01)
    groups = refine_cv.sky_patches(catalog, REGION, 2.0)
    mask = refine_cv.holdout_patches(groups, 0.2, 0)
    assert not set(groups[mask]) & set(groups[~mask])
    assert 0.2 <= mask.mean() < 0.3 and len(set(groups)) > 20
    d = np.random.default_rng(0).standard_normal(500)
    assert refine_cv.paired_se(d, np.arange(500)) == pytest.approx(d.std(ddof=1) / math.sqrt(500))
    # a patch of 5 identical values is one unit: the error of 100 patch means, not 500 stars
    d5 = np.repeat(d[:100], 5)
    se = refine_cv.paired_se(d5, np.repeat(np.arange(100), 5))
    assert se == pytest.approx(d[:100].std(ddof=1) / math.sqrt(100), rel=1e-9)
    report = refine_cv.cross_validate(catalog, truth, truth + 1e-4, REGION, "1:0.3",
                                      block_cells=2.0, num_steps=50)  # fmt: skip
    assert report["num_heldout_units"] < report["num_heldout"]
    with pytest.raises(ValueError, match="block_cells"):
        refine_cv.cross_validate(catalog, truth, truth + 1e-4, REGION, "1:0.3", block_cells=-1)
