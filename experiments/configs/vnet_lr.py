r"""The paper's LR V-net (Chen, Qin & Li sect. 3): log-normal random fields, 60 pc cells, 32^3.

    make data REGION=LR N=10000 && make train REGION=LR CONFIG=vnet_lr
    python -m experiments.train --config=experiments/configs/vnet_lr.py --data_dir=data/LR
    python -m experiments.evaluate --workdir=workdirs/vnet_lr

Hardware: one or more GPUs/TPUs (bfloat16 compute); global batch 32. Paper: stopped at epoch 200;
test residual dispersion 0.0004 mag/pc, c_r >= 0.6 everywhere and >= 0.9 for r > 167.6 pc
(k < 0.0375 pc^-1). Time: 225 steps per epoch, under a minute per epoch on one H200.
"""

from experiments.configs.common import vnet_config


def get_config():
    c = vnet_config("vnet_lr", "LR")
    c.num_epochs = 200
    c.early_stopping.patience = 50
    return c
