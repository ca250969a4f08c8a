"""Shared by the refinement tests: a catalogue of stars uniform in a region, their extinctions
integrated exactly through a truth cube, Gaussian noise of sigma = hypot(sigma_a, sigma_b E)."""

import numpy as np


def uniform_catalogue(truth, region, n, seed, sigma_a, sigma_b):
    from dustjax.catalog import StarCatalog
    from dustjax.los import integrate_to_points

    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(region.lower_pc) + 0.5, np.asarray(region.upper_pc) - 0.5
    xyz = rng.uniform(lo, hi, (n, 3))
    edges = tuple(region.edges_pc(a) for a in range(3))
    e_true = np.asarray(integrate_to_points(truth, edges, xyz), np.float64)
    sigma = np.hypot(sigma_a, sigma_b * e_true)
    return StarCatalog.from_arrays(
        xyz_pc=xyz, extinction=e_true + sigma * rng.standard_normal(n), sigma_extinction=sigma,
        region=region,
    )  # fmt: skip
