"""The physics refinement (dustjax.vnet.refine): its limits and its optimality conditions."""

import numpy as np
import pytest
from catalogue_helpers import uniform_catalogue

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


# ---- correlated prior errors (issue 17's catalogue route) ----------------------------------------
def _smooth_field(shape, ell, seed):
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), ell, mode="wrap")
    return f / f.std()


def test_a_nugget_of_one_is_the_independent_prior():
    truth = _truth(1)
    e = np.asarray(los_operator(REGION)(truth))
    e = e + 0.002 * np.random.default_rng(2).standard_normal(REGION.shape)
    m = np.maximum(truth * 1.5 - 2e-4, 0).astype(np.float32)
    s = np.full(REGION.shape, 5e-4, np.float32)
    indep = refine.refine_cube(e, m, s, REGION, sigma_floor=0.01, num_steps=3000)
    corr = refine.refine_cube(e, m, s, REGION, sigma_floor=0.01, num_steps=3000, corr_length=2.0,
                              nugget=1.0)  # fmt: skip
    np.testing.assert_allclose(corr, indep, rtol=1e-3, atol=1e-6 * indep.max())


def test_the_correlation_spectrum_is_the_kernel_with_unit_diagonal():
    shape = refine.padded_shape((8, 8, 8), 1.5)
    assert shape == (14, 14, 14)  # 8 + ceil(4 x 1.5), even
    spec = refine.correlation_spectrum(shape, 1.5, 0.2)
    assert spec.min() >= 0.2 - 1e-12
    kernel = np.fft.irfftn(spec, s=shape)
    assert kernel[0, 0, 0] == pytest.approx(1.0, abs=1e-9)  # unit variance per cell
    assert kernel[1, 0, 0] == pytest.approx(0.8 * np.exp(-0.5 / 1.5**2), rel=1e-6)
    assert kernel[0, 2, 1] == pytest.approx(0.8 * np.exp(-2.5 / 1.5**2), rel=1e-6)


def test_the_correlated_map_point_satisfies_its_optimality_conditions():
    """KKT of min 1/2 |W(A x - E)|^2 + 1/2 (x - m)^T (S K S)^-1 (x - m), x >= 0, with K the dense
    stationary kernel of the box (built independently of the FFT) and jax.grad."""
    import jax
    import jax.numpy as jnp

    region = Region((-24.0, -24.0, -24.0), (24.0, 24.0, 24.0), (6, 6, 6))
    rng = np.random.default_rng(5)
    truth = rng.lognormal(-7.0, 1.0, region.shape) * (rng.random(region.shape) < 0.7)
    op = los_operator(region)
    e = np.asarray(op(truth.astype(np.float32))) + 0.002 * rng.standard_normal(region.shape)
    m = (truth * np.exp(0.7 * _smooth_field(region.shape, 1.5, 6))).astype(np.float32)
    s = (0.5 * m + 2e-4).astype(np.float32)
    ell, nu = 1.5, 0.2
    x = refine.refine_cube(e, m, s, region, sigma_floor=0.01, num_steps=6000, corr_length=ell,
                           nugget=nu)  # fmt: skip
    ijk = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    d2 = np.sum((ijk[:, None] - ijk[None]) ** 2, axis=-1)
    k = nu * np.eye(len(ijk)) + (1 - nu) * np.exp(-0.5 * d2 / ell**2)
    k_inv = jnp.asarray(np.linalg.inv(k), jnp.float32)
    sf, mf = jnp.asarray(s.ravel()), jnp.asarray(m.ravel())

    def f(x):
        r = (op(x) - e) / 0.01
        u = (x.ravel() - mf) / sf
        return 0.5 * jnp.sum(r**2) + 0.5 * u @ (k_inv @ u)

    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    scale = np.abs(np.asarray(jax.grad(f)(jnp.asarray(m)))).max()
    assert np.all(x >= 0)
    pos = x > 1e-7
    assert np.max(np.abs(g[pos])) < 2e-3 * scale
    assert np.min(g[~pos], initial=0.0) > -2e-3 * scale


def _catalogue(truth, region, n, seed, sigma_a=0.01):
    return uniform_catalogue(truth, region, n, seed, sigma_a, 0.05)


def test_a_smoothly_wrong_prior_is_corrected_better_with_correlated_errors():
    """The prior is the truth times a smooth factor (the V-net's kind of error), with a band of
    the right size; noisy stars. The independent prior chases the stars' noise cell by cell; the
    correlated one moves the map by smooth corrections and lands closer to the truth."""
    region = Region((-48.0, -48.0, -48.0), (48.0, 48.0, 48.0), (12, 12, 12))
    rng = np.random.default_rng(7)
    truth = (rng.lognormal(-6.5, 1.0, region.shape) * (rng.random(region.shape) < 0.8)).astype(
        np.float32
    )
    factor = np.exp(0.6 * _smooth_field(region.shape, 2.5, 8) - 0.3)
    m = (truth * factor).astype(np.float32)
    s = (0.6 * m + 1e-4).astype(np.float32)
    catalog = _catalogue(truth, region, 4000, 9, sigma_a=0.03)
    err = lambda p: float(np.mean((p - truth) ** 2))  # noqa: E731
    indep = refine.refine_catalog(catalog, m, s, region)
    corr = refine.refine_catalog(catalog, m, s, region, corr_length=2.5, nugget=0.1)
    assert err(corr) < 0.8 * err(indep)
    assert err(corr) < 0.5 * err(m)


def test_a_smooth_correction_recovers_a_global_scale():
    """m = 0.7 truth, s = 0.5 m: the exact correction m + s u = truth is u = 6/7 everywhere, a
    constant in the span of the trilinear basis, so nearly noiseless stars bring the map back."""
    truth = _truth(11)
    m = (0.7 * truth).astype(np.float32)
    s = (0.5 * m + 1e-5).astype(np.float32)
    catalog = _catalogue(truth, REGION, 3000, 12, sigma_a=0.001)
    x = refine.refine_catalog(catalog, m, s, REGION, smooth_grid=4)
    err = lambda p: float(np.mean((p - truth) ** 2))  # noqa: E731
    assert err(x) < 0.05 * err(m)
    b = refine.interpolation_matrix(8, 4)
    np.testing.assert_allclose(b.sum(axis=1), 1.0)  # a partition of unity ...
    np.testing.assert_allclose(b @ np.arange(4.0), np.arange(8) * 3 / 7)  # ... exact on lines


def test_the_model_error_meets_the_discrepancy_principle():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 2.0, 5000)
    sigma = np.full(5000, 1e-6)
    tau = refine.model_error_scale(2.0 * p, sigma, p)  # residual 2 p: tau 2 makes chi^2 = 1
    assert tau == pytest.approx(2.0, rel=1e-6)
    assert refine.model_error_scale(0.5 * sigma, sigma, p) == 0.0  # already fits: none


def test_auto_model_error_is_nothing_for_stars_that_fit_and_down_weights_a_wrong_model():
    truth = _truth(13)
    m = (0.8 * truth).astype(np.float32)
    s = (0.5 * m + 1e-5).astype(np.float32)
    catalog = _catalogue(truth, REGION, 3000, 14, sigma_a=0.01)
    info: dict = {}
    auto = refine.refine_catalog(catalog, m, s, REGION, corr_length=1.0, model_error="auto",
                                 info=info)  # fmt: skip
    plain = refine.refine_catalog(catalog, m, s, REGION, corr_length=1.0)
    assert info["model_error"] == 0.0 and info["chi2_per_star"][0] <= 1.0
    np.testing.assert_array_equal(auto, plain)
    # stars that the cells cannot explain (extinctions 3x the model's): tau > 0, chi^2 -> 1
    from dustjax.catalog import StarCatalog

    wrong = StarCatalog.from_arrays(
        xyz_pc=catalog.xyz_pc, extinction=3.0 * catalog.extinction,
        sigma_extinction=catalog.sigma_extinction, region=REGION,
    )  # fmt: skip
    info = {}
    refine.refine_catalog(wrong, m, s, REGION, corr_length=1.0, model_error="auto", info=info)
    assert info["model_error"] > 0 and info["chi2_per_star"][-1] < info["chi2_per_star"][0]
    with pytest.raises(ValueError, match="model_error"):
        refine.refine_catalog(catalog, m, s, REGION, model_error="sometimes")


def test_refining_on_a_finer_grid_fits_stars_that_see_structure_inside_the_cells():
    """Stars integrated through a cube twice as fine as the map (each cell's dust unevenly split
    among its 8 sub-cells): on the map's grid no map fits them, on the finer grid one can, and
    its block means land closer to the cells' true means. Factor 1 is `refine_catalog`, and a
    tight prior comes back unchanged (up-sampling then block-averaging is the identity). The
    default reduction is the regrid: the same fit put on the cells by `to_region`."""
    region = Region((-48.0, -48.0, -48.0), (48.0, 48.0, 48.0), (8, 8, 8))
    fine_region = Region(region.lower_pc, region.upper_pc, (16, 16, 16))
    rng = np.random.default_rng(11)
    fine_truth = (rng.lognormal(-6.0, 1.2, fine_region.shape)).astype(np.float32)
    coarse = fine_truth.reshape(8, 2, 8, 2, 8, 2).mean(axis=(1, 3, 5))
    catalog = _catalogue(fine_truth, fine_region, 6000, 12, sigma_a=0.002)
    m = (coarse * np.exp(0.4 * rng.standard_normal(coarse.shape))).astype(np.float32)
    s = (0.5 * m + 1e-5).astype(np.float32)
    err = lambda p: float(np.mean((p - coarse) ** 2))  # noqa: E731
    on_grid = refine.refine_catalog(catalog, m, s, region, corr_length=1.0, nugget=0.3)
    finer = refine.refine_catalog_fine(catalog, m, s, region, factor=2, corr_length=1.0,
                                       nugget=0.3, reduction="block")  # fmt: skip
    assert finer.shape == coarse.shape
    assert err(finer) < 0.7 * err(on_grid), (err(finer), err(on_grid))
    same = refine.refine_catalog_fine(catalog, m, s, region, factor=1, corr_length=1.0, nugget=0.3)
    np.testing.assert_array_equal(same, on_grid)
    tight = refine.refine_catalog_fine(catalog, m, np.full_like(s, 1e-9), region, factor=2,
                                       reduction="block")  # fmt: skip
    np.testing.assert_allclose(tight, m, rtol=1e-4, atol=1e-9)
    fit = refine.refine_catalog(catalog, refine.upsample(m, 2), refine.upsample(s, 2), fine_region,
                                corr_length=2.0, nugget=0.3)  # fmt: skip
    regridded = refine.refine_catalog_fine(catalog, m, s, region, factor=2, corr_length=1.0,
                                           nugget=0.3)  # fmt: skip
    np.testing.assert_array_equal(regridded, refine.to_region(fit, region, 2, "regrid"))
    np.testing.assert_array_equal(finer, refine.to_region(fit, region, 2, "block"))
    with pytest.raises(ValueError, match="positive integer"):
        refine.refine_catalog_fine(catalog, m, s, region, factor=0)
    with pytest.raises(ValueError, match="unknown reduction"):
        refine.refine_catalog_fine(catalog, m, s, region, factor=2, reduction="median")


@pytest.mark.parametrize("factor", [2, 3])
def test_to_region_regrids_a_fine_map_as_the_literature_route_regrids_a_cube(factor):
    """``"regrid"`` is, by an independent route, a Gaussian of FWHM sqrt(F^2 - 1) fine cells
    per axis (the region's cell in quadrature less the fine cell's) sampled at the fine cell
    holding each region cell's centre (index F i + F // 2: for even F the centre is an edge and
    the cell above it holds it); ``"block"`` is the block mean; a constant map stays constant
    under both; a map of the wrong shape is refused."""
    from scipy.ndimage import gaussian_filter

    region = Region((-30.0, 0.0, 10.0), (30.0, 60.0, 70.0), (5, 5, 5))
    shape = tuple(factor * n for n in region.shape)
    fine = np.random.default_rng(factor).lognormal(-5.0, 1.0, shape).astype(np.float32)
    sigma = np.sqrt(factor**2 - 1.0) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    idx = factor * np.arange(5) + factor // 2
    by_hand = gaussian_filter(fine.astype(np.float64), sigma, mode="nearest")[np.ix_(idx, idx, idx)]
    np.testing.assert_allclose(refine.to_region(fine, region, factor, "regrid"), by_hand,
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(refine.to_region(fine, region, factor, "block"),
                               refine.block_mean(fine, factor), rtol=1e-6)  # fmt: skip
    for how in refine.REDUCTIONS:
        np.testing.assert_allclose(refine.to_region(np.full(shape, 0.01, np.float32), region,
                                                    factor, how), 0.01, rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="is not"):
        refine.to_region(fine[1:], region, factor)


def test_settings_sharing_one_operator_equal_one_call_per_setting():
    """`refine_settings` (the star operator built once) gives each setting's map exactly as its
    own `refine_catalog` call (which builds the operator itself), the auto model error included;
    an operator of another catalogue is refused."""
    truth = _truth(21)
    m = (0.8 * truth).astype(np.float32)
    s = (0.5 * m + 1e-5).astype(np.float32)
    catalog = _catalogue(truth, REGION, 2000, 22, sigma_a=0.01)
    settings = refine.parse_corr_settings("0:1,1:0.3,2:0.3:auto")
    infos: list = []
    shared = refine.refine_settings(catalog, m, s, REGION, settings, infos=infos, num_steps=200)
    for (ell, nu, *tau), got, info in zip(settings, shared, infos, strict=True):
        fit: dict = {}
        own = refine.refine_catalog(catalog, m, s, REGION, corr_length=ell, nugget=nu,
                                    model_error=tau[0] if tau else 0.0, info=fit,
                                    num_steps=200)  # fmt: skip
        np.testing.assert_array_equal(got, own)
        assert info == fit
    other = refine.catalog_operator(_catalogue(truth, REGION, 500, 23), REGION)
    with pytest.raises(ValueError, match="does not match"):
        refine.refine_catalog(catalog, m, s, REGION, operator=other)


def test_the_blocked_operator_refines_as_the_scatter_one():
    """The refinement with `catalog_operator`'s blocked transpose (the default) and with the
    plain `StarOperator` agree to float32 rounding (the sums run in another order)."""
    truth = _truth(24)
    m = (0.8 * truth).astype(np.float32)
    s = (0.5 * m + 1e-5).astype(np.float32)
    catalog = _catalogue(truth, REGION, 2000, 25, sigma_a=0.01)
    plain = refine.catalog_operator(catalog, REGION, blocked=False)
    for kw in (dict(corr_length=2.0, nugget=0.3), dict(corr_length=0.0)):
        a = refine.refine_catalog(catalog, m, s, REGION, num_steps=200, operator=plain, **kw)
        b = refine.refine_catalog(catalog, m, s, REGION, num_steps=200, **kw)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
