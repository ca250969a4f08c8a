"""tools/subcell_stats.block_stats against analytic answers."""

from __future__ import annotations

import numpy as np

from dustjax.vnet import refine
from tools.subcell_stats import block_stats


def test_map_grid_cube_has_no_subcell_structure():
    coarse = np.random.default_rng(0).lognormal(-6.0, 1.0, (4, 3, 2))
    s = block_stats(refine.upsample(coarse, 2), 2, min_density=0.0)
    assert s["log_scatter"] < 1e-12 and s["subcell_variance_fraction"] < 1e-12
    assert s["blocks"] == s["blocks_used"] == 24


def test_two_valued_blocks_give_their_analytic_scatter():
    """Sub-cells alternating a m and m / a (a = 10) around block means: log10 deviations
    +-1 - log10((a + 1/a) / 2) with std 1; the within-block variance is all the variance when
    every block has the same mean."""
    a = 10.0
    fine = np.where(np.indices((4, 4, 4)).sum(axis=0) % 2 == 0, a, 1.0 / a) * 1e-3
    s = block_stats(fine, 2, min_density=1e-4)
    assert np.isclose(s["log_scatter"], 1.0) and s["blocks_used"] == 8
    assert np.isclose(s["subcell_variance_fraction"], 1.0)
    assert np.isclose(s["relative_scatter"], (a - 1 / a) / (a + 1 / a))
