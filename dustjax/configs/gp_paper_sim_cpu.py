r"""The paper's simulated test (Dharmawardena et al. 2022, sect. 3) sized for a laptop CPU.

    python -m experiments.fit_gp --config=experiments/configs/gp_paper_sim_cpu.py \
        --workdir=/tmp/gp_sim_cpu
    python -m tools.gp_coverage_check            # the same fit, then the band-coverage split

Same field as `gp_paper_sim` (background 1.6e-3 mag/pc, three clumps, 10 % noise) with 20,000
stars, a 12 x 12 x 20 training grid, 300 inducing points and a 50 x 50 x 52 prediction grid.
Hardware: any CPU, float32. Time: 35-45 s on 2 cores (converged by the paper's rule at iteration
400, the minimum; the default is now the plateau rule, `--config.fit.stop_rule=paper` for the
old). Metric (docs/gp.md): typical density residual 4.4 %, worst clump peak offset
0.51 scale lengths, 47 % of the true star extinctions inside the 16-84 % band.
"""

from dustjax.configs.gp_paper_sim import get_config as paper_sim_config


def get_config():
    c = paper_sim_config()
    c.name = "gp_paper_sim_cpu"
    c.data.simulation.num_stars = 20000
    c.grid.shape = (12, 12, 20)
    c.model.num_inducing = 300
    c.fit.max_iterations = 1500
    c.fit.min_iterations = 400
    c.predict.shape = (50, 50, 52)
    c.predict.num_samples = 50
    c.predict.chunk_cells = 65536
    return c
