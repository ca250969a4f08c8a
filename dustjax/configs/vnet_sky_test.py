r"""The real-sky V-net recipe at toy size: trains in seconds on a CPU (tests/test_observe.py).

    python -m experiments.train --config=experiments/configs/vnet_sky_test.py \
        --workdir=/tmp/vnet_sky_test

Hardware: any (CPU, float32). SR box re-gridded to 8^3 (24 pc cells), log-normal cubes scaled
to the real sky's densities, 300-1,000 stars per cube observed and gridded by eq. 5 (k = 3),
asinh normalisation, variance head. Metric: the mean's MSE on validation cubes beats predicting
rho_hat = 0 (tests/test_observe.py checks it).
"""

from dustjax.configs.vnet_sky_common import vnet_sky_config


def get_config():
    c = vnet_sky_config("vnet_sky_test", "SR")
    c.model.kwargs.features = (8, 16)
    c.model.kwargs.bn_momentum = 0.8
    c.model.los_channels = True
    c.data.shape = (8, 8, 8)
    c.data.simulator = "lognormal"
    c.data.simulator_params = dict(ceiling_range_mag_per_pc=(3e-3, 3e-2), scale_height_pc=None)
    c.observation.num_stars_range = (300.0, 1_000.0)
    c.observation.distance_error_range = (0.0, 0.05)
    c.data.num_examples = 80
    c.data.steps_per_epoch = 15
    c.data.eval_steps = 2
    c.batch_size = 4
    c.num_epochs = 2
    c.optimizer.learning_rate = 3e-3
    c.schedule.warmup_epochs = 0.3
    c.compute_dtype = "float32"
    c.log_every_steps = 5
    c.progress_bar = False
    return c
