"""The exact line-of-sight operator against analytic integrals and identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from dustjax.geometry import Region
from dustjax.los import SunOutsideRegionError, los_operator


@pytest.mark.parametrize("name", ["SR", "LR"])
def test_uniform_density_gives_rho_times_distance(name):
    region = Region.named(name)
    op = los_operator(region)
    rho = 0.013
    extinction = np.asarray(op(jnp.full(region.shape, rho, jnp.float32)))
    distance = np.linalg.norm(region.cell_centres_pc(), axis=-1)
    np.testing.assert_allclose(extinction, rho * distance, rtol=2e-6)


def test_sun_inside_a_region_with_cells_on_all_sides():
    region = Region((-50, -40, -30), (50, 40, 30), (10, 9, 7))
    op = los_operator(region)
    extinction = np.asarray(op(jnp.ones(region.shape)))
    np.testing.assert_allclose(extinction, np.linalg.norm(region.cell_centres_pc(), axis=-1), 1e-6)


def _clump_error(n):
    region = Region((-128, -64, -64), (0, 64, 64), (n, n, n))
    op = los_operator(region)
    centre, sigma, peak = np.array([-70.0, 10.0, -5.0]), 20.0, 0.02
    xyz = region.cell_centres_pc()
    density = peak * np.exp(-np.sum((xyz - centre) ** 2, -1) / (2 * sigma**2))
    extinction = np.asarray(op(jnp.asarray(density, jnp.float32)))
    # Analytic: along u = r/|r| the clump is peak exp(-p^2/2s^2) exp(-(t - t0)^2/2s^2), with
    # t0 = c.u and p^2 = |c|^2 - t0^2, integrated over t in [0, |r|] (error functions).
    r = np.linalg.norm(xyz, axis=-1)
    t0 = (xyz / r[..., None]) @ centre
    p2 = centre @ centre - t0**2
    s2 = np.sqrt(2) * sigma
    analytic = (
        peak
        * np.exp(-p2 / (2 * sigma**2))
        * sigma
        * np.sqrt(np.pi / 2)
        * (erf((r - t0) / s2) - erf(-t0 / s2))
    )
    return np.abs(extinction - analytic) / analytic.max()


def test_gaussian_clump_matches_the_error_function_integral():
    # The operator integrates the cube as piecewise constant per cell: exact for the cube, and
    # first-order accurate for a smooth field sampled at the cell centres (the transverse offset
    # of a cell centre from the ray). So the error is small and halves with the cell size.
    coarse, fine = _clump_error(32), _clump_error(64)
    assert np.median(fine) < 2e-4
    assert fine.max() < 0.02
    assert 0.35 < fine.max() / coarse.max() < 0.65


def test_adjoint_identity_and_linearity():
    region = Region.named("SR")
    op = los_operator(region)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (3, *region.shape), jnp.float32)
    y = jax.random.normal(ky, (3, *region.shape), jnp.float32)
    lhs = jnp.vdot(op(x), y)
    rhs = jnp.vdot(x, op.transpose(y))
    np.testing.assert_allclose(float(lhs), float(rhs), rtol=1e-5)
    # transpose agrees with JAX's own transpose of the linear map
    auto_t = jax.linear_transpose(op.apply, x)(y)[0]
    np.testing.assert_allclose(np.asarray(op.T(y)), np.asarray(auto_t), rtol=1e-5, atol=1e-3)


def test_jit_vmap_grad_and_dense_matrix_agree():
    region = Region((-20, -10, -10), (0, 10, 10), (4, 4, 4))
    op = los_operator(region)
    dense = op.todense()
    x = np.random.default_rng(1).uniform(size=(5, *region.shape)).astype(np.float32)
    expected = (x.reshape(5, -1) @ dense.T).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(jax.jit(op)(x)), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(op)(x)), expected, rtol=1e-5)
    w = np.random.default_rng(2).normal(size=region.shape).astype(np.float32)
    grad = jax.grad(lambda d: jnp.sum(op(d) * w))(jnp.asarray(x[0]))
    np.testing.assert_allclose(np.asarray(grad).ravel(), dense.T @ w.ravel(), rtol=1e-4, atol=1e-4)
    # each row's lengths add up to the distance of its cell centre
    np.testing.assert_allclose(
        dense.sum(1), np.linalg.norm(region.cell_centres_pc(), axis=-1).ravel(), rtol=1e-6
    )


def test_region_without_the_sun():
    region = Region((100, -10, -10), (120, 10, 10), (4, 4, 4))
    with pytest.raises(SunOutsideRegionError, match="outside"):
        los_operator(region)
    op = los_operator(region, allow_sun_outside=True)
    extinction = np.asarray(op(jnp.ones(region.shape)))
    # only the path inside the box counts: from its near face x = 100 to the cell centre
    xyz = region.cell_centres_pc()
    expected = np.linalg.norm(xyz, axis=-1) * (1 - 100.0 / xyz[..., 0])
    np.testing.assert_allclose(extinction, expected, rtol=1e-5)


def test_shape_mismatch_is_a_clear_error():
    op = los_operator(Region.named("SR"))
    with pytest.raises(ValueError, match=r"shape \(32, 32, 32\)"):
        op(jnp.ones((16, 16, 16)))
