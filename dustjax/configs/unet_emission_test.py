r"""Multi-input U-Net (column + 13CO PPV) that trains in seconds on a CPU: the end-to-end test.

    python -m tools.polaris_emission_compare --config=experiments/configs/unet_emission_test.py \
        --workdir=/tmp/emission_test

Hardware: any (float32). Data: 32^3 clouds at 0.2 pc with velocities and temperatures, 16 x 16
crops, 8 velocity channels. Model: 2 levels, 4 base filters. Time: ~1 min on 2 CPU cores for the
three input kinds. Metric: none (tests/polaris/test_multi_input.py runs it).
"""

from dustjax.configs.unet_emission_common import emission_config


def get_config():
    c = emission_config("unet_emission_test")
    c.model.kwargs.levels = 2
    c.model.kwargs.base_features = 4
    c.data.num_crops = 24
    c.data.grid.n_cells = 32
    c.data.grid.cell_size_pc = 0.2
    c.data.grid.num_filaments = 2
    c.data.grid.points_per_filament = 128
    c.data.grid.num_cores = 4
    c.data.grid.core_window_cells = 5
    c.data.crop.crop_size = 16
    c.data.crop.attempts_per_face = 40
    c.data.crop.max_diffuse_fraction = 1.0
    c.data.emission.num_channels = 8
    c.data.emission.oversample = 1
    c.batch_size = 4
    c.num_epochs = 2
    c.early_stopping.patience = 0
    c.compute_dtype = "float32"
    c.log_every_steps = 2
    c.progress_bar = False
    return c
