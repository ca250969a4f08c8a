"""Warnings of the catalogue route: the fig.-11 consistency check and input unlike training."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import catalog as cat
from dustjax import maps
from dustjax.geometry import Region
from dustjax.vnet import apply as ap
from dustjax.vnet import checks

REGION = Region.named("SR").with_shape((8, 8, 8))


def _catalog(density, n=4000, sigma=0.02, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(REGION.lower_pc, REGION.upper_pc, (n, 3))
    e = np.asarray(maps.integrate_cartesian(density, REGION.lower_pc, REGION.cell_size_pc, xyz))
    return cat.StarCatalog.from_arrays(
        xyz_pc=xyz,
        extinction=e + sigma * rng.standard_normal(n),
        sigma_extinction=np.full(n, sigma),
    )


def _density():
    c = REGION.cell_centres_pc()
    r2 = np.sum((c - np.array([-100.0, 10.0, 0.0])) ** 2, axis=-1)
    return (0.002 + 0.01 * np.exp(-r2 / (2 * 40.0**2))).astype(np.float32)


def _oracle(cube):
    cube = jnp.asarray(cube)
    return lambda e: jnp.broadcast_to(cube, e.shape)


def test_a_consistent_map_raises_no_warning(caplog):
    truth = _density()
    catalog = _catalog(truth)
    with caplog.at_level(logging.WARNING):
        result = ap.run_catalog(catalog, REGION, _oracle(truth), num_redraws=0, progress=False)
    assert "consistency_warning" not in result.summary
    assert result.summary["consistency"]["fraction_within_1sigma"] > 0.6
    assert not [r for r in caplog.records if "consistency" in r.getMessage()]


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_map_that_misses_or_doubles_the_dust_is_flagged(caplog, factor):
    truth = _density()
    catalog = _catalog(truth)
    with caplog.at_level(logging.WARNING):
        result = ap.run_catalog(
            catalog, REGION, _oracle(factor * truth), num_redraws=0, progress=False
        )
    warning = result.summary["consistency_warning"]
    assert "median E_rho - E" in warning and "sigma_E" in warning
    assert any("consistency check" in r.getMessage() for r in caplog.records)


def test_consistency_thresholds_each_fire_alone():
    sig = 0.05
    ok = dict(num_stars=100, median_difference_mag=0.01, fraction_within_1sigma=0.65)
    assert checks.consistency_warning(ok, sig) is None
    assert checks.consistency_warning(dict(ok, median_difference_mag=-0.029), sig) is None
    biased = dict(ok, median_difference_mag=-0.04)  # 0.8 sigma
    assert "median E_rho - E = -0.040" in checks.consistency_warning(biased, sig)
    assert checks.consistency_warning(dict(ok, fraction_within_1sigma=0.46), sig) is None
    spread = dict(ok, fraction_within_1sigma=0.37)
    msg = checks.consistency_warning(spread, sig)
    assert "37 %" in msg and "median E_rho" not in msg
    assert checks.consistency_warning({}, sig) is None


CONFIG_LOOP = dict(
    data=dict(source="simulate_observed"),
    observation=dict(
        enabled=True,
        num_stars_range=[10_000, 100_000],
        sigma_a_range=[0.01, 0.08],
        sigma_b_range=[0.02, 0.10],
    ),
)


def test_a_model_without_the_observation_loop_is_warned_about_catalogues():
    catalog = _catalog(_density(), n=30_000, sigma=0.03)
    for config in (dict(data=dict(source="simulate")), dict(CONFIG_LOOP, data=dict(source="x"))):
        (msg,) = checks.training_mismatch_warnings(catalog, config)
        assert "without the observation loop" in msg
    assert checks.training_mismatch_warnings(catalog, CONFIG_LOOP) == []
    assert checks.training_mismatch_warnings(catalog, None) == []


def test_star_count_and_sigma_far_outside_training_are_named():
    few = _catalog(_density(), n=3000, sigma=0.03)
    (msg,) = checks.training_mismatch_warnings(few, CONFIG_LOOP)
    assert "3,000 stars" in msg and "10,000-100,000" in msg
    # 2x below the range's low end is still tolerated; 2.5x is not.
    assert (
        checks.training_mismatch_warnings(_catalog(_density(), n=5000, sigma=0.03), CONFIG_LOOP)
        == []
    )
    noisy = _catalog(_density(), n=30_000, sigma=0.5)
    (msg,) = checks.training_mismatch_warnings(noisy, CONFIG_LOOP)
    assert "median sigma_E 0.500 mag" in msg and "larger" in msg and "[0.01, 0.08]" in msg
    precise = _catalog(_density(), n=30_000, sigma=0.001)
    (msg,) = checks.training_mismatch_warnings(precise, CONFIG_LOOP)
    assert "smaller" in msg


def test_run_catalog_carries_the_input_warnings(caplog):
    truth = _density()
    catalog = _catalog(truth, n=3000)
    with caplog.at_level(logging.WARNING):
        result = ap.run_catalog(
            catalog,
            REGION,
            _oracle(truth),
            num_redraws=0,
            progress=False,
            model_config=dict(data=dict(source="simulate")),
        )
    assert "observation loop" in result.summary["input_warnings"][0]
    assert any("bad input" in r.getMessage() for r in caplog.records)
    plain = ap.run_catalog(catalog, REGION, _oracle(truth), num_redraws=0, progress=False)
    assert "input_warnings" not in plain.summary


def test_distance_errors_are_folded_into_the_check():
    # A dusty cube and 20 % distance errors: with sigma_E alone the true map looks inconsistent,
    # with sigma_eff = hypot(sigma_E, rho sigma_d) it does not.
    truth = 5 * _density()
    rng = np.random.default_rng(4)
    n = 4000
    xyz = rng.uniform(REGION.lower_pc, REGION.upper_pc, (n, 3))
    e = np.asarray(maps.integrate_cartesian(truth, REGION.lower_pc, REGION.cell_size_pc, xyz))
    factor = 1 + 0.2 * rng.standard_normal(n)
    sigma = 0.01
    catalog = cat.StarCatalog.from_arrays(
        xyz_pc=xyz * factor[:, None],
        extinction=e + sigma * rng.standard_normal(n),
        sigma_extinction=np.full(n, sigma),
        sigma_distance=0.2 * np.linalg.norm(xyz, axis=1),
        region=REGION,
    )
    _, check = ap.consistency(truth, REGION, catalog)
    assert check["fraction_within_1sigma"] < 0.5  # sigma_E alone: "inconsistent"
    assert check["fraction_within_1sigma_eff"] > 0.6
    assert checks.consistency_warning(check) is None
    plain = {k: v for k, v in check.items() if "_eff" not in k}
    assert checks.consistency_warning(plain) is not None
