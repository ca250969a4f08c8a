r"""POLARIS U-Net at CPU size: the same physics and crop size in pc, a quarter of the pixels.

    python -m experiments.train --model=unet          # with no accelerator picks this config
    python -m experiments.polaris_validate --config=experiments/configs/unet_cpu.py \
        --workdir=workdirs/unet_cpu --out=workdirs/unet_cpu/validation

Hardware: a laptop CPU (float32). Data: 128^3 cubes at 0.1 pc (12.8 pc), 64 x 64 crops
(6.4 pc, as in the paper), 640 crops split 80/20. Model: 3 levels, 8 base filters.
Time: ~10-15 min on 2 cores (see docs/polaris.md for the measured numbers).
"""

from dustjax.configs.unet_common import unet_config


def get_config():
    c = unet_config("unet_cpu")
    c.model.kwargs.levels = 3
    c.model.kwargs.base_features = 8
    c.model.input_shape = (64, 64, 1)
    c.data.num_crops = 640
    c.data.grid.n_cells = 128
    c.data.grid.cell_size_pc = 0.1
    c.data.grid.num_filaments = 8
    c.data.grid.points_per_filament = 256
    c.data.grid.num_cores = 16
    c.data.grid.core_window_cells = 9
    c.data.crop.crop_size = 64
    c.data.crop.attempts_per_face = 200
    c.batch_size = 16
    c.num_epochs = 20
    c.early_stopping.patience = 10
    c.compute_dtype = "float32"
    return c
