r"""Appendix A of the paper: the LR V-net trained on Levy-flight cubes (20 starts within
|Z| < 200 pc, 10 flights of 2000 steps, 120 pc disc profile, ceiling in [0.01, 0.5] mag/pc).

    python -m data_gen.make_dataset --region=LR --simulator=levy_lr --num=10000 --out=data/LR_levy
    python -m experiments.train --config=experiments/configs/vnet_lr_levy.py --data_dir=data/LR_levy
    make train REGION=LR CONFIG=vnet_lr_levy DATA=data/LR_levy

Hardware: GPUs/TPUs, bfloat16. The engine refuses a dataset made with another simulator.
Time and metric: as vnet_lr (the paper shows residual maps against Vergely et al. only).
"""

from dustjax.configs.vnet_common import vnet_config


def get_config():
    c = vnet_config("vnet_lr_levy", "LR")
    c.data.simulator = "levy_lr"
    c.data.data_dir = "data/LR_levy"
    c.num_epochs = 200
    c.early_stopping.patience = 50
    return c
