"""Symmetries of a region's line-of-sight geometry, and predictions averaged over them.

The V-net sees extinction integrated outwards from the Sun. A reflection of Y or Z, or the swap
of Y and Z, that maps the region onto itself fixes the Sun and maps every line of sight onto
another of the same length, so a transformed extinction cube is again a possible extinction cube
of the same region. Where the simulations' statistics are invariant too, a trained network ``f``
estimates the density of ``E`` equally well as ``g^-1 f(g E)`` for every such ``g``:

- SR (Levy flights with isotropic steps; Y and Z both span [-96, 96] pc): the eight elements of
  the square's symmetry group acting on (Y, Z), ``group="dihedral"``;
- LR's log-normal field: the reflection of Y only, ``group="flip_y"``; the disc lies along Z
  (no Y-Z swap), and the simulator pins the densest layer to the cell centred at Z = -30 pc, so
  reflecting Z is not exact either. The appendix-A Levy flights of LR (starts within
  |Z| < 200 pc) have the four reflections of Y and Z, ``group="flips"``.

Averaging the network over the group (test-time augmentation) gives a prediction that is exactly
equivariant and removes the part of the error that depends on orientation, at the cost of one
forward pass per element. `symmetrised` wraps any ``predict(cubes) -> cubes``; arrays are
``(B, X, Y, Z, ...)`` (axis 0 the batch, axes 1-3 the region's X, Y, Z, see `dustjax.geometry`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp

from dustjax.geometry import Region, RegionError

GROUPS = ("none", "flip_y", "flips", "dihedral")  # each a subgroup of the next

# The largest group under which each simulator's statistics are invariant (`dustjax.sims`).
SIMULATOR_GROUPS = {"levy": "dihedral", "levy_lr": "flips", "lognormal": "flip_y"}


@dataclasses.dataclass(frozen=True)
class Transform:
    """Reflect Y and/or Z, then (optionally) swap Y and Z; acts on axes 1-3 = X, Y, Z."""

    flip_y: bool = False
    flip_z: bool = False
    swap_yz: bool = False

    def apply(self, x):
        if self.flip_y:
            x = jnp.flip(x, axis=2)
        if self.flip_z:
            x = jnp.flip(x, axis=3)
        if self.swap_yz:
            x = jnp.swapaxes(x, 2, 3)
        return x

    def invert(self, x):
        # both steps are involutions: undo the swap first, then the reflections
        if self.swap_yz:
            x = jnp.swapaxes(x, 2, 3)
        if self.flip_y:
            x = jnp.flip(x, axis=2)
        if self.flip_z:
            x = jnp.flip(x, axis=3)
        return x


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise ValueError(f"unknown symmetry group {group!r}; choose one of {', '.join(GROUPS)}")


def _symmetric_about_sun(region: Region, axis: int) -> bool:
    lo, hi = region.lower_pc[axis], region.upper_pc[axis]
    return math.isclose(lo, -hi, rel_tol=1e-9, abs_tol=1e-9 * (hi - lo))


def region_symmetries(region: Region, group: str, simulator: str | None = None) -> list[Transform]:
    """The transforms of `group` (one of `GROUPS`), after checking that `region` has them and,
    with `simulator` given, that the training simulations have them too (`check_simulator`).

    ``"flip_y"`` needs Y bounds symmetric about the Sun (lower = -upper), ``"flips"`` Y and Z
    bounds; ``"dihedral"`` also needs the Y and Z extents and cell counts equal. The identity
    comes first.
    """
    _check_group(group)
    if simulator is not None:
        check_simulator(group, simulator)
    if group == "none":
        return [Transform()]
    for axis, name in ((1, "Y"), (2, "Z"))[: 1 if group == "flip_y" else 2]:
        if not _symmetric_about_sun(region, axis):
            raise RegionError(
                f"{region} is not symmetric about the Sun along {name} "
                f"([{region.lower_pc[axis]}, {region.upper_pc[axis]}] pc), so reflecting {name} "
                "does not map its lines of sight onto each other; use group='none'"
            )
    swaps = [False]
    if group == "dihedral":
        if region.shape[1] != region.shape[2] or not math.isclose(
            region.upper_pc[1], region.upper_pc[2], rel_tol=1e-9
        ):
            raise RegionError(
                f"{region}: Y and Z differ in extent or cell count, so swapping them does not map "
                "the region onto itself; use group='flips'"
            )
        swaps = [False, True]
    z_flips = (False,) if group == "flip_y" else (False, True)
    return [Transform(fy, fz, s) for s, fy, fz in itertools.product(swaps, (False, True), z_flips)]


def check_simulator(group: str, simulator: str) -> None:
    """`ValueError` unless the statistics of `simulator` (the training data) have `group`.

    A network trained on data without a symmetry has no reason to respect it: averaging over
    the Y-Z swap would mix LR's disc (along Z) with a disc along Y.
    """
    _check_group(group)
    if group == "none":
        return
    allowed = SIMULATOR_GROUPS.get(simulator)
    if allowed is None:
        raise ValueError(
            f"no known symmetry for simulator {simulator!r} (known: {sorted(SIMULATOR_GROUPS)}); "
            "use group='none'"
        )
    if GROUPS.index(group) > GROUPS.index(allowed):
        raise ValueError(
            f"the {simulator!r} simulations the model was trained on are symmetric under "
            f"{allowed!r} only, not {group!r}; use --symmetry={allowed}"
        )


def symmetrised(predict: Callable, transforms: Sequence[Transform]) -> Callable:
    """``x -> mean over g of g^-1 predict(g x)``: `predict` averaged over `transforms`.

    With the transforms of a group the result is equivariant: ``p(g x) = g p(x)`` for every g.
    With ``[Transform()]`` it is `predict` itself. Each element costs one call of `predict`.
    """
    transforms = list(transforms)
    if not transforms:
        raise ValueError("symmetrised needs at least one transform")
    if transforms == [Transform()]:
        return predict

    def averaged(x):
        total = None
        for g in transforms:
            y = g.invert(jnp.asarray(predict(g.apply(x)), jnp.float32))
            total = y if total is None else total + y
        return total / len(transforms)

    return averaged
