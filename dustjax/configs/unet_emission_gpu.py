r"""Column density + 13CO vs column only on one GPU (the device comparison of issue 21).

    python -m tools.polaris_emission_compare \
        --config=experiments/configs/unet_emission_gpu.py --workdir=workdirs/emission_gpu
    OUT_DIR=out BUDGET_S=300 SKIP_BENCH=1 bash tools/device/issue21.sh      # the device run

Hardware: one GPU (bfloat16). Data: 256^3 clouds at 0.1 pc (25.6 pc, the paper's box) with
Larson-like velocities and 8-15 K gas, 64 x 64 crops (6.4 pc), 1,024 crops split 80/20; 13CO PPV
of 32 channels over +-16 km/s (1 km/s) or its 4 moment maps. Model: 3 levels, 16 base filters,
epochs of 4 passes over the training crops (100 steps: the per-epoch validation and checkpoint,
~1 s on a GPU, against ~0.5 s of steps), up to 60 epochs, learning rate halved after 3 epochs
without progress, early stop after 6. Time on one H200: simulation 25 s; each training 5-20 s
plus its compilation (2 targets x 3 input kinds). Results: docs/validation.md ("13CO emission as
a second input").
"""

from dustjax.configs.unet_emission_common import emission_config


def get_config():
    c = emission_config("unet_emission_gpu")
    c.model.kwargs.levels = 3
    c.model.kwargs.base_features = 16
    c.data.num_crops = 1024
    c.data.grid.n_cells = 256
    c.data.grid.cell_size_pc = 0.1
    c.data.grid.num_filaments = 16
    c.data.grid.points_per_filament = 256
    c.data.grid.num_cores = 48
    c.data.grid.core_window_cells = 9
    c.data.crop.crop_size = 64
    c.data.crop.attempts_per_face = 200
    c.data.emission.num_channels = 32
    c.data.emission.half_width_kms = 16.0
    c.data.emission.oversample = 2
    c.batch_size = 32
    c.data.passes_per_epoch = 4
    c.num_epochs = 60
    c.schedule.patience = 3
    c.early_stopping.patience = 6
    c.plot_every_epochs = 0
    c.progress_bar = False
    c.log_every_steps = 100
    return c
