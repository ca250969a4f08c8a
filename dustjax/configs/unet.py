r"""POLARIS attention U-Net, paper setting (Ribeiro 2025 part II): log10 N -> log10 <n>_M.

    python -m experiments.train --model=unet          # on a GPU/TPU picks this config
    python -m experiments.train --config=experiments/configs/unet.py --workdir=workdirs/unet
    python -m experiments.polaris_validate --config=experiments/configs/unet.py \
        --workdir=workdirs/unet --out=workdirs/unet/validation

Hardware: one GPU or TPU (bfloat16). Data: simulated on the device at start-up, no tensorflow
(source "polaris_simulate"): 512^3 cloud cubes at 0.05 pc (25.6 pc, the paper's working set),
projected along 3 axes, 128 x 128 crops (6.4 pc) chosen by the smoothness score (appendix B),
3,000 crops split 80/20. Model: 4 levels, 64 base filters, one conv per block, attention gates.
Adam 1e-3, reduced by half on plateaus of the training loss; random rotations and flips on the
device; the checkpoint of minimum validation loss is kept. Time on one H200: a few minutes
(simulation ~1 min, training ~2-4 min; see docs/polaris.md). Metric: validation MSE in log10 and
its ratio to the best pointwise N -> <n>_M lookup table (target <= 0.75).

`unet_common.unet_config` is the base of every U-Net config (knet, ukan, unet_kan_branch,
unet_cpu, unet_test): every key a run may override lives in it.
"""

from __future__ import annotations

from dustjax.configs.unet_common import unet_config


def get_config():
    return unet_config()
