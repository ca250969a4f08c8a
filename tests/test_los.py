"""Every line-of-sight integral (dustjax.los) against analytic integrals, identities, a frozen copy
of the pre-refactor algorithm, and each other (operator, points, eqs. 7-8, DustMap.query)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from dustjax import maps
from dustjax.geometry import Region, galactic_to_cartesian_np
from dustjax.los import (
    StarOperator,
    SunOutsideRegionError,
    apply_star_operator,
    exclusive_column_integral,
    integrate_to_points,
    los_operator,
)

SMALL = Region((-48.0, -24.0, -24.0), (0.0, 24.0, 24.0), (8, 8, 8), name="small")


def _density(region, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 0.02, region.shape).astype(np.float32)


def _frozen_crossings(targets, region):
    """The operator's numpy algorithm as it was before the one-kernel refactor (a frozen copy):
    dense ``(n, num_cells)`` path lengths of the segments from the origin to `targets`."""
    edges = [region.edges_pc(a) for a in range(3)]
    n = len(targets)
    ts = [np.zeros((n, 1)), np.ones((n, 1))]
    for axis in range(3):
        c = targets[:, axis : axis + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = edges[axis][None, :] / c
        ts.append(np.where(np.isfinite(t) & (t > 0.0) & (t < 1.0), t, 1.0))
    t = np.sort(np.concatenate(ts, axis=1), axis=1)
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    pos = mid[..., None] * targets[:, None, :]
    length = np.diff(t, axis=1) * np.linalg.norm(targets, axis=1, keepdims=True)
    shape = np.asarray(region.shape)
    cell = np.floor((pos - np.asarray(region.lower_pc)) / np.asarray(region.cell_size_pc))
    cell = cell.astype(np.int64)
    inside = np.all((cell >= 0) & (cell < shape), axis=-1)
    length = np.where(inside & (length > 0), length, 0.0)
    cell = np.clip(cell, 0, shape - 1)
    flat = np.ravel_multi_index((cell[..., 0], cell[..., 1], cell[..., 2]), tuple(shape))
    dense = np.zeros((n, int(np.prod(shape))))
    np.add.at(dense, (np.repeat(np.arange(n), flat.shape[1]), flat.ravel()), length.ravel())
    return dense


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


# ---- one kernel: cell centres (operator) and arbitrary points ----------------------------------
@pytest.mark.parametrize(
    "region",
    [
        Region((-50, -40, -30), (50, 40, 30), (10, 9, 7)),
        Region((-48.0, -24.0, -24.0), (0.0, 24.0, 24.0), (8, 8, 8)),
        Region((100, -10, -10), (120, 10, 10), (4, 4, 4)),
    ],
)
def test_operator_equals_the_frozen_algorithm(region):
    op = los_operator(region, allow_sun_outside=True)
    frozen = _frozen_crossings(region.cell_centres_pc().reshape(-1, 3), region)
    # the operator stores lengths in float32; the frozen dense matrix is float64
    np.testing.assert_allclose(op.todense(), frozen, rtol=1e-6, atol=1e-6)


def test_points_at_cell_centres_equal_the_operator():
    rho = _density(SMALL)
    centres = SMALL.cell_centres_pc().reshape(-1, 3)
    expect = np.asarray(los_operator(SMALL)(rho)).reshape(-1)
    for geometry in (SMALL, tuple(SMALL.edges_pc(a) for a in range(3))):
        direct = integrate_to_points(rho, geometry, centres, chunk=100)
        np.testing.assert_allclose(np.asarray(direct), expect, rtol=2e-5, atol=1e-7)


def test_points_at_random_stars_equal_the_frozen_algorithm():
    # Stars anywhere, including outside the cube (their path outside counts as zero).
    rng = np.random.default_rng(4)
    stars = rng.uniform(np.array(SMALL.lower_pc) - 20, np.array(SMALL.upper_pc) + 20, (300, 3))
    rho = _density(SMALL, seed=5)
    expect = _frozen_crossings(stars, SMALL) @ rho.ravel().astype(np.float64)
    got = np.asarray(integrate_to_points(rho, SMALL, stars, chunk=64))
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=1e-7)
    # the kept name of the same integral
    alias = maps.integrate_cartesian(rho, SMALL.lower_pc, SMALL.cell_size_pc, stars, chunk=64)
    np.testing.assert_array_equal(np.asarray(alias), got)


def test_points_uniform_and_two_slabs():
    rng = np.random.default_rng(1)
    pts = rng.uniform(SMALL.lower_pc, SMALL.upper_pc, (500, 3))
    rho = np.full(SMALL.shape, 0.01, np.float32)
    e = np.asarray(integrate_to_points(rho, SMALL, pts))
    np.testing.assert_allclose(e, 0.01 * np.linalg.norm(pts, axis=1), rtol=1e-5)
    # Dust only in X < -24 pc: the path beyond the plane X = -24 carries it.
    slab = np.zeros(SMALL.shape, np.float32)
    slab[:4] = 0.02
    e = np.asarray(integrate_to_points(slab, SMALL, pts))
    frac = np.clip(1.0 - (-24.0) / pts[:, 0], 0.0, None)  # fraction of the segment beyond X=-24
    np.testing.assert_allclose(e, 0.02 * frac * np.linalg.norm(pts, axis=1), rtol=1e-4, atol=1e-6)


def test_a_query_point_gets_one_answer_from_the_map_and_the_operator(tmp_path):
    astropy_units = pytest.importorskip("astropy.units")
    coordinates = pytest.importorskip("astropy.coordinates")
    rho = _density(SMALL, seed=7)
    path = maps.write_cartesian_map(tmp_path / "m.fits", SMALL, rho)
    cells = [(0, 0, 0), (2, 5, 7), (7, 3, 4), (4, 4, 4)]
    xyz = np.stack([SMALL.cell_centres_pc()[c] for c in cells])
    coords = coordinates.SkyCoord(
        coordinates.CartesianRepresentation(*(xyz.T * astropy_units.pc)), frame="galactic"
    ).transform_to("icrs")
    from_map = maps.DustMap.from_fits(path).query(coords, integrated=True)
    from_operator = np.asarray(los_operator(SMALL)(rho))[tuple(np.array(cells).T)]
    np.testing.assert_allclose(from_map, from_operator, rtol=2e-5)


# ---- eqs. 7-8 of the spherical grid ----------------------------------------------------------
def _star_operator(seed=0, shape=(3, 4, 6)):
    rng = np.random.default_rng(seed)
    widths = rng.uniform(5.0, 20.0, shape[2])
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    n = 40
    column = rng.integers(0, shape[0] * shape[1], n)
    cell = rng.integers(0, shape[2], n)
    partial = rng.uniform(0, 1, n) * widths[cell]
    op = StarOperator(
        flat_index=jnp.asarray((column * shape[2] + cell).astype(np.int32)),
        partial_pc=jnp.asarray(partial.astype(np.float32)),
        d_widths_pc=jnp.asarray(widths.astype(np.float32)),
        full_shape=shape,
    )
    return op, edges, column, cell, partial


def test_eqs_7_8_against_an_explicit_sum_and_the_dense_matrix():
    op, edges, column, cell, partial = _star_operator()
    rho = np.random.default_rng(1).uniform(0, 0.01, op.full_shape)
    cols = rho.reshape(-1, op.full_shape[2])
    widths = np.diff(edges)
    explicit = [
        np.sum(cols[c, :j] * widths[:j]) + cols[c, j] * p
        for c, j, p in zip(column, cell, partial, strict=True)
    ]
    np.testing.assert_allclose(np.asarray(op(jnp.asarray(rho, jnp.float32))), explicit, rtol=1e-5)
    np.testing.assert_allclose(op.todense() @ rho.ravel(), explicit, rtol=1e-5)
    # the host (numpy float64) route of DustMap.query is the same sum, to float64 precision
    host = apply_star_operator(rho, np.asarray(op.flat_index), partial, widths, xp=np)
    assert host.dtype == np.float64
    np.testing.assert_allclose(host, explicit, rtol=1e-12)
    # the exclusive integral is the extinction to each cell's near edge
    to_edge = exclusive_column_integral(rho, widths, xp=np)
    np.testing.assert_allclose(to_edge[..., 0], 0.0)
    np.testing.assert_allclose(to_edge[..., -1], np.sum(rho[..., :-1] * widths[:-1], -1))


def test_spherical_map_query_equals_the_star_operator():
    # DustMap.query on an (l, b, d) map integrates through eqs. 7-8 like the GP's operator.
    rng = np.random.default_rng(2)
    edges = (np.linspace(10.0, 30.0, 5), np.linspace(-10.0, 10.0, 4), np.linspace(0, 600, 7))
    rho = rng.uniform(0, 0.01, (4, 3, 6)).astype(np.float32)
    lon, lat = rng.uniform(10.0, 30.0, 50), rng.uniform(-10.0, 10.0, 50)
    dist = rng.uniform(1.0, 600.0, 50)
    got = maps.DustMap("spherical", rho, edges).query_xyz(
        galactic_to_cartesian_np(lon, lat, dist), True
    )
    il = np.minimum(np.searchsorted(edges[0], lon, side="right") - 1, 3)
    ib = np.minimum(np.searchsorted(edges[1], lat, side="right") - 1, 2)
    jd = np.minimum(np.searchsorted(edges[2], dist, side="right") - 1, 5)
    op = StarOperator(
        flat_index=jnp.asarray(((il * 3 + ib) * 6 + jd).astype(np.int32)),
        partial_pc=jnp.asarray((dist - edges[2][jd]).astype(np.float32)),
        d_widths_pc=jnp.asarray(np.diff(edges[2]).astype(np.float32)),
        full_shape=(4, 3, 6),
    )
    np.testing.assert_allclose(got, np.asarray(op(jnp.asarray(rho))), rtol=1e-5)
