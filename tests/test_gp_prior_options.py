"""The latent GP's prior options (issue 18): Matern kernels, mean functions, and the
nearest-neighbour residual correction of star extinctions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from dustjax.catalog import StarCatalog
from dustjax.gp import fit, kernels, realsky, svgp
from dustjax.gp.coords import KernelCoords
from dustjax.gp.grid import LBDGrid

GRID = LBDGrid((60, 70), (-5, 5), (100, 200), (3, 3, 4), ghost_cells=1)


def _bessel_matern(r, nu, amp):
    """The general Matern form (Rasmussen & Williams eq. 4.14), an independent route."""
    r = np.asarray(r, np.float64)
    a = np.sqrt(2 * nu) * r
    with np.errstate(invalid="ignore"):
        k = amp**2 * 2 ** (1 - nu) / special.gamma(nu) * a**nu * special.kv(nu, a)
    return np.where(r == 0, amp**2, k)


@pytest.mark.parametrize("name, nu", [("matern32", 1.5), ("matern52", 2.5)])
def test_matern_kernels_match_the_general_bessel_form(name, nu):
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(7, 3)) * 30, rng.normal(size=(5, 3)) * 30
    scales = np.array([20.0, 35.0, 12.0])
    r = np.sqrt((((x1[:, None] - x2[None]) / scales) ** 2).sum(-1))
    with jax.enable_x64(True):
        got = np.asarray(kernels.gram(name, jnp.asarray(x1), jnp.asarray(x2), scales, 0.7))
    np.testing.assert_allclose(got, _bessel_matern(r, nu, 0.7), rtol=1e-10)
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.gram("matern12", x1, x2, scales, 0.7)


@pytest.mark.parametrize("name", ["matern32", "matern52"])
def test_matern_gram_is_positive_definite_with_a_finite_gradient_at_zero_distance(name):
    x = jnp.asarray(GRID.cell_centres_xyz())
    with jax.enable_x64(True):
        x = jnp.asarray(x, jnp.float64)
        k = np.asarray(kernels.gram(name, x, x, jnp.array([20.0, 30.0, 10.0]), 0.7))
        np.testing.assert_allclose(np.diag(k), 0.49, rtol=1e-14)
        assert np.linalg.eigvalsh(k).min() > 0
        grad = jax.grad(lambda s: jnp.sum(kernels.gram(name, x, x, s, 0.7)))(
            jnp.array([20.0, 30.0, 10.0])
        )
    assert np.all(np.isfinite(np.asarray(grad)))


def _params(num_inducing=9, seed=0):
    rng = np.random.default_rng(seed)
    cells = np.asarray(GRID.cell_centres_xyz())
    p = svgp.init_params(
        cells[:: 36 // num_inducing], scale_lengths_pc=30.0, amplitude_dex=0.8, mean_dex=-2.0,
        dtype=jnp.float64,
    )  # fmt: skip
    m = p["q_mean"].shape[0]
    s = np.tril(rng.normal(scale=0.2, size=(m, m)), -1) + np.diag(rng.uniform(0.3, 1.2, m))
    p["q_mean"] = jnp.asarray(rng.normal(size=m))
    p["q_chol_raw"] = svgp.chol_to_raw(jnp.asarray(s))
    return p, jnp.asarray(cells)


def test_the_kernel_travels_with_the_parameters():
    with jax.enable_x64(True):
        p, cells = _params()
        z = p["inducing_points"]
        hyp = svgp.hyperparameters(p)
        assert svgp.kernel_name(p) == "rbf"
        m32 = svgp.with_kernel(p, "matern32")
        assert svgp.kernel_name(m32) == "matern32"
        np.testing.assert_allclose(
            svgp.covariance(m32, z, cells),
            kernels.matern32(z, cells, hyp["scale_lengths_pc"], hyp["amplitude_dex"]),
            rtol=1e-12,
        )
        chol = np.asarray(svgp.inducing_cholesky(m32, 1e-6))
        want = np.asarray(svgp.covariance(m32, z, z)) + 1e-6 * 0.64 * np.eye(len(z))
        np.testing.assert_allclose(chol @ chol.T, want, rtol=1e-10, atol=1e-12)
        # a different prior: different predictions from the same q(v)
        assert not np.allclose(
            svgp.predictive_moments(m32, cells, jitter=1e-6)[0],
            svgp.predictive_moments(p, cells, jitter=1e-6)[0],
        )
        assert svgp.kernel_name(svgp.with_kernel(m32, "rbf")) == "rbf"
        both = dict(m32, kernel_matern52=jnp.zeros(()))
        with pytest.raises(ValueError, match="more than one kernel"):
            svgp.kernel_name(both)
        with pytest.raises(ValueError, match="kernel must be one of"):
            svgp.with_kernel(p, "laplace")


def test_prior_means_have_their_analytic_values():
    with jax.enable_x64(True):
        p, _ = _params()
        x = jnp.array([[10.0, 20.0, 30.0], [0.0, 0.0, 0.0], [-5.0, 3.0, 250.0]])
        assert float(svgp.prior_mean(p, x)) == -2.0  # the paper's constant
        lin = svgp.with_mean_function(p, "linear", origin=[1.0, 2.0, 3.0])
        lin["mean_gradient"] = jnp.array([2.0, -1.0, 0.5])  # dex per 1,000 units
        want = -2.0 + ((x - jnp.array([1.0, 2.0, 3.0])) @ jnp.array([2.0, -1.0, 0.5])) / 1000
        np.testing.assert_allclose(svgp.prior_mean(lin, x), want, rtol=1e-14)
        sh = svgp.with_mean_function(p, "shells", knots=[0.0, 100.0, 200.0])
        sh["mean_shell_values"] = jnp.array([0.4, -0.2, 0.6])
        # at a knot its value, between knots linear, beyond the ends constant
        x = jnp.array([[9.0, 9.0, 100.0], [0.0, 0.0, 50.0], [0.0, 0.0, -40.0], [0, 0, 250.0]])
        np.testing.assert_allclose(
            svgp.prior_mean(sh, x), -2.0 + np.array([-0.2, 0.1, 0.4, 0.6]), rtol=1e-14
        )
        assert svgp.mean_function_name(sh) == "shells" and svgp.mean_function_name(lin) == "linear"
        assert "mean_gradient" not in svgp.with_mean_function(lin, "constant")
        with pytest.raises(ValueError, match="increasing knots"):
            svgp.with_mean_function(p, "shells", knots=[1.0, 1.0])
        with pytest.raises(ValueError, match="origin"):
            svgp.with_mean_function(p, "linear", origin=[1.0, 2.0])
        with pytest.raises(ValueError, match="mean function must be one of"):
            svgp.with_mean_function(p, "quadratic")


def _variant(p, kernel, mean):
    p = svgp.with_kernel(p, kernel)
    if mean == "linear":
        p = svgp.with_mean_function(p, "linear", origin=np.asarray(p["inducing_points"]).mean(0))
        p["mean_gradient"] = jnp.array([3.0, -2.0, 4.0])
    elif mean == "shells":
        z = np.asarray(p["inducing_points"])[:, 2]
        p = svgp.with_mean_function(p, "shells", knots=np.linspace(z.min(), z.max(), 4))
        p["mean_shell_values"] = jnp.array([0.3, -0.2, 0.1, 0.5])
    return p


VARIANTS = [("matern32", "constant"), ("matern52", "linear"), ("rbf", "shells")]


@pytest.mark.parametrize("kernel, mean", VARIANTS)
def test_samples_have_the_predictive_moments_with_every_kernel_and_mean(kernel, mean):
    """sample_phi (the fit), predictive_moments (the maps) and the line-of-sight column samples
    of the real-sky test (full conditional covariance) agree in mean and variance."""
    with jax.enable_x64(True):
        p, cells = _params()
        p = _variant(p, kernel, mean)
        mean_, var = svgp.predictive_moments(p, cells, jitter=1e-6)
        n = 20000
        eps_u, eps_f = svgp.draw_eps(jax.random.key(5), n, p["q_mean"].shape[0], len(cells),
                                     jnp.float64)  # fmt: skip
        phi = np.asarray(svgp.sample_phi(p, cells, eps_u, eps_f, jitter=1e-6))
        tol = 5 * np.sqrt(float(var.max()) / n)
        np.testing.assert_allclose(phi.mean(0), mean_, atol=tol)
        np.testing.assert_allclose(phi.var(0), var, rtol=0.05)
        col = realsky._column_phi_samples(p, GRID, eps_u, jax.random.key(6), 1e-6)
        col = np.asarray(col).reshape(n, -1)
        np.testing.assert_allclose(col.mean(0), mean_, atol=tol)
        np.testing.assert_allclose(col.var(0), var, rtol=0.05)
        # the prior mean is not the constant: the test sees it
        assert mean == "constant" or np.ptp(np.asarray(svgp.prior_mean(p, cells))) > 0.05


@pytest.mark.parametrize("kernel, mean", VARIANTS)
def test_elbo_at_the_exact_posterior_is_the_evidence_with_every_kernel_and_mean(kernel, mean):
    """With the linear link and inducing points at every cell, the ELBO at the exact posterior
    equals the exact evidence (dense K over the cells, the mean through H), and the Monte Carlo
    ELBO (sample_phi's route) converges to it."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        lon, lat = rng.uniform(60, 70, 40), rng.uniform(-5, 5, 40)
        op = GRID.star_operator(lon, lat, rng.uniform(100, 200, 40), dtype=np.float64)
        cells = jnp.asarray(GRID.cell_centres_xyz())
        p = svgp.init_params(cells, scale_lengths_pc=6.0, amplitude_dex=0.8, mean_dex=0.05,
                             dtype=jnp.float64)  # fmt: skip
        p = _variant(p, kernel, mean)
        if mean != "constant":  # keep the linear-link mean at densities' scale
            for k in ("mean_gradient", "mean_shell_values"):
                if k in p:
                    p[k] = p[k] * 0.01
        jitter = 1e-12
        h = op.todense()
        extinction = h @ rng.uniform(0.0, 0.2, GRID.num_cells) + rng.normal(scale=0.05, size=40)
        sigma = rng.uniform(0.03, 0.08, 40)
        m, s = svgp.exact_posterior_whitened(p, cells, h, extinction, sigma, jitter=jitter)
        p["q_mean"], p["q_chol_raw"] = m, svgp.chol_to_raw(s)
        evidence = float(
            svgp.exact_log_marginal_linear(p, cells, h, extinction, sigma, jitter=jitter)
        )
        closed = float(
            svgp.expected_log_likelihood_linear(p, cells, h, extinction, sigma, jitter=jitter)
            - svgp.kl_divergence(p)
        )
        assert closed == pytest.approx(evidence, rel=1e-6, abs=1e-5)
        stars = svgp.StarData(op.flat_index, op.partial_pc, jnp.asarray(extinction),
                              jnp.asarray(sigma), jnp.ones(40))  # fmt: skip
        model = svgp.SVGPModel(link="linear", num_samples=4000)
        elbos = [
            float(
                svgp.elbo(
                    p,
                    jax.random.key(k),
                    cells,
                    stars,
                    op.d_widths_pc,
                    GRID.full_shape,
                    model,
                    jitter,
                )
            )  # fmt: skip
            for k in range(5)
        ]
        se = np.std(elbos) / np.sqrt(len(elbos))
        assert abs(np.mean(elbos) - evidence) < max(4 * se, 1e-3 * abs(evidence))
        # the evidence itself depends on the kernel and the mean
        other = svgp.with_mean_function(svgp.with_kernel(p, "rbf"), "constant")
        if (kernel, mean) != ("rbf", "constant"):
            assert float(
                svgp.exact_log_marginal_linear(other, cells, h, extinction, sigma, jitter=jitter)
            ) != pytest.approx(evidence, rel=1e-6)


def _catalog(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return StarCatalog.from_arrays(
        l_deg=rng.uniform(60, 70, n), b_deg=rng.uniform(-5, 5, n),
        distance_pc=rng.uniform(100, 200, n), extinction=rng.uniform(0.1, 0.5, n),
        sigma_extinction=np.full(n, 0.05),
    )  # fmt: skip


def test_initial_params_read_the_options_and_a_fit_trains_only_what_it_should(tmp_path):
    cat = _catalog()
    coords = KernelCoords.for_grid(GRID, "log_spherical")
    model = dict(num_inducing=6, scale_lengths_pc=30.0, amplitude_dex=0.3, mean_dex=-2.5,
                 kernel="matern52", mean_function="shells", mean_shells=3)  # fmt: skip
    p0 = fit.initial_params(cat, model, kernel_coords=coords)
    assert svgp.kernel_name(p0) == "matern52" and svgp.mean_function_name(p0) == "shells"
    z = np.asarray(p0["inducing_points"])[:, 2]
    np.testing.assert_allclose(p0["mean_shell_knots"], np.linspace(z.min(), z.max(), 3), atol=1e-4)
    res = fit.fit(
        p0, fit.make_star_data(cat, GRID), GRID,
        fit.FitSettings(max_iterations=10, num_samples=2, jitter=1e-4, learning_rate=0.05,
                        kernel_coords="log_spherical"),
        progress=False,
    )  # fmt: skip
    for k in ("kernel_matern52", "mean_shell_knots"):  # fixed settings, never trained
        np.testing.assert_array_equal(res.params[k], np.asarray(p0[k]))
    assert np.ptp(res.params["mean_shell_values"]) > 1e-3  # the shells' values are
    # the saved state predicts with the same prior
    fit.save_params(tmp_path / "s.npz", res.params)
    back = fit.load_params(tmp_path / "s.npz")
    assert svgp.kernel_name(back) == "matern52" and svgp.mean_function_name(back) == "shells"
    cells = jnp.asarray(coords.grid_cells(GRID), jnp.float32)
    np.testing.assert_allclose(
        svgp.predictive_moments(back, cells, jitter=1e-4)[0],
        svgp.predictive_moments(res.params, cells, jitter=1e-4)[0], rtol=1e-6,
    )  # fmt: skip
    lin = fit.initial_params(cat, dict(model, mean_function="linear", kernel="rbf"))
    np.testing.assert_allclose(
        lin["mean_origin"], np.asarray(lin["inducing_points"]).mean(0), rtol=1e-6
    )
    with pytest.raises(ValueError, match="log_spherical"):
        fit.initial_params(cat, model)  # shells in XYZ
    with pytest.raises(ValueError, match="mean_shells"):
        fit.initial_params(cat, dict(model, mean_shells=1), kernel_coords=coords)
    with pytest.raises(ValueError, match="kernel must be one of"):
        fit.initial_params(cat, dict(model, kernel="cubic", mean_function="constant"))


def test_knn_residual_correction_is_the_median_of_the_neighbours_residuals():
    rng = np.random.default_rng(0)
    # two well-separated groups with residuals +0.1 and -0.3 (one outlier each)
    a = rng.normal(size=(50, 3))
    b = rng.normal(size=(50, 3)) + 100.0
    xyz = np.concatenate([a, b])
    resid = np.concatenate([np.full(50, 0.1), np.full(50, -0.3)])
    resid[0], resid[50] = 5.0, -7.0
    q = np.array([[0.1, 0.0, 0.0], [100.0, 100.0, 100.0]])
    np.testing.assert_allclose(realsky.knn_residual_correction(xyz, resid, q, 30), [0.1, -0.3])
    # k = 1 at a star's own position: its residual
    np.testing.assert_allclose(realsky.knn_residual_correction(xyz, resid, xyz[:3], 1), resid[:3])
    with pytest.raises(ValueError, match="k <="):
        realsky.knn_residual_correction(xyz, resid, q, 101)
    with pytest.raises(ValueError, match="one residual per star"):
        realsky.knn_residual_correction(xyz, resid[:10], q, 3)
    assert math.isfinite(float(realsky.knn_residual_correction(xyz, resid, q, 100)[0]))


def test_prediction_grids_keep_the_training_ghost_cells_and_refine_the_rest():
    from dustjax.gp import predict

    train = LBDGrid((150, 180), (-25, -5), (100, 600), (6, 4, 10), ghost_cells=2,
                    background_cells=1)  # fmt: skip
    fine = predict.prediction_grid(train, (12, 8, 20))
    # the ghost cells the fit constrained, unsplit: the same edges in front of d_min
    assert fine.ghost_cells == 2
    np.testing.assert_allclose(fine.d_edges_pc()[:3], train.d_edges_pc()[:3])
    # the region of interest and the background refined (the background keeps its span)
    assert fine.shape == (12, 8, 20) and fine.background_cells == 2
    assert fine.d_edges_pc()[-1] == pytest.approx(train.d_edges_pc()[-1])
    ref = predict.refined_grid(train, (2, 2, 2))
    assert ref == fine
    with pytest.raises(ValueError, match="three integers"):
        predict.refined_grid(train, (2, 0, 1))
    # in log-spherical coordinates the kept ghost centres are the training ones (the split ones
    # were > 1 radial scale length of 50 kernel units away)
    coords = KernelCoords.for_grid(train, "log_spherical")
    near = coords.grid_cells(fine).reshape(*fine.full_shape, 3)[0, 0, :2, 2]
    np.testing.assert_allclose(near, coords.grid_cells(train).reshape(*train.full_shape, 3)[
        0, 0, :2, 2])  # fmt: skip


def test_star_grid_factor_integrates_the_stars_through_the_refined_grid():
    import ml_collections

    from dustjax.gp import pipeline

    cat = _catalog(n=30)
    config = ml_collections.ConfigDict(dict(predict=dict()))
    op = GRID.star_operator(cat.l_deg, cat.b_deg, cat.distance_pc)
    same = pipeline._star_operator(GRID, config, cat, op.flat_index, op.partial_pc)
    assert same[0] is GRID and np.array_equal(same[1], op.flat_index)
    config.predict.star_grid_factor = (2, 3, 2)
    sgrid, idx, partial = pipeline._star_operator(GRID, config, cat, op.flat_index, op.partial_pc)
    assert sgrid.shape == (6, 9, 8) and sgrid.ghost_cells == GRID.ghost_cells
    # a uniform density integrates to rho d through either grid (the ghost cells included)
    rho = 0.003
    for grid, i, pp in ((GRID, op.flat_index, op.partial_pc), (sgrid, idx, partial)):
        from dustjax.los import apply_star_operator

        a = apply_star_operator(
            jnp.full(grid.full_shape, rho), jnp.asarray(i), jnp.asarray(pp),
            jnp.asarray(grid.d_widths_pc()),
        )  # fmt: skip
        np.testing.assert_allclose(a, rho * np.asarray(cat.distance_pc), rtol=1e-5)
    # and a density that varies with l sees the finer cells: different columns
    assert len(np.unique(np.asarray(idx) // sgrid.full_shape[2])) > len(
        np.unique(np.asarray(op.flat_index) // GRID.full_shape[2])
    )
