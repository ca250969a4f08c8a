r"""The U-Net studies of Ribeiro 2025 part II (figs. 14, 16, 22-23) and the KAN variants, at a
size for one H200 within a few minutes of device time.

    python -m experiments.polaris_study --config=experiments/configs/polaris_study.py \
        --study=filters_levels --root=runs/polaris_study        # fig. 14
    ... --study=convs_per_block                                  # fig. 16
    ... --study=train_size                                       # figs. 22-23
    ... --study=kan                                              # K-Net, U-KAN, KAN branch

Hardware: one GPU (bfloat16). Data: the paper's setting (512^3 clouds at 0.05 pc, 128 x 128
crops of 6.4 pc) but 500 crops (400 training / 100 validation; the paper's fig. 14 set had 29 / 8),
simulated once and kept in <root>/data. Each point is the paper U-Net (attention gates, Adam 1e-3,
reduce-on-plateau, dihedral augmentation) with the study's settings changed; every point is
bounded by a training time budget (study.<name>.max_train_seconds), and the entry point's
--deadline_s bounds the whole study. tools/device/issue21s.sh runs the four on one GPU.
"""

import ml_collections

from dustjax.configs.unet_common import unet_config


def study_block(**kwargs) -> ml_collections.ConfigDict:
    """One study's settings; every block has a training budget per point (0 = the default)."""
    kwargs.setdefault("max_train_seconds", 0.0)
    return ml_collections.ConfigDict(kwargs)


def get_config():
    c = unet_config("polaris_study")
    c.data.num_crops = 500
    c.num_epochs = 40  # of 5 passes
    c.early_stopping.patience = 6
    c.eval_batch_size = 32
    c.progress_bar = False
    c.log_every_steps = 50
    c.plot_every_epochs = 0  # the loss curve once, at the end (it costs more than an epoch)
    # Five passes over the 400 training crops an epoch (300 s of a first H200 run: an epoch's
    # validation, checkpoint and plot cost ~1 s against 0.1 s of training for one pass)
    c.data.passes_per_epoch = 5

    c.study = ml_collections.ConfigDict()
    c.study.sigma = 0.1  # the accuracy of the figures and tables: |error| < sigma dex
    # default training budget of a point, seconds after its first epoch (0 = none)
    c.study.max_train_seconds = 0.0
    c.study.filters_levels = study_block(
        base_features=(16, 32, 64), levels=(2, 3, 4, 5), convs_per_block=1, seeds=(0,),
        max_train_seconds=30.0,
    )  # fmt: skip
    c.study.convs_per_block = study_block(
        base_features=(64,), levels=(4,), convs=(1, 2), seeds=(0, 1), max_train_seconds=30.0
    )
    # (virtual batch, training-set sizes): fig. 22 (batch 32) and fig. 23 (batch 16); a fixed
    # 300 passes each (10 epochs of 30), as the paper's fixed number of epochs
    c.study.train_size = study_block(
        series=((32, (7, 19, 39, 59, 79)), (16, (8, 16, 32, 48, 64))), seeds=(0,),
        passes_per_epoch=30, num_epochs=10, max_train_seconds=25.0,
    )  # fmt: skip
    c.study.kan = study_block(
        # heaviest first: two shards (--shard=i/2) take ukan + unet and unet_kan_branch + knet
        models=("ukan", "unet_kan_branch", "unet", "knet"), seeds=(0,), ukan_levels=5,
        ukan_kan_levels=3, kan_branch=(10, 10, 10, 1), num_epochs=80, patience=6,
        max_train_seconds=60.0,
    )  # fmt: skip
    return c
