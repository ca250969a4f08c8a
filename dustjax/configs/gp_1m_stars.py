r"""Scale test: 10^6 stars and 4,000 inducing points (issue 4 target: < 10 min on one H200).

    python -m experiments.fit_gp --config=experiments/configs/gp_1m_stars.py --workdir=DIR

The sect. 3 simulation with 10^6 stars on a finer 30 x 30 x 50 training grid (45,000 cells),
4,000 inducing points, 32 samples, minibatches of 250,000 stars per step (unbiased N/b scaling),
float32, stars sharded over all local GPUs. Prediction on 100 x 100 x 105 cells in chunks of
2^16 cells (memory M x 2^16). Hardware: one or more GPUs; not for CPUs.
"""

from dustjax.configs.gp_common import gp_config


def get_config():
    c = gp_config("gp_1m_stars")
    c.data.simulation.num_stars = 1_000_000
    c.grid.shape = (30, 30, 50)
    c.model.num_inducing = 4000
    c.model.scale_lengths_pc = (15.0, 15.0, 15.0)
    c.fit.batch_size = 250_000
    c.fit.max_iterations = 3000
    c.predict.chunk_cells = 2**16
    return c
