r"""Column density + 13CO vs column only, at a size a loaded laptop CPU trains in minutes.

    python -m tools.polaris_emission_compare \
        --config=experiments/configs/unet_emission_cpu.py --workdir=workdirs/emission_cpu

Hardware: CPU (float32). Data: 64^3 clouds at 0.2 pc (12.8 pc) with Larson-like velocities
(gamma 0.38-0.5, sigma_1pc 0.6-1.1 km/s) and 8-15 K gas, 32 x 32 crops (6.4 pc, the paper's
field), 360 crops split 80/20; 13CO PPV of 24 channels over +-12 km/s (1 km/s) or its 4 moment
maps. Model: 3 levels, 8 base filters. Six trainings (2 targets x 3 input kinds) of 30 epochs.
Time and results: docs/validation.md ("13CO emission as a second input").
"""

from dustjax.configs.unet_emission_common import emission_config


def get_config():
    c = emission_config("unet_emission_cpu")
    c.model.kwargs.levels = 3
    c.model.kwargs.base_features = 8
    c.data.num_crops = 360
    c.data.grid.n_cells = 64
    c.data.grid.cell_size_pc = 0.2
    c.data.grid.num_filaments = 6
    c.data.grid.points_per_filament = 128
    c.data.grid.num_cores = 12
    c.data.grid.core_window_cells = 5
    c.data.crop.crop_size = 32
    c.data.crop.attempts_per_face = 100
    c.data.emission.num_channels = 24
    c.data.emission.half_width_kms = 12.0
    c.data.emission.oversample = 2
    c.batch_size = 16
    c.num_epochs = 30
    c.early_stopping.patience = 10
    c.compute_dtype = "float32"
    c.progress_bar = False
    c.log_every_steps = 50
    return c
