r"""K-Net (sect. 3.3.1): the paper U-Net with a KAN convolution as output layer.

    python -m experiments.train --config=experiments/configs/knet.py --workdir=workdirs/knet

Hardware, data and time as experiments/configs/unet.py (the KAN head adds little cost).
"""

from dustjax.configs.unet_common import unet_config


def get_config():
    return unet_config("knet", model="knet")
