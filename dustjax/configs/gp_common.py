"""Shared defaults of the latent-GP configs (`dustjax.gp.pipeline` describes every field)."""

import math

import ml_collections
from ml_collections import config_dict


def gp_config(name: str) -> ml_collections.ConfigDict:
    """The paper's simulated test (Dharmawardena et al. 2022, sect. 3) at full size."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0
    c.dtype = "float32"

    c.data = ml_collections.ConfigDict()
    c.data.source = "simulate"  # or "catalog"
    c.data.path = ""
    # Logical column -> name in the file; empty names fall back to dustjax.catalog defaults.
    c.data.columns = ml_collections.ConfigDict(
        dict(l="", b="", distance="", extinction="", sigma_extinction="", sigma_distance="")
    )
    c.data.distance_unit = "pc"
    # source "cube": stars drawn in a known density (a cube file, clumps:SEED, lognormal:SEED)
    c.data.cube = ""
    c.data.distribution = "uniform"  # or "catalog" (magnitude-limited)
    c.data.inflate_sigma = True  # fold distance uncertainties into sigma_A (Rezaei Kh. 2020)
    c.data.simulation = ml_collections.ConfigDict(
        dict(
            num_stars=120_000,
            noise_fraction=0.1,
            sigma_floor=0.01,
            background=1.6e-3,
            num_clumps=3,
            clump_width_pc=(12.0, 25.0),
            clump_peak=(0.01, 0.04),
        )
    )

    c.grid = ml_collections.ConfigDict(
        dict(
            l_range_deg=(50.0, 90.0),
            b_range_deg=(-10.0, 10.0),
            d_range_pc=(180.0, 500.0),
            shape=(20, 20, 35),
            ghost_cells=0,  # the simulated truth has no dust in front of 180 pc
            background_cells=0,
        )
    )

    c.model = ml_collections.ConfigDict(
        dict(
            num_inducing=1000,
            scale_lengths_pc=(20.0, 20.0, 20.0),
            amplitude_dex=0.5,
            mean_dex=math.log10(1.6e-3),  # None: log10 of the median A/d of the stars
            q_std=0.1,
            init="spread",  # farthest-point over the stars; "random": the paper's random stars
            kernel="rbf",  # or "matern32", "matern52" (issue 18e)
            mean_function="constant",  # or "linear", "shells" (log_spherical; mean_shells knots)
            mean_shells=8,
        )
    )

    c.fit = ml_collections.ConfigDict(
        dict(
            learning_rate=0.03,
            weight_decay=1e-4,
            num_samples=32,
            # placeholders: None by default, yet settable from the command line
            # (--config.fit.batch_size=250000); a plain None field cannot be overridden there
            batch_size=config_dict.placeholder(int),
            max_iterations=3000,
            min_iterations=500,
            tol=0.01,
            window=10,
            steps_per_call=10,
            jitter=1e-4,
            max_jitter=1e-1,
            cell_chunk=config_dict.placeholder(int),
            link="log10",
            seed=0,
            warmup_iterations=0,
            scale_q_offdiagonal=True,  # Adam on the off-diagonal of S at lr/sqrt(M): see docs/gp.md
            max_log10_density=3.0,  # soft cap of phi samples in the likelihood only (dex)
            # "plateau": stop once the ELBO no longer rises beyond its Monte Carlo noise
            # (issue 18); "paper": the paper's 1 % over `window` iterations
            stop_rule="plateau",
            plateau_window=100,
            plateau_z=2.0,
            plateau_rel_floor=1e-5,
            # learned model error (f A)^2 + s^2 in the likelihood (off: the paper's model)
            model_error=False,
            model_error_init=(0.05, 0.01),
            max_fit_seconds=config_dict.placeholder(float),
            # where the kernel is stationary: "xyz" (the paper) or "log_spherical" (scale
            # lengths proportional to distance; dustjax.gp.coords)
            kernel_coords="xyz",
            # after the fit would stop: this many steps at anneal_factor x the learning rate
            # (the real-sky fit of issue 18: held-out error 6.4 % -> 4.7 % with 200; 0: off)
            anneal_iterations=200,
            anneal_factor=0.1,
            # return the mean of the annealing's second half of iterates, not the last one
            anneal_average=False,
            # stars held out of the fit; a post-hoc model error (f A)^2 + s^2 fitted on them
            # widens the extinction bands (docs/gp.md); 0: off
            calibration_fraction=0.1,
            # how the bands are scaled on them (up or down): "deconvolved" or "observed"
            calibration_method="deconvolved",
        )
    )

    c.predict = ml_collections.ConfigDict(
        dict(
            shape=(100, 100, 105),
            num_samples=100,
            chunk_cells=2**18,
            star_samples=64,
            posterior_samples=12,  # density samples written to density.fits (<= num_samples)
            # the stars' extinctions through the training grid with each cell cut (fl, fb, fd)
            # (issue 18e: (2, 2, 1) cut the real-sky held-out error by 10-15 %)
            star_grid_factor=(1, 1, 1),
        )
    )
    c.output = ml_collections.ConfigDict(
        dict(
            fits=True, plots=True, slice_distances_pc=(250.0, 300.0, 350.0, 400.0), sightlines=None
        )
    )
    return c
