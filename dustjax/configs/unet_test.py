r"""A U-Net that trains in seconds on a CPU: the end-to-end test of the POLARIS pipeline.

    python -m experiments.train --config=experiments/configs/unet_test.py --workdir=/tmp/unet_test
    python -m experiments.polaris_validate --config=experiments/configs/unet_test.py \
        --workdir=/tmp/unet_test --out=/tmp/unet_test/validation --skip_training

Hardware: any (float32). Data: 32^3 cubes at 0.2 pc, 16 x 16 crops, 24 crops. Model: 2 levels,
4 base filters. Time: ~15 s on 2 CPU cores including compilation. Metric: none (it checks that
simulate -> train -> resume -> evaluate -> predict runs; tests/polaris/test_polaris_end_to_end.py
runs it).
"""

from dustjax.configs.unet_common import unet_config


def get_config():
    c = unet_config("unet_test")
    c.model.kwargs.levels = 2
    c.model.kwargs.base_features = 4
    c.model.input_shape = (16, 16, 1)
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
    c.batch_size = 4
    c.num_epochs = 2
    c.early_stopping.patience = 0
    c.compute_dtype = "float32"
    c.log_every_steps = 2
    c.progress_bar = False
    c.eval.density_bins = 8
    c.eval.reference_bins = 32
    c.eval.residual_bins = 10
    return c
