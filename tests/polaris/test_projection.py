"""Tests of dustjax.polaris.projection: projections and targets (eqs. 2-3)."""

import numpy as np
import pytest

from dustjax.geometry import PC_CM
from dustjax.polaris import projection


def test_projection_of_a_uniform_cube_gives_n_everywhere_and_N_equal_n_L():
    cube = np.full((4, 5, 6), 300.0, np.float32)
    maps = projection.project(cube, axis=2, cell_size_pc=0.05)
    assert maps["column_density"].shape == (4, 5)
    np.testing.assert_allclose(maps["column_density"], 300.0 * 6 * 0.05 * PC_CM, rtol=1e-6)
    for key in ("density_mass_weighted", "density_volume_weighted", "density_max"):
        np.testing.assert_allclose(maps[key], 300.0, rtol=1e-6)


def test_two_phase_line_of_sight_matches_eqs_2_and_3():
    n1, n2 = 10.0, 1000.0
    cube = np.zeros((2, 1, 4), np.float32)
    cube[..., :3] = n1
    cube[..., 3] = n2
    maps = projection.project(cube, axis=2, cell_size_pc=1.0)
    mass = (3 * n1**2 + n2**2) / (3 * n1 + n2)
    np.testing.assert_allclose(maps["density_mass_weighted"], mass, rtol=1e-6)
    np.testing.assert_allclose(maps["density_volume_weighted"], (3 * n1 + n2) / 4, rtol=1e-6)
    np.testing.assert_allclose(maps["density_max"], n2)
    # <n>_V = N / L (eq. 2 and the text below it)
    np.testing.assert_allclose(
        maps["density_volume_weighted"], maps["column_density"] / (4 * PC_CM), rtol=1e-6
    )
    with pytest.raises(ValueError, match="axis"):
        projection.project(cube, axis=3, cell_size_pc=1.0)
