r"""The paper's SR V-net (Chen, Qin & Li sect. 3): Levy-flight cubes, 6 pc cells, 32^3.

    make data REGION=SR N=10000 && make train REGION=SR CONFIG=vnet_sr
    python -m experiments.train --config=experiments/configs/vnet_sr.py --data_dir=data/SR
    python -m experiments.evaluate --workdir=workdirs/vnet_sr

Hardware: one or more GPUs/TPUs (bfloat16 compute); global batch 32. Paper: validation loss flat
after ~60 epochs, stopped at 130; test residual dispersion 0.0003 mag/pc, c_r >= 0.9 for
k in [0.046, 0.893] pc^-1. On-device simulation instead of the TFRecord set (the validation run):
``--config.data.source=simulate`` (225 fresh batches per epoch, a fixed validation set of 1,800).
Time: about 7200/32 = 225 steps per epoch, i.e. well under a minute per epoch at >= 300 samples/s
on one H200 (see docs/benchmarks.md).
"""

from experiments.configs.common import vnet_config


def get_config():
    c = vnet_config("vnet_sr", "SR")
    c.num_epochs = 130
    c.early_stopping.patience = 40
    return c
