"""The physics refinement (dustjax.vnet.refine): its limits and its optimality conditions."""

import numpy as np
import pytest

from dustjax import inversion
from dustjax.geometry import Region
from dustjax.los import los_operator
from dustjax.vnet import refine

REGION = Region((-40.0, -40.0, -40.0), (40.0, 40.0, 40.0), (8, 8, 8))


def _truth(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.lognormal(-7.0, 1.0, REGION.shape) * (rng.random(REGION.shape) < 0.7)).astype(
        np.float32
    )


def test_a_tight_prior_returns_the_prior_and_no_prior_is_nnls():
    truth = _truth()
    e = np.asarray(los_operator(REGION)(truth))
    guess = np.full(REGION.shape, 1e-3, np.float32)
    tight = refine.refine_cube(e, guess, np.full(REGION.shape, 1e-9), REGION, num_steps=50)
    np.testing.assert_allclose(tight, guess, rtol=1e-4)
    free = refine.refine_cube(e, guess, np.full(REGION.shape, np.inf), REGION, sigma_floor=1.0)
    op = los_operator(REGION)
    nnls = np.asarray(inversion.solve_nnls(op, e, x0=np.maximum(guess, 0)))
    np.testing.assert_allclose(free, nnls, rtol=1e-3, atol=1e-7)


def test_the_map_point_satisfies_its_optimality_conditions():
    """KKT of min 1/2 |W(A x - E)|^2 + 1/2 sum ((x - m)/s)^2, x >= 0: the gradient g is 0 where
    x > 0 and >= 0 where x = 0, checked with an independent gradient (jax.grad of the objective)."""
    import jax
    import jax.numpy as jnp

    truth = _truth(1)
    op = los_operator(REGION)
    e = np.asarray(op(truth)) + 0.002 * np.random.default_rng(2).standard_normal(REGION.shape)
    m = np.maximum(truth * 1.5 - 2e-4, 0).astype(np.float32)
    s = np.full(REGION.shape, 5e-4, np.float32)
    x = refine.refine_cube(e, m, s, REGION, sigma_floor=0.01, num_steps=4000)

    def f(x):
        r = (op(x) - e) / 0.01
        return 0.5 * jnp.sum(r**2) + 0.5 * jnp.sum(((x - m) / s) ** 2)

    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    scale = np.abs(g).max() + np.abs(np.asarray(jax.grad(f)(jnp.asarray(m)))).max()
    assert np.all(x >= 0)
    pos = x > 1e-7
    assert np.max(np.abs(g[pos])) < 1e-3 * scale
    assert np.min(g[~pos], initial=0.0) > -1e-3 * scale
    # and it fits the data better than the prior alone, and is closer to the truth
    assert np.abs(np.asarray(op(x)) - e).mean() < np.abs(np.asarray(op(m)) - e).mean()
    assert np.abs(x - truth).mean() < np.abs(m - truth).mean()


def test_one_cell_has_the_closed_form_answer():
    """One row, one cell: x = (a e / sigma^2 + m / s^2) / (a^2 / sigma^2 + 1 / s^2)."""
    region = Region((0.0, -0.5, -0.5), (2.0, 0.5, 0.5), (1, 1, 1))  # Sun on a face
    a = float(np.asarray(los_operator(region).lengths_pc).sum())  # the cell's path length
    e, m, s, sig = 0.02, 0.005, 0.004, 0.01
    x = refine.refine_cube(
        np.full((1, 1, 1), e), np.full((1, 1, 1), m), np.full((1, 1, 1), s), region,
        sigma_floor=sig, num_steps=3000,
    )  # fmt: skip
    want = (a * e / sig**2 + m / s**2) / (a * a / sig**2 + 1 / s**2)
    np.testing.assert_allclose(float(x.ravel()[0]), want, rtol=1e-4)


def test_prior_from_hat_is_the_median_and_band_half_width():
    from dustjax.vnet.normalisation import Normalisation

    n = Normalisation("asinh", e0=0.05, rho0=1e-4)
    mu, sg = np.array([2.0, -3.0]), np.array([0.5, 0.1])
    m, s = refine.prior_from_hat(n, mu, sg)
    np.testing.assert_allclose(m[0], 1e-4 * np.sinh(2.0), rtol=1e-5)
    np.testing.assert_allclose(s[0], 0.5e-4 * (np.sinh(2.5) - np.sinh(1.5)), rtol=1e-5)
    assert m[1] == 0 and s[1] == pytest.approx(refine.MIN_PRIOR_SD)


def test_catalogue_refinement_uses_the_stars_and_their_distance_errors():
    from dustjax.catalog import StarCatalog

    truth = _truth(3)
    rng = np.random.default_rng(4)
    xyz = rng.uniform(-39, 39, (3000, 3))
    from dustjax.los import integrate_to_points

    edges = tuple(REGION.edges_pc(a) for a in range(3))
    e_true = np.asarray(integrate_to_points(truth, edges, xyz), np.float64)
    sigma = np.hypot(0.01, 0.05 * e_true)
    cat = StarCatalog.from_arrays(
        xyz_pc=xyz, extinction=e_true + sigma * rng.standard_normal(len(xyz)),
        sigma_extinction=sigma, sigma_distance=0.05 * np.linalg.norm(xyz, axis=1), region=REGION,
    )  # fmt: skip
    prior = np.full(REGION.shape, float(truth.mean()), np.float32)
    sd = np.full(REGION.shape, float(truth.std()), np.float32)
    eff = refine.star_sigma(cat, prior, REGION)
    np.testing.assert_allclose(eff, np.hypot(sigma, truth.mean() * cat.sigma_distance), rtol=1e-5)
    x = refine.refine_catalog(cat, prior, sd, REGION)
    err = lambda p: np.mean((p - truth) ** 2)  # noqa: E731
    assert err(x) < 0.7 * err(prior)
