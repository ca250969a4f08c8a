r"""SR V-net for the real sky (issue 17): sky-like cubes, catalogue observation in the loop,
asinh normalisation, variance head. Not the paper's recipe (that is `vnet_sr.py`).

    python -m experiments.train --config=experiments/configs/vnet_sky_sr.py \
        --workdir=workdirs/vnet_sky_sr
    # the device recipe (train ~N s, then calibrate the variance head):
    python -m tools.vnet_sky_device --regions=SR --train_seconds=150 --out=OUT

Hardware: one GPU (bfloat16, input block float32). Data: VS's "sky" simulator,
1.5 x 10^4 - 6 x 10^4 stars per cube uniform in the box, sigma_E = hypot(a, b E) with a in
[0.01, 0.08] mag, b in
[0.02, 0.10], distance errors 0-8 %, eq. 5 with k = 3 (`dustjax.vnet.observe`).
Time and metric: see docs/validation.md, "Real sky" (filled in from the device runs).
"""

from experiments.configs.vnet_sky_common import vnet_sky_config


def get_config():
    c = vnet_sky_config("vnet_sky_sr", "SR")
    c.model.kwargs.features = (64, 128, 256, 512)
    c.data.eval_steps = 4
    c.observation.echo = 8  # each observed batch feeds 8 steps (mirrored in Y every other one)
    c.data.steps_per_epoch = 500
    c.num_epochs = 8
    return c
