r"""U-Net with a parallel per-pixel KAN 1-10-10-10-1 ("KAN as symbolic use", sect. 3.3.2, the
model the paper applies to Herschel maps).

    python -m experiments.train --config=experiments/configs/unet_kan_branch.py \
        --workdir=workdirs/unet_kan_branch

Hardware, data and time as experiments/configs/unet.py.
"""

from dustjax.configs.unet_common import unet_config


def get_config():
    c = unet_config("unet_kan_branch", model="unet_kan_branch")
    c.model.kwargs.kan_branch = (10, 10, 10, 1)
    return c
