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
    c.num_epochs = 40
    c.early_stopping.patience = 8
    c.eval_batch_size = 32
    c.progress_bar = False
    c.log_every_steps = 50

    c.study = ml_collections.ConfigDict()
    c.study.sigma = 0.1  # the accuracy of the figures and tables: |error| < sigma dex
    c.study.max_train_seconds = 0.0  # default budget of one point's training (0 = none)
    c.study.filters_levels = study_block(
        base_features=(16, 32, 64), levels=(2, 3, 4, 5), convs_per_block=1, seeds=(0,),
        max_train_seconds=25.0,
    )  # fmt: skip
    c.study.convs_per_block = study_block(
        base_features=(64,), levels=(4,), convs=(1, 2), seeds=(0, 1), max_train_seconds=40.0
    )
    # (virtual batch, training-set sizes): fig. 22 (batch 32) and fig. 23 (batch 16)
    c.study.train_size = study_block(
        series=((32, (7, 19, 39, 59, 79)), (16, (8, 16, 32, 48, 64))), seeds=(0,),
        passes_per_epoch=10, num_epochs=30, max_train_seconds=15.0,
    )  # fmt: skip
    c.study.kan = study_block(
        # heaviest first: two shards (--shard=i/2) take ukan + unet and unet_kan_branch + knet
        models=("ukan", "unet_kan_branch", "unet", "knet"), seeds=(0,), ukan_levels=5,
        ukan_kan_levels=3, kan_branch=(10, 10, 10, 1), num_epochs=80, patience=10,
        max_train_seconds=75.0,
    )  # fmt: skip
    return c
