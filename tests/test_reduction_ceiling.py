"""tools.reduction_ceiling: the exact cube's skill under each reduction to the region's cells."""

import numpy as np
import pytest

from dustjax.geometry import Region


@pytest.mark.parametrize("factor", [2, 3])
def test_the_regrid_is_the_truth_and_block_means_are_not(factor):
    """The truth is the regrid, so the regrid scores 1 and so does the Gaussian sampled at the
    offset it picks (F // 2 per axis); block means of a field with structure inside the cells
    score below 1; a truth other than the regrid is told apart; a cube that is no whole multiple
    of the cells is refused."""
    from tools.reduction_ceiling import ceilings

    region = Region((0.0, 0.0, 0.0), (48.0, 48.0, 48.0), (8, 8, 8))
    fine = np.random.default_rng(factor).lognormal(-6.0, 1.0, (8 * factor,) * 3)
    res = ceilings(fine, region)
    assert res["factor"] == factor
    assert res["reduction_regrid"] == pytest.approx(1.0, abs=1e-6)
    k = factor // 2
    assert res[f"offset_{k}_{k}_{k}"] == pytest.approx(1.0, abs=1e-6)
    assert res["reduction_block"] < 0.95 and res["gaussian_then_block"] < 0.99
    assert len([key for key in res if key.startswith("offset_")]) == factor**3
    assert res["regrid_matches_truth"]
    assert not ceilings(fine, region, truth=np.ones(region.shape))["regrid_matches_truth"]
    with pytest.raises(ValueError, match="whole multiple"):
        ceilings(fine[:, :, 1:], region)
