r"""The simulated test of Dharmawardena et al. (2022, sect. 3) at the paper's full size.

    python -m experiments.fit_gp --config=experiments/configs/gp_paper_sim.py --workdir=DIR
    make gp CONFIG=gp_paper_sim

Background 1.6e-3 mag/pc plus three Gaussian clumps in l 50-90 deg, b -10..10 deg, d 180-500 pc;
120,000 stars uniform in l, b and d^3 with 10% noise (floor 0.01 mag); training grid 20 x 20 x 35,
1000 inducing points, 32 Monte Carlo samples, AdamW; prediction grid 100 x 100 x 105 with 100
samples. Hardware: one GPU (float32). Target (issue 4): the whole run (compile, fit, predict)
under 60 s on one H200; typical density residual <= 12%, clump offsets < 1 scale length
(summary.json: simulation.metrics). On a 2-core CPU use the overrides of docs/gp.md
(fewer stars, a coarser grid) or expect hours.
"""

from dustjax.configs.gp_common import gp_config


def get_config():
    return gp_config("gp_paper_sim")
