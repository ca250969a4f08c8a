"""Defaults shared by the V-net configs (every key a run may override lives here).

A config module defines ``get_config()`` returning an ml_collections ConfigDict;
experiments/train.py loads it with ``--config=experiments/configs/NAME.py`` and any key can be
overridden on the command line (``--config.optimizer.learning_rate=3e-4``); a key that does not
exist is an error naming it.
"""

from __future__ import annotations

import ml_collections

from dustjax.models.vnet import PAPER_FEATURES


def vnet_config(name: str, region: str) -> ml_collections.ConfigDict:
    """The paper's V-net setting for `region` ("SR" or "LR"), sect. 3."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0
    c.task = "density_from_extinction"  # extinction -> density, MSE on rho_hat (eq. 3)

    c.model = ml_collections.ConfigDict()
    c.model.name = "vnet"
    c.model.kwargs = ml_collections.ConfigDict(
        dict(
            features=PAPER_FEATURES,
            padding="REFLECT",
            remat=False,
            bn_momentum=0.99,
            bn_groups=1,  # N: batch-norm statistics per B/N examples (per device if N = devices)
            output_bias_init=0.1,  # the head's first output (its kernel starts at zero)
            output_leak=0.01,  # the final ReLU's gradient below zero: it cannot die
            up_transpose_kernel=True,  # False reads checkpoints written before 2026-11-22
            conv_kernel_layout="ODHWI",  # "DHWIO" reads checkpoints written before 2026-11-22
            input_dtype="",  # "" = the compute dtype; "float32": unrounded input (vnet_sr_los)
        )
    )
    c.model.input_shape = ()  # () = the region's (nx, ny, nz, 1)
    # Not in the paper: 4 input channels with each cell's line-of-sight direction and distance
    # (dustjax.models.vnet.los_channels); measured in docs/validation.md.
    c.model.los_channels = False

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfrecord"  # or "simulate": fresh cubes on the device every step
    c.data.region = region
    c.data.shape = ()  # () = the region's 32^3; e.g. (64, 64, 64)
    c.data.data_dir = f"data/{region}"
    c.data.num_examples = 10_000  # dataset size (made if missing); also the simulate-source split
    c.data.simulator = ""  # "" = the region's (SR: levy, LR: lognormal)
    c.data.simulator_params = ml_collections.ConfigDict()  # overrides of the simulator's defaults
    c.data.steps_per_epoch = 0  # 0 = one pass over the train split
    c.data.eval_steps = 0  # 0 = the whole validation split

    c.batch_size = 32  # global mini-batch (paper sect. 3.1), split over the devices
    c.eval_batch_size = 0  # 0 = batch_size
    c.num_epochs = 200
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adam",
            learning_rate=1e-4,
            b1=0.9,
            b2=0.999,
            weight_decay=0.0,
            grad_clip_norm=0.0,
            ema_decay=0.0,  # > 0: evaluate and predict with a moving average of the weights
        )
    )
    # Why 1e-4 and a warm-up: Adam moves each weight by ~lr per step whatever its gradient's
    # size, and the last conv sums 27 x 128 inputs, so at the start (when every gradient agrees
    # in sign) lr = 1e-3 shifts the output by ~1 per step against targets rho_hat ~ 0.01-0.5: every
    # pre-activation goes negative and the final ReLU stops all gradients (the network predicts
    # zero everywhere; seen on the H200 with the paper's SR setting at lr 1e-3, epochs 1-20 stuck
    # at the zero-prediction loss). The warm-up keeps the first steps small until the gradients
    # stop agreeing.
    c.schedule = ml_collections.ConfigDict(
        dict(name="warmup_constant", warmup_epochs=1.0, factor=0.5, patience=5, rtol=1e-4, atol=0.0,
             cooldown=0, accumulation_size=0, min_scale=0.0)
    )  # fmt: skip
    # Stop when the validation loss has not improved by min_delta for `patience` epochs; the
    # model of minimum validation loss is the one kept (paper sect. 3.2).
    c.early_stopping = ml_collections.ConfigDict(dict(patience=40, min_delta=0.0))
    # Collapse guard (0 = off, the paper's recipe): when an epoch ends with a validation loss
    # above `factor` x the best so far (a loss spike; at Adam rate 1e-3 the V-net's output ReLU
    # died in such spikes on the H200 and never fully recovered, docs/validation.md), restore the
    # best epoch's weights and Adam moments, keep the step counters (the rate schedule and the
    # data stream go on), and continue; at most `max_rollbacks` times a run. Only if the epoch's
    # training loss also rose above `train_factor` x its lowest (0: any validation spike): a
    # validation spike alone comes from the batch-norm running statistics, not the weights
    # (dustjax.training.guard.collapse_verdict; both kinds seen in one 4-GPU run,
    # docs/validation.md).
    c.collapse_guard = ml_collections.ConfigDict(
        dict(factor=0.0, train_factor=1.3, max_rollbacks=5)
    )
    c.compute_dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU
    c.num_devices = 0  # 0 = all local devices
    c.shard_optimizer_state = False  # True: Adam moments split over the devices (ZeRO-1)
    c.log_every_steps = 10
    c.progress_bar = True

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 0  # 0 = eval_batch_size
    c.eval.max_cubes = 0  # 0 = the whole test split
    c.eval.density_bins = 100
    c.eval.after_training = False  # True: evaluate the test split when training ends (CPU)
    return c
