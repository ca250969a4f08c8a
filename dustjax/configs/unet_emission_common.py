"""Defaults of the multi-input (column density + 13CO) U-Net configs (Ribeiro 2025, part III).

`emission_config` turns a `unet_common.unet_config` into one whose input is log10 N plus 13CO
emission (`dustjax.polaris.multi_input`): task "polaris_emission", source
"polaris_emission_simulate", and ``data.emission`` (`EmissionSettings`). The input kind is
``data.emission.inputs`` ("column", "moments" or "ppv") and the target ``data.target``
("mass_weighted" <n>_M, sect. 8.1, or "max", sect. 8.2); the model's input channels follow.
"""

from __future__ import annotations

import ml_collections

from dustjax.configs.unet_common import unet_config


def emission_config(name: str, inputs: str = "ppv") -> ml_collections.ConfigDict:
    c = unet_config(name)
    c.task = "polaris_emission"
    c.data.source = "polaris_emission_simulate"
    c.model.input_shape = ()  # (crop, crop, 1 + emission channels), from the task
    c.data.score_target = "mass_weighted"  # crops are chosen independently of the target
    c.data.emission = ml_collections.ConfigDict(
        dict(inputs=inputs, num_channels=32, half_width_kms=12.0, oversample=2, subgrid=True,
             linewidth_index_range=(0.38, 0.5), linewidth_1pc_range_kms=(0.6, 1.1),
             temperature_range_k=(8.0, 15.0), temperature_index=0.0, solenoidal_weight=0.5,
             driving_scale_pc=20.0)
    )  # fmt: skip
    return c
