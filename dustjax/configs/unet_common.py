"""Defaults shared by the POLARIS U-Net configs (every key a run may override lives here).

`unet_config` is the base of every U-Net config (unet, knet, ukan, unet_kan_branch, unet_cpu,
unet_test); experiments/configs/unet.py is the paper setting.
"""

from __future__ import annotations

import ml_collections


def unet_config(name: str = "unet", model: str = "unet") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0
    c.task = "polaris"  # shifted log10 N -> shifted log10 target, MSE (eq. 4), dihedral aug.

    c.model = ml_collections.ConfigDict()
    c.model.name = model  # unet | knet | ukan | unet_kan_branch
    c.model.kwargs = ml_collections.ConfigDict(
        dict(levels=4, base_features=64, convs_per_block=1, attention=True, padding="REFLECT",
             bn_momentum=0.9)
    )  # fmt: skip
    c.model.input_shape = (128, 128, 1)

    c.data = ml_collections.ConfigDict()
    c.data.source = "polaris_simulate"  # or "polaris_tfrecord" (data_gen/make_clouds.py)
    c.data.data_dir = "data/clouds"
    c.data.seed = 0  # the dataset's seed (independent of the training seed)
    c.data.target = "mass_weighted"  # mass_weighted (<n>_M) | volume_weighted | max
    c.data.num_crops = 3000
    c.data.validation_fraction = 0.2
    c.data.grid = ml_collections.ConfigDict(
        dict(n_cells=512, cell_size_pc=0.05, num_filaments=16, points_per_filament=512,
             num_cores=48, core_window_cells=15)
    )  # fmt: skip
    c.data.crop = ml_collections.ConfigDict(
        dict(crop_size=128, attempts_per_face=400, smoothness_weight=1.0, difference_weight=0.0,
             steepness=4.0, offset_quantile=0.5, max_diffuse_fraction=0.9,
             diffuse_column_cm2=1e21)
    )  # fmt: skip
    c.data.cloud_ranges = ml_collections.ConfigDict(
        dict(mach_range=(4.0, 12.0), mean_density_range_cm3=(50.0, 300.0),
             spectral_index_range=(3.4, 4.0), envelope_depth_range_dex=(0.3, 1.2))
    )  # fmt: skip
    c.data.steps_per_epoch = 0  # 0 = one pass over the training crops
    c.data.num_train_crops = 0  # 0 = all; else the first that many (training-set-size study)
    c.data.passes_per_epoch = 1  # passes over the training crops per epoch (each drops n % batch)

    c.batch_size = 32
    c.eval_batch_size = 0
    c.num_epochs = 80
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.0,
             grad_clip_norm=0.0)
    )  # fmt: skip
    c.schedule = ml_collections.ConfigDict(
        dict(name="reduce_on_plateau", warmup_epochs=1.0, factor=0.5, patience=5, rtol=1e-3,
             atol=0.0, cooldown=0, accumulation_size=0, min_scale=1e-3)
    )  # fmt: skip
    c.early_stopping = ml_collections.ConfigDict(dict(patience=20, min_delta=0.0))
    c.max_train_seconds = 0.0  # wall-clock budget of one training call after its first epoch
    c.plot_every_epochs = 1  # redraw the loss curve every n epochs (0 = only at the end)
    c.compute_dtype = "auto"
    c.num_devices = 0
    c.log_every_steps = 10
    c.progress_bar = True

    c.eval = ml_collections.ConfigDict()
    c.eval.sigmas = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)  # accuracy eqs. 5-6, dex
    c.eval.density_bins = 24  # residuals per bin of true log10 density (fig. 11)
    c.eval.reference_bins = 256  # knots of the pointwise reference
    c.eval.residual_bins = 100  # appendix C baseline bins
    c.eval.residual_window = 5  # and its moving average
    c.eval.tile_predictions_per_pixel = 4
    return c
