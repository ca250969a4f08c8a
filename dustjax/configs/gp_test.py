r"""A latent-GP run that finishes in well under a minute on a laptop CPU (pipeline test).

    python -m experiments.fit_gp --config=experiments/configs/gp_test.py --workdir=/tmp/gp_test

The paper's simulated test scaled down: 3,000 stars, a 6 x 6 x 10 training grid, 40 inducing
points, 8 Monte Carlo samples, 60 iterations; prediction grid 12 x 12 x 20. Hardware: any
(CPU, float32). Metric: none (too small to be science); tests/test_gp_pipeline.py runs it
end to end.
"""

from dustjax.configs.gp_common import gp_config


def get_config():
    c = gp_config("gp_test")
    c.data.simulation.num_stars = 3000
    c.grid.shape = (6, 6, 10)
    c.model.num_inducing = 40
    c.model.scale_lengths_pc = (40.0, 40.0, 40.0)
    c.fit.num_samples = 8
    c.fit.max_iterations = 60
    c.fit.min_iterations = 20
    c.fit.anneal_iterations = 0  # 60 iterations in all: no room for the annealing steps
    c.predict.shape = (12, 12, 20)
    c.predict.num_samples = 16
    c.predict.star_samples = 16
    c.predict.chunk_cells = 1024
    return c
