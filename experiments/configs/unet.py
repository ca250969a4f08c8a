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

`unet_config` here is the base of every U-Net config (knet, ukan, unet_kan_branch, unet_cpu,
unet_test): every key a run may override lives in it.
"""

from __future__ import annotations

import ml_collections


def unet_config(name: str = "unet", model: str = "unet") -> ml_collections.ConfigDict:
    from dustjax import polaris

    polaris.register_with_engine()  # the "polaris" task and data sources, the U-Net models

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


def get_config():
    return unet_config()
