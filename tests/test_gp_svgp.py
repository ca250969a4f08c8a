"""The hand-written ELBO of the latent GP: KL, closed forms, the exact evidence, gradients.

All in float64 (`jax.enable_x64`), on grids small enough for dense matrices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dustjax.gp import kernels, svgp
from dustjax.gp.grid import LBDGrid


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


GRID = LBDGrid((60, 70), (-5, 5), (100, 200), (3, 3, 4), ghost_cells=1)


def _setup(num_stars=40, seed=0):
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(60, 70, num_stars), rng.uniform(-5, 5, num_stars)
    d = rng.uniform(100, 200, num_stars)
    op = GRID.star_operator(lon, lat, d, dtype=np.float64)
    cells = jnp.asarray(GRID.cell_centres_xyz())
    return rng, op, cells


def _params(inducing, rng, *, random_q=True, scale=30.0, amp=0.8, mean=0.05):
    p = svgp.init_params(
        inducing, scale_lengths_pc=scale, amplitude_dex=amp, mean_dex=mean, dtype=jnp.float64
    )
    if random_q:
        m = inducing.shape[0]
        s = np.tril(rng.normal(scale=0.2, size=(m, m)), -1) + np.diag(rng.uniform(0.3, 1.2, m))
        p["q_mean"] = jnp.asarray(rng.normal(size=m))
        p["q_chol_raw"] = svgp.chol_to_raw(jnp.asarray(s))
    return p


def test_kl_is_zero_at_the_prior_positive_elsewhere_and_equals_the_unwhitened_kl():
    rng, _, cells = _setup()
    z = cells[::3]
    prior = _params(z, rng, random_q=False)
    assert float(svgp.kl_divergence(prior)) == pytest.approx(0.0, abs=1e-12)
    p = _params(z, rng)
    kl = float(svgp.kl_divergence(p))
    assert kl > 0
    # KL[N(L m, L S S^T L^T) || N(0, K)] computed directly: whitening leaves the KL unchanged.
    jitter = 1e-6
    chol = np.asarray(svgp.inducing_cholesky(p, jitter))
    k = chol @ chol.T
    s = np.asarray(svgp.q_chol(p))
    mu, cov = chol @ np.asarray(p["q_mean"]), chol @ s @ s.T @ chol.T
    kinv = np.linalg.inv(k)
    direct = 0.5 * (
        np.trace(kinv @ cov)
        + mu @ kinv @ mu
        - len(mu)
        + np.linalg.slogdet(k)[1]
        - np.linalg.slogdet(cov)[1]
    )
    assert kl == pytest.approx(direct, rel=1e-8)


def test_gram_matrix_is_symmetric_positive_definite():
    rng, _, cells = _setup()
    k = np.asarray(kernels.rbf(cells, cells, jnp.array([20.0, 30.0, 10.0]), 0.7))
    np.testing.assert_allclose(k, k.T, rtol=1e-14)
    assert np.linalg.eigvalsh(k + 1e-10 * np.eye(len(k))).min() > 0
    np.testing.assert_allclose(np.diag(k), 0.49, rtol=1e-14)


def _mc_expected_ll(params, cells, op, stars, num_samples, seed, link="linear"):
    m = params["inducing_points"].shape[0]
    eps_u, eps_f = svgp.draw_eps(jax.random.key(seed), num_samples, m, cells.shape[0], jnp.float64)
    phi = svgp.sample_phi(params, cells, eps_u, eps_f, jitter=1e-6)
    rho = svgp.density_from_phi(phi, link).reshape(num_samples, *GRID.full_shape)
    per_sample = svgp.expected_log_likelihood_samples(rho, stars, op.d_widths_pc)
    return float(jnp.mean(per_sample)), float(jnp.std(per_sample) / np.sqrt(num_samples))


def _stars(op, extinction, sigma):
    n = op.num_stars
    return svgp.StarData(
        op.flat_index, op.partial_pc, jnp.asarray(extinction), jnp.asarray(sigma), jnp.ones(n)
    )


def test_linear_link_monte_carlo_matches_the_closed_form_expected_log_likelihood():
    rng, op, cells = _setup()
    p = _params(cells[::4], rng)  # 9 inducing points, not at the cells
    h = op.todense()
    extinction = h @ rng.uniform(0.0, 0.02, GRID.num_cells) + rng.normal(scale=0.05, size=40)
    sigma = rng.uniform(0.03, 0.08, 40)
    exact = float(svgp.expected_log_likelihood_linear(p, cells, h, extinction, sigma, jitter=1e-6))
    mc, se = _mc_expected_ll(p, cells, op, _stars(op, extinction, sigma), 20000, 1)
    assert abs(mc - exact) < 4 * se


def test_elbo_at_the_exact_posterior_equals_the_exact_log_marginal_likelihood():
    rng, op, cells = _setup(seed=3)
    jitter = 1e-12
    # Inducing points at every cell; scale lengths below the cell spacing keep K_uu well
    # conditioned, so phi(cells) | u has (numerically) zero variance as in the exact model.
    p = _params(cells, rng, random_q=False, scale=6.0)
    h = op.todense()
    extinction = h @ rng.uniform(0.0, 0.2, GRID.num_cells) + rng.normal(scale=0.05, size=40)
    sigma = rng.uniform(0.03, 0.08, 40)
    m, s = svgp.exact_posterior_whitened(p, cells, h, extinction, sigma, jitter=jitter)
    p["q_mean"], p["q_chol_raw"] = m, svgp.chol_to_raw(s)
    evidence = float(svgp.exact_log_marginal_linear(p, cells, h, extinction, sigma, jitter=jitter))
    closed = float(
        svgp.expected_log_likelihood_linear(p, cells, h, extinction, sigma, jitter=jitter)
        - svgp.kl_divergence(p)
    )
    assert closed == pytest.approx(evidence, rel=1e-6, abs=1e-5)
    # Elsewhere the ELBO is strictly below the evidence.
    p_off = dict(p, q_mean=p["q_mean"] + 0.3)
    off = float(
        svgp.expected_log_likelihood_linear(p_off, cells, h, extinction, sigma, jitter=jitter)
        - svgp.kl_divergence(p_off)
    )
    assert off < evidence - 1e-3
    # The Monte Carlo ELBO (joint samples through the inducing points) converges to it.
    stars = _stars(op, extinction, sigma)
    model = svgp.SVGPModel(link="linear", num_samples=4000)
    elbos = [
        float(
            svgp.elbo(
                p, jax.random.key(k), cells, stars, op.d_widths_pc, GRID.full_shape, model, jitter
            )
        )
        for k in range(5)
    ]
    mc, se = np.mean(elbos), np.std(elbos) / np.sqrt(len(elbos))
    assert abs(mc - evidence) < max(4 * se, 1e-3 * abs(evidence))


def test_elbo_gradients_match_finite_differences():
    rng, op, cells = _setup(num_stars=15)
    p = _params(cells[::5], rng, scale=40.0, amp=0.3, mean=-2.0)
    extinction = rng.uniform(0.1, 0.5, 15)
    stars = _stars(op, extinction, np.full(15, 0.05))
    model = svgp.SVGPModel(link="log10", num_samples=4)
    key = jax.random.key(0)

    def f(params):  # fixed key: a deterministic, reparameterised function of the parameters
        return svgp.elbo(params, key, cells, stars, op.d_widths_pc, GRID.full_shape, model, 1e-6)

    check_grads(f, (p,), order=1, modes=["rev"], eps=1e-5, atol=1e-4, rtol=1e-4)


def test_chunked_sampling_equals_unchunked_and_jit_equals_eager():
    rng, _, cells = _setup()
    p = _params(cells[::4], rng)
    eps_u, eps_f = svgp.draw_eps(
        jax.random.key(2), 3, p["q_mean"].shape[0], cells.shape[0], jnp.float64
    )
    full = svgp.sample_phi(p, cells, eps_u, eps_f, jitter=1e-6)
    chunked = svgp.sample_phi(p, cells, eps_u, eps_f, jitter=1e-6, cell_chunk=7)
    jitted = jax.jit(lambda q: svgp.sample_phi(q, cells, eps_u, eps_f, jitter=1e-6))(p)
    np.testing.assert_allclose(chunked, full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jitted, full, rtol=1e-12, atol=1e-12)


def test_samples_have_the_predictive_moments_of_eqs_a6_a7():
    rng, _, cells = _setup()
    p = _params(cells[::4], rng)
    mean, var = svgp.predictive_moments(p, cells, jitter=1e-6)
    eps_u, eps_f = svgp.draw_eps(
        jax.random.key(5), 20000, p["q_mean"].shape[0], cells.shape[0], jnp.float64
    )
    phi = np.asarray(svgp.sample_phi(p, cells, eps_u, eps_f, jitter=1e-6))
    np.testing.assert_allclose(phi.mean(0), mean, atol=5 * np.sqrt(float(var.max()) / 20000))
    np.testing.assert_allclose(phi.var(0), var, rtol=0.05)
