"""The (l, b, d) grid and its line-of-sight integral (eqs. 6-8) against analytic integrals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.catalog import StarCatalog
from dustjax.gp import predict
from dustjax.gp.grid import GridError, LBDGrid
from dustjax.gp.simulate import ClumpField


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _grid(**kw):
    args = dict(l_range_deg=(50, 90), b_range_deg=(-10, 10), d_range_pc=(180, 500), shape=(4, 3, 8))
    args.update(kw)
    return LBDGrid(**args)


def test_uniform_density_integrates_to_rho_times_distance_with_ghost_and_background():
    grid = _grid(ghost_cells=3, background_cells=2)
    rng = np.random.default_rng(0)
    d_far = grid.d_edges_pc()[-1]
    d = rng.uniform(180, d_far, 200)
    op = grid.star_operator(
        rng.uniform(50, 90, 200), rng.uniform(-10, 10, 200), d, dtype=np.float64
    )
    rho = 2.5e-3
    ext = np.asarray(op(jnp.full(grid.full_shape, rho)))
    np.testing.assert_allclose(ext, rho * d, rtol=1e-12)  # ghost cells cover [0, d_min]


def test_piecewise_density_matches_a_hand_integral_and_the_dense_matrix():
    grid = _grid(ghost_cells=2, background_cells=1)
    rng = np.random.default_rng(1)
    density = rng.uniform(0, 0.01, grid.full_shape)
    n = 50
    lon, lat = rng.uniform(50, 90, n), rng.uniform(-10, 10, n)
    d = rng.uniform(180, grid.d_edges_pc()[-1], n)
    op = grid.star_operator(lon, lat, d, dtype=np.float64)
    ext = np.asarray(op(jnp.asarray(density)))
    edges = grid.d_edges_pc()
    column, _, _ = grid.locate(lon, lat, d)
    for i in range(n):
        il, ib = divmod(int(column[i]), grid.shape[1])
        # integral of a step function from 0 to d_i (eqs. 7-8), one cell at a time
        lengths = np.clip(d[i] - edges[:-1], 0, np.diff(edges))
        assert ext[i] == pytest.approx(np.sum(density[il, ib] * lengths), rel=1e-12)
    np.testing.assert_allclose(op.todense() @ density.ravel(), ext, rtol=1e-12)


def test_gaussian_clump_converges_to_the_erf_integral():
    field = ClumpField(
        background=1e-3,
        d_range_pc=(180.0, 500.0),
        centres_xyz=np.array([[100.0, 300.0, 10.0]]),
        widths_pc=np.array([20.0]),
        peaks=np.array([0.03]),
    )
    rng = np.random.default_rng(2)
    lon, lat = rng.uniform(68, 74, 100), rng.uniform(-1, 3, 100)
    d = rng.uniform(200, 500, 100)
    truth = field.extinction(lon, lat, d)
    errors = []
    for shape in [(20, 20, 20), (80, 80, 80)]:
        grid = _grid(shape=shape)
        rho = field.density(grid.cell_centres_xyz()).reshape(grid.full_shape)
        op = grid.star_operator(lon, lat, d, dtype=np.float64)
        errors.append(np.max(np.abs(np.asarray(op(jnp.asarray(rho))) - truth)))
    # A star sees its column's cell-centre density: the error is first order in the cell size.
    assert errors[1] < 0.03 * truth.max()
    assert errors[1] < errors[0] / 3


def test_erf_integral_of_the_simulation_matches_quadrature():
    field = ClumpField(
        background=1.6e-3,
        d_range_pc=(180.0, 500.0),
        centres_xyz=np.array([[100.0, 300.0, 10.0], [150, 250, -30]]),
        widths_pc=np.array([20.0, 12.0]),
        peaks=np.array([0.03, 0.02]),
    )
    from dustjax.geometry import galactic_to_cartesian_np

    lon, lat, d = 70.0, 1.0, 450.0
    s = np.linspace(0, d, 200001)
    xyz = galactic_to_cartesian_np(np.full_like(s, lon), np.full_like(s, lat), s)
    quad = np.trapezoid(field.density(xyz), s)
    assert field.extinction(np.array([lon]), np.array([lat]), np.array([d]))[0] == pytest.approx(
        quad, rel=1e-4
    )


def test_stars_outside_are_dropped_and_counted_and_the_operator_refuses_them():
    grid = _grid(ghost_cells=2)
    cat = StarCatalog.from_arrays(
        l_deg=[60, 95, 60, 60, 60],
        b_deg=[0, 0, 12, 0, 0],
        distance_pc=[300, 300, 300, 100, 600],
        extinction=[1, 1, 1, 1, 1],
        sigma_extinction=[0.1] * 5,
    )
    inside, dropped = grid.select_inside(cat)
    assert dropped == 4 and len(inside) == 1  # l, b, ghost-cell distance, beyond d_max
    with pytest.raises(GridError, match="outside the grid"):
        grid.star_operator(cat.l_deg, cat.b_deg, cat.distance_pc)


def test_longitude_wraps_through_zero():
    grid = LBDGrid((-10, 10), (-5, 5), (100, 200), (4, 2, 5))
    column, _, inside = grid.locate(np.array([355.0, 5.0, 20.0]), np.zeros(3), np.full(3, 150.0))
    assert inside.tolist() == [True, True, False]
    assert column[0] // 2 == 1 and column[1] // 2 == 3


def test_solid_angle_and_dust_mass_of_a_uniform_map():
    grid = _grid(shape=(8, 8, 4))
    omega = grid.column_solid_angle_sr()
    exact = np.deg2rad(40) * (np.sin(np.deg2rad(10)) - np.sin(np.deg2rad(-10)))
    assert omega.sum() == pytest.approx(exact, rel=1e-12)
    # eq. 9: 1 mag everywhere -> M = (ln 10 / 2.5) Omega D^2 / kappa
    mass = predict.dust_mass_msun(np.ones((8, 8)), grid)
    expected = np.log(10) / 2.5 * exact * (500 * predict.PC_CM) ** 2 / 26000.0 / predict.MSUN_G
    assert mass == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        dict(shape=(0, 1, 1)),
        dict(b_range_deg=(10, -10)),
        dict(d_range_pc=(500, 180)),
        dict(l_range_deg=(0, 400)),
    ],
)
def test_bad_grids_are_refused(bad):
    with pytest.raises(GridError):
        _grid(**bad)


def test_float64_runs_keep_float64_partial_path_lengths():
    """make_star_data(dtype=float64) -> star_operator: no rounding through float32 on the way."""
    from dustjax.gp.fit import make_star_data

    grid = _grid(ghost_cells=2, background_cells=1)
    rng = np.random.default_rng(5)
    n = 300
    d = rng.uniform(180, grid.d_edges_pc()[-1], n)
    cat = StarCatalog.from_arrays(
        l_deg=rng.uniform(50, 90, n),
        b_deg=rng.uniform(-10, 10, n),
        distance_pc=d,
        extinction=np.ones(n),
        sigma_extinction=np.full(n, 0.1),
    )
    _, cell, _ = grid.locate(cat.l_deg, cat.b_deg, cat.distance_pc)
    expected = d - grid.d_edges_pc()[cell]  # float64 throughout
    stars = make_star_data(cat, grid, dtype=jnp.float64)
    assert stars.partial_pc.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(stars.partial_pc), expected, rtol=0, atol=1e-12)
    op = grid.star_operator(cat.l_deg, cat.b_deg, cat.distance_pc)
    np.testing.assert_allclose(np.asarray(op.partial_pc), expected, rtol=0, atol=1e-12)
    assert op.d_widths_pc.dtype == jnp.float64


def test_star_operator_arrays_are_the_operators_on_the_host_in_the_asked_dtype():
    grid = _grid(ghost_cells=2)
    rng = np.random.default_rng(6)
    lon, lat, d = rng.uniform(50, 90, 50), rng.uniform(-10, 10, 50), rng.uniform(180, 500, 50)
    op = grid.star_operator(lon, lat, d, dtype=np.float32)
    flat, partial = grid.star_operator_arrays(lon, lat, d, dtype=np.float32)
    assert type(flat) is np.ndarray and type(partial) is np.ndarray
    assert flat.dtype == np.int32 and partial.dtype == np.float32
    np.testing.assert_array_equal(flat, np.asarray(op.flat_index))
    np.testing.assert_array_equal(partial, np.asarray(op.partial_pc))
    with pytest.raises(GridError, match="outside"):
        grid.star_operator_arrays([10.0], [0.0], [300.0], dtype=np.float32)
