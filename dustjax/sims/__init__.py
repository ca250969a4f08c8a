"""Simulated dust cubes for training: a density cube and its exact extinction cube.

`SIMULATORS` names every density simulator; `DEFAULT_SIMULATOR` gives the paper's choice per
region (SR: Levy flights; LR: log-normal random field; "levy_lr" is the appendix-A variant);
"sky" draws discs, clouds and cavities from real-sky priors (`dustjax.sims.sky`).
`simulate_pair(key, region, simulator)` returns ``(density [mag/pc], extinction [mag])``, the
extinction being the density integrated by the region's exact LOS operator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from dustjax.geometry import Region
from dustjax.los import LOSOperator, los_operator
from dustjax.sims.grf import LOGNORMAL_LR, LognormalParams, lognormal_density
from dustjax.sims.levy import LEVY_LR, LEVY_SR, LevyParams, levy_density
from dustjax.sims.sky import SKY, SKY_LR, SKY_SR, SkyParams, sky_density

SIMULATORS: dict[str, tuple[Callable, object]] = {
    "levy": (levy_density, LEVY_SR),
    "levy_lr": (levy_density, LEVY_LR),
    "lognormal": (lognormal_density, LOGNORMAL_LR),
    # Real-sky priors (issue 17); SKY takes its cloud population from the region (SR / LR).
    "sky": (sky_density, SKY),
}
DEFAULT_SIMULATOR = {"SR": "levy", "LR": "lognormal"}


def default_simulator(region: Region) -> str:
    return DEFAULT_SIMULATOR.get(region.name.split("@")[0], "levy")


def get_simulator(name: str, params=None) -> Callable[[jax.Array, Region], jax.Array]:
    """A density simulator ``f(key, region) -> density`` by name, with optional parameters."""
    if name not in SIMULATORS:
        raise ValueError(f"unknown simulator {name!r}; known: {sorted(SIMULATORS)}")
    fn, default_params = SIMULATORS[name]
    chosen = default_params if params is None else params
    return lambda key, region: fn(key, region, chosen)


def simulate_pair(
    key: jax.Array,
    region: Region,
    simulator: str | None = None,
    params=None,
    operator: LOSOperator | None = None,
):
    """One (density [mag/pc], extinction [mag]) pair, each of shape ``region.shape``."""
    density = get_simulator(simulator or default_simulator(region), params)(key, region)
    operator = los_operator(region) if operator is None else operator
    return density, operator(density)


def simulate_batch_fn(region: Region, simulator: str | None = None, params=None):
    """A jitted ``f(keys (B,)) -> (density, extinction)`` each ``(B, nx, ny, nz)``."""
    operator = los_operator(region)
    sim = get_simulator(simulator or default_simulator(region), params)

    # The operator is an argument, not a closed-over constant: its index and length arrays
    # (~25 MB for 32^3) would otherwise be embedded in the compiled program.
    @jax.jit
    def batch(keys, operator):
        density = jax.vmap(lambda k: sim(k, region))(keys)
        return density, operator(density)

    return functools.partial(batch, operator=operator)


__all__ = [
    "DEFAULT_SIMULATOR",
    "LEVY_LR",
    "LEVY_SR",
    "LOGNORMAL_LR",
    "LevyParams",
    "LognormalParams",
    "SKY",
    "SKY_LR",
    "SKY_SR",
    "SIMULATORS",
    "default_simulator",
    "get_simulator",
    "levy_density",
    "lognormal_density",
    "simulate_batch_fn",
    "simulate_pair",
    "sky_density",
    "SkyParams",
]
