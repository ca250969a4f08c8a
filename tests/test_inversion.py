"""The NNLS baseline: recovery, non-negativity, the gradient, the regularised limit, operators."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import catalog as cat
from dustjax import inversion as inv
from dustjax import maps
from dustjax.geometry import Region
from dustjax.los import los_operator

SMALL = Region.named("SR").with_shape((4, 4, 4))  # 64 cells of 48 pc


def _density(region, seed=0):
    rng = np.random.default_rng(seed)
    return (1e-3 * np.exp(rng.normal(0, 1, region.shape))).astype(np.float32)


def test_noise_free_density_is_recovered():
    op = los_operator(SMALL)
    rho = _density(SMALL)
    e = op(rho)
    out = inv.solve_nnls(op, e, num_steps=20000)
    np.testing.assert_allclose(np.asarray(op(out)), np.asarray(e), rtol=1e-4, atol=1e-7)
    assert np.max(np.abs(np.asarray(out) - rho)) < 1e-3 * rho.max()


def test_solution_is_non_negative_and_meets_the_kkt_conditions():
    # Extinction that decreases with distance along some lines of sight: no exact rho >= 0.
    op = los_operator(SMALL)
    rng = np.random.default_rng(1)
    e = np.asarray(op(_density(SMALL))) + rng.normal(0, 0.05, SMALL.shape).astype(np.float32)
    plain = np.linalg.lstsq(op.todense(), e.ravel(), rcond=None)[0]
    assert plain.min() < 0  # the unconstrained solution goes negative: the constraint binds
    out = inv.solve_nnls(op, e, num_steps=20000)
    assert float(out.min()) >= 0.0
    g = np.asarray(inv.gradient(op, out, jnp.asarray(e)))
    active = np.asarray(out) == 0
    assert active.any()
    scale = np.abs(g).max()
    assert np.all(g[active] > -1e-3 * scale)  # no descent direction into rho < 0 is left
    assert np.all(np.abs(g[~active]) < 1e-3 * scale)  # stationary where free


@pytest.mark.parametrize("regulariser", inv.REGULARISERS)
def test_gradient_is_the_transpose_of_the_residual(regulariser):
    op = los_operator(SMALL)
    rho = jnp.asarray(_density(SMALL, 2))
    e = jnp.asarray(_density(SMALL, 3)) * 100.0
    for lam in (0.0, 3.7):
        auto = jax.grad(lambda r, lam=lam: inv.objective(op, r, e, lam, regulariser))(rho)
        hand = inv.gradient(op, rho, e, lam, regulariser)
        np.testing.assert_allclose(np.asarray(hand), np.asarray(auto), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(inv.gradient(op, rho, e)), np.asarray(op.T(op(rho) - e)), rtol=1e-6
    )


def test_regularised_solution_tends_to_the_plain_one():
    op = los_operator(SMALL)
    e = op(_density(SMALL, 4))
    plain = np.asarray(inv.solve_nnls(op, e, num_steps=20000))
    gaps = []
    for w in (1e-1, 1e-3, 1e-5, 1e-7):  # A^T A's condition number here is ~4e3
        reg = np.asarray(inv.solve_nnls(op, e, smoothness=w, num_steps=20000))
        gaps.append(np.abs(reg - plain).max() / plain.max())
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[0] > 0.1 and gaps[3] < 1e-3


def test_star_operator_is_the_exact_integral_and_its_transpose_the_adjoint():
    region = Region.named("SR").with_shape((8, 8, 8))
    rng = np.random.default_rng(5)
    xyz = rng.uniform(region.lower_pc, region.upper_pc, (300, 3))
    xyz[:3] = [[-250.0, 0.0, 0.0], [-10.0, 120.0, 5.0], [-100.0, 5.0, -300.0]]  # leave the box
    rho = _density(region, 6)
    op = inv.star_operator(region, xyz, chunk=64)
    ref = maps.integrate_cartesian(rho, region.lower_pc, region.cell_size_pc, xyz)
    np.testing.assert_allclose(np.asarray(op(rho)), np.asarray(ref), rtol=1e-5, atol=1e-7)
    centres = region.cell_centres_pc().reshape(-1, 3)
    at_centres = inv.star_operator(region, centres)(rho)
    np.testing.assert_allclose(
        np.asarray(at_centres), np.asarray(los_operator(region)(rho)).ravel(), rtol=1e-5
    )
    y = rng.normal(size=300).astype(np.float32)
    lhs = float(jnp.vdot(op(rho), y))
    rhs = float(jnp.vdot(jnp.asarray(rho), op.T(y)))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_catalogue_inversion_recovers_the_density_from_stars():
    rho = _density(SMALL, 7)
    rng = np.random.default_rng(8)
    xyz = np.concatenate(
        [
            SMALL.cell_centres_pc().reshape(-1, 3),
            rng.uniform(SMALL.lower_pc, SMALL.upper_pc, (500, 3)),
        ]
    )
    e = np.asarray(maps.integrate_cartesian(rho, SMALL.lower_pc, SMALL.cell_size_pc, xyz))
    catalog = cat.StarCatalog.from_arrays(
        xyz_pc=xyz, extinction=e, sigma_extinction=np.full(len(e), 0.01)
    )
    out = inv.invert_catalog(catalog, SMALL, num_steps=20000)
    assert out.min() >= 0
    assert np.max(np.abs(out - rho)) < 0.01 * rho.max()


def test_predictor_solves_a_batch_and_clips_negative_input():
    op = los_operator(SMALL)
    rho = np.stack([_density(SMALL, 9), 2 * _density(SMALL, 10)])
    e = np.asarray(op(rho))
    predict = inv.nnls_predictor(SMALL, smoothness=0.0, num_steps=20000)
    out = np.asarray(jax.jit(predict)(jnp.asarray(e)))
    assert out.shape == rho.shape
    np.testing.assert_allclose(out, rho, atol=1e-3 * rho.max())
    zero = np.asarray(predict(-jnp.ones((1, *SMALL.shape))))
    assert np.all(zero == 0)


def test_default_smoothness_depends_on_the_input():
    lit = inv.nnls_predictor(SMALL, input_kind="literature", num_steps=10)
    cat_ = inv.nnls_predictor(SMALL, num_steps=10)
    assert lit.nnls_settings["smoothness"] == inv.DEFAULT_SMOOTHNESS["literature"]
    assert cat_.nnls_settings["smoothness"] == inv.DEFAULT_SMOOTHNESS["catalogue"]
    with pytest.raises(ValueError, match="input_kind"):
        inv.nnls_predictor(SMALL, input_kind="exact")


def test_bad_settings_are_refused():
    op = los_operator(SMALL)
    with pytest.raises(ValueError, match="regulariser"):
        inv.solve_nnls(op, jnp.zeros(SMALL.shape), regulariser="lasso")
    with pytest.raises(ValueError, match="smoothness"):
        inv.solve_nnls(op, jnp.zeros(SMALL.shape), smoothness=-1.0)
