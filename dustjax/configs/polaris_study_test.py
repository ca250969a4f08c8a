r"""The U-Net studies at test size: every study's grid in seconds on a CPU.

    python -m experiments.polaris_study --config=experiments/configs/polaris_study_test.py \
        --study=filters_levels --root=/tmp/polaris_study

Hardware: any (float32). Data and model as experiments/configs/unet_test.py (16 x 16 crops,
24 crops split 19 / 5, 2 levels x 4 filters), 2 epochs a point. Metric: none (it checks that the
batch runs train, skip, resume and draw; tests/polaris/test_studies.py runs it).
"""

import ml_collections

from dustjax.configs.polaris_study import study_block
from dustjax.configs.unet_test import get_config as unet_test_config


def get_config():
    c = unet_test_config()
    c.name = "polaris_study_test"
    c.eval_batch_size = 4
    c.study = ml_collections.ConfigDict()
    c.study.sigma = 0.1
    c.study.max_train_seconds = 0.0
    c.study.filters_levels = study_block(
        base_features=(4,), levels=(1, 2), convs_per_block=1, seeds=(0,)
    )
    c.study.convs_per_block = study_block(base_features=(4,), levels=(2,), convs=(1, 2), seeds=(0,))
    c.study.train_size = study_block(series=((4, (3, 8)),), seeds=(0,), passes_per_epoch=2)
    c.study.kan = study_block(
        models=("unet", "knet", "ukan", "unet_kan_branch"), seeds=(0,), ukan_levels=2,
        ukan_kan_levels=1, kan_branch=(4, 1),
    )  # fmt: skip
    return c
