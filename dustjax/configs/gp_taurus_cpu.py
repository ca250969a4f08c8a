r"""The latent GP through `experiments/fit_gp` on stars drawn in the real Bayestar19 cube.

    python -m experiments.fit_gp --config=experiments/configs/gp_taurus_cpu.py --workdir=DIR \
        --config.data.cube=../shared/data/real/bayestar19_LR_anticentre.fits

Taurus-Perseus (l 150-180 deg, b -25..-5 deg, d 100-600 pc), 20,000 stars uniform in l, b and
d^3, extinctions integrated exactly through the cube, noise max(0.1 A, 0.02) mag
(`data.source = "cube"`, `dustjax.gp.realsky`); training grid 20 x 15 x 35 with 2 ghost cells
(the dust in front of 100 pc), 300 inducing points, log-spherical kernel coordinates, the
plateau stopping rule, 10 % of the stars held out to calibrate the bands. The summary's
`simulation.metrics` and `calibration` score the fit against the cube. Hardware: CPU (minutes).
The issue-18 real-sky test at this size (`tools.gp_realsky_suite --suite=cpu`) adds the kNN
baseline.
"""

from dustjax.configs.gp_common import gp_config


def get_config():
    c = gp_config("gp_taurus_cpu")
    c.data.source = "cube"
    c.data.cube = "../shared/data/real/bayestar19_LR_anticentre.fits"
    c.data.simulation.num_stars = 20000
    c.grid.l_range_deg = (150.0, 180.0)
    c.grid.b_range_deg = (-25.0, -5.0)
    c.grid.d_range_pc = (100.0, 600.0)
    c.grid.shape = (20, 15, 35)
    c.grid.ghost_cells = 2
    c.model.num_inducing = 300
    c.model.scale_lengths_pc = (30.0, 30.0, 30.0)
    c.model.mean_dex = None
    c.fit.kernel_coords = "log_spherical"
    c.fit.max_iterations = 1500
    c.fit.min_iterations = 300
    c.predict.shape = (40, 30, 70)
    c.predict.num_samples = 50
    c.predict.chunk_cells = 65536
    c.output.slice_distances_pc = (150.0, 300.0, 450.0)
    return c
