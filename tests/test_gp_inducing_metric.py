"""The inducing points' spread with axis weights (`fit.init_inducing_points(metric=...)`,
issue 18): evenly spread in units of anisotropic scale lengths."""

import numpy as np
import pytest

from dustjax.gp.fit import init_inducing_points


def _min_spacing(z, metric):
    d = np.sqrt(np.sum(((z[:, None] - z[None]) * metric) ** 2, axis=-1))
    return d[np.triu_indices(len(z), 1)].min()


def test_a_weighted_spread_is_even_in_the_weighted_metric():
    """Stars in a box 4x longer along z: with weights (1, 1, 0.25) the spread's smallest
    spacing in that metric is well above the even spread's (which crowds points along z), and
    the points still lie at stars."""
    rng = np.random.default_rng(0)
    stars = rng.uniform([0, 0, 0], [100, 100, 400], size=(5000, 3))
    metric = np.array([1.0, 1.0, 0.25])
    even = init_inducing_points(None, 64, 0, points=stars)
    weighted = init_inducing_points(None, 64, 0, points=stars, metric=metric)
    assert _min_spacing(weighted, metric) > 1.3 * _min_spacing(even, metric)
    assert np.all(np.isin(weighted, stars).all(axis=1))
    np.testing.assert_array_equal(
        init_inducing_points(None, 64, 0, points=stars, metric=(1, 1, 1)), even
    )
    with pytest.raises(ValueError, match="3 positive weights"):
        init_inducing_points(None, 64, 0, points=stars, metric=(1, 0, 1))
