r"""A V-net that trains in seconds on a laptop CPU: the end-to-end test of the pipeline.

    python -m experiments.train --config=experiments/configs/vnet_test.py --workdir=/tmp/vnet_test
    python -m experiments.evaluate --workdir=/tmp/vnet_test

Hardware: any (CPU, float32). Data: simulated on the fly (source="simulate", no dataset), SR
region re-gridded to 16^3 (12 pc cells), a Levy simulator with 32,000 particles per cube instead
of 2 million. Model: features (4, 8). Time: ~20 s on 2 CPU cores including compilation. Metric:
the loss decreases; nothing about science (tests/training/test_engine.py runs it: train, resume,
evaluate).
"""

from experiments.configs.vnet_common import vnet_config


def get_config():
    c = vnet_config("vnet_test", "SR")
    c.model.kwargs.features = (4, 8)
    c.data.source = "simulate"
    c.data.shape = (16, 16, 16)
    c.data.simulator = "levy"
    c.data.simulator_params = dict(num_starts=4, flights_per_start=4, jumps_per_flight=2000)
    c.data.num_examples = 80  # simulate source: 8 test cubes (2 batches)
    c.data.steps_per_epoch = 4
    c.data.eval_steps = 1
    c.batch_size = 4
    c.num_epochs = 3
    c.optimizer.learning_rate = 1e-3
    c.model.kwargs.bn_momentum = 0.8  # running statistics settle within a few steps
    c.early_stopping.patience = 0
    c.compute_dtype = "float32"
    c.log_every_steps = 2
    return c
