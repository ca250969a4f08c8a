r"""A small LR V-net that learns visibly in about 10 minutes on 2 CPU cores (what `make train
REGION=LR` picks when there is no accelerator).

    make train REGION=LR                      # makes data/LR (1,000 cubes) if missing
    python -m experiments.train --config=experiments/configs/vnet_lr_cpu.py --data_dir=data/LR \
        --make_data_if_missing
    python -m experiments.evaluate --workdir=workdirs/vnet_lr_cpu

Hardware: CPU, float32. Data: 1,000 paper-setting log-normal cubes (720 train / 180 validation /
100 test; simulating them takes ~1 min on 2 cores, once). Model: the paper's architecture with
features (8, 16, 32, 64) (0.4 M parameters), batch 8, 30 steps an epoch (a fresh shuffled draw
from the 720 training cubes each epoch). Time: about 10 min for the 6 epochs (estimated ~2.5 s a
step on 2 idle cores; slower when the cores are shared), plus the data. Metric: the validation
loss (eq. 3) falls well below its first-epoch value; see docs/validation.md for the measured
numbers.
"""

from dustjax.configs.vnet_common import vnet_config


def get_config():
    c = vnet_config("vnet_lr_cpu", "LR")
    c.model.kwargs.features = (8, 16, 32, 64)
    c.model.kwargs.bn_momentum = 0.9
    c.data.num_examples = 1000
    c.batch_size = 8
    c.num_epochs = 6
    c.data.steps_per_epoch = 30
    c.optimizer.learning_rate = 1e-3  # 2e-3 killed the output ReLU (all-zero predictions) on LR
    c.early_stopping.patience = 3
    c.compute_dtype = "float32"
    c.eval.after_training = True  # end with the test metrics, the figures and the next step
    return c
