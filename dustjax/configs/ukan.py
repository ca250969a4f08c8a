r"""U-KAN (sect. 3.3.3): five levels, KAN convolutions in the three deepest.

    python -m experiments.train --config=experiments/configs/ukan.py --workdir=workdirs/ukan

Hardware and data as experiments/configs/unet.py; KAN convolutions expand each channel into 8
radial basis functions, so the deep levels cost ~9x a plain conv (slower, more parameters).
"""

from dustjax.configs.unet_common import unet_config


def get_config():
    c = unet_config("ukan", model="ukan")
    c.model.kwargs.levels = 5
    c.model.kwargs.kan_levels = 3
    return c
