r"""A/B of the density normalisation and loss (issue 17 item 3) at CPU size.

    python -m tools.vnet_normalisation_ab --out=/tmp/ab.json [--steps=60]

Three arms on the same data (SR box at 16^3, `dustjax.sims.sky` cubes observed as 2,000-6,000-star
catalogues, `experiments/configs/vnet_sky_test.py` otherwise), scored on the same validation
cubes in mag/pc (skill, dust recovered overall and per truth decade, Pearson r of
log10(rho + 1e-5)):
  eq12_mse:   the paper's eqs. 1-2, MSE, ReLU head;
  asinh_mse:  asinh normalisation, MSE, linear head;
  asinh_nll:  asinh normalisation, beta-NLL with a variance head (the real-sky recipe).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

ARMS = {
    "eq12_mse": dict(task="density_from_extinction", normalisation="eq12", num_outputs=1,
                     output_head="relu", output_bias_init=0.1),
    "asinh_mse": dict(task="density_from_extinction", normalisation="asinh",
                      num_outputs=1, output_head="linear", output_bias_init=1.0),
    "asinh_nll": dict(task="density_from_extinction_nll", normalisation="asinh",
                      num_outputs=2, output_head="linear", output_bias_init=1.0),
}  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.vnet_normalisation_ab")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--arms", default=",".join(ARMS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from dustjax import training
    from experiments.configs.vnet_sky_test import get_config
    from tools.vnet_sky_device import calibrate

    results = {}
    for name in args.arms.split(","):
        arm = ARMS[name]
        c = get_config()
        c.data.shape = (16, 16, 16)
        c.data.simulator = "sky"
        c.data.simulator_params = {}
        c.observation.num_stars_range = (2_000.0, 6_000.0)
        c.data.steps_per_epoch = args.steps // 2
        c.num_epochs = 2
        c.data.eval_steps = 4
        c.task = arm["task"]
        c.data.normalisation = arm["normalisation"]
        for key in ("num_outputs", "output_head", "output_bias_init"):
            c.model.kwargs[key] = arm[key]
        t0 = time.perf_counter()
        workdir = f"/tmp/vt_ab/{name}"
        training.train_and_evaluate(c, workdir)
        res = calibrate(workdir, c, num_batches=4)
        res["wall_s"] = time.perf_counter() - t0
        results[name] = res
        print(name, json.dumps(res), flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(steps=args.steps, arms=ARMS, results=results), f, indent=1)


if __name__ == "__main__":
    main()
