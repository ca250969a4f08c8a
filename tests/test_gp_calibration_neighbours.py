"""tools/gp_calibration_neighbours: a spatially coherent model error's shape, unresolved in single
residuals under the noise, is resolved in neighbour-averaged ones; a Gaussian one stays one."""

import numpy as np
import pytest
from scipy.special import erf

from dustjax.gp import calibration
from tools import gp_calibration_neighbours as nbr


def _blocks(rng, num_blocks, per_block, error_sd):
    """Stars in tight blocks 100 pc apart, each block sharing one model error (sd ``error_sd``
    per block, tau = 1), each star its own noise of sd 3.3 (the paper-size simulation's noise
    against its error's typical size, issue 18)."""
    centres = 100.0 * rng.uniform(size=(num_blocks, 3)) * num_blocks ** (1 / 3)
    xyz = np.repeat(centres, per_block, axis=0) + 0.01 * rng.standard_normal(
        (num_blocks * per_block, 3)
    )
    err = np.repeat(error_sd * rng.standard_normal(num_blocks), per_block)
    n = num_blocks * per_block
    resid = err + 3.3 * rng.standard_normal(n)
    return (resid, np.ones(n), np.full(n, 3.3**2)), xyz


def _q2(a, wide, p):
    """(q68 / sd)^2 of the scale mixture (1 - p) N(0, a) + p N(0, a K)."""

    def cov(k):
        return (1 - p) * erf(np.sqrt(k / (2 * a))) + p * erf(np.sqrt(k / (2 * a * wide)))

    return calibration._smallest_scale_reaching(cov, 0.68) / (a * (1 - p + p * wide))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_coherent_heavy_tail_is_resolved_by_averaging_neighbours(seed):
    rng = np.random.default_rng(seed)
    m = 8000
    wide = rng.uniform(size=m) < 0.3  # 30 % of the blocks: sd 1.5, the rest 0.25 (K = 36)
    terms, xyz = _blocks(rng, m, 5, np.where(wide, 1.5, 0.25))
    one_per_block = xyz[::5]
    single = calibration._gauss_fit(terms[0][::5] ** 2, *[t[::5] for t in terms[1:]])[0]
    single -= calibration._mixture_fit(terms[0][::5] ** 2, *[t[::5] for t in terms[1:]])[0]
    assert single < calibration._MIXTURE_GATE  # one residual a block: not resolved
    row = nbr.shape_from_neighbours(terms, one_per_block, xyz, 4)  # the block's 5 stars
    assert row["gain"] > calibration._MIXTURE_GATE
    # the band narrows from one Gaussian's (q68 / sd)^2 = 0.99 towards the truth's 0.21; how
    # close it gets is not asserted: the narrow part (0.25) is still under the averaged noise
    # (1.5), and over ten draws the estimate spreads from 0.05 to 0.58 (a collapsed narrow part
    # in two: what `calibration._core_upper_limit` guards in the pipeline, not yet here)
    assert row["q68_over_sd_squared"] < 0.7, (row, _q2(0.25**2, 36.0, 0.3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_coherent_gaussian_error_keeps_one_gaussians_band(seed):
    rng = np.random.default_rng(seed)
    terms, xyz = _blocks(rng, 8000, 5, 0.85)
    row = nbr.shape_from_neighbours(terms, xyz[::5], xyz, 4)
    assert row["gain"] < calibration._MIXTURE_GATE
    assert abs(row["q68_over_sd_squared"] - 0.9890) < 0.001  # one Gaussian: (0.9945 sd)^2
