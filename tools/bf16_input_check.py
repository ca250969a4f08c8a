r"""Does rounding the input extinction to bfloat16 lose the small-scale density? (issue 3)

    python -m tools.bf16_input_check --num_cubes=4 --iterations=3000

Simulates SR cubes, then recovers the density from the extinction by least squares through the
exact LOS operator (conjugate gradients on the normal equations, no learning involved), once
from the float32 extinction and once from E_hat = ln(1 + E) rounded to bfloat16 as the V-net
sees it. Prints the dispersion of recovered - true density (mag/pc) and c_r(k) of both: if they
agree, bfloat16 input is not what limits the network's small scales. The float32 line also says
how much of the density the extinction determines at all (an upper bound on what no prior adds).
A last line does the same for a local estimate, the derivative of the float32 extinction along
the line of sight (central difference one cell long, trilinear interpolation): what a stencil,
rather than an inversion of the cell-by-cell integral, recovers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dustjax import sims
from dustjax.geometry import Region
from dustjax.los import los_operator
from dustjax.vnet import metrics, transforms

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("num_cubes", 4, "SR cubes simulated.")
    flags.DEFINE_integer("iterations", 400, "Conjugate-gradient iterations.")
    flags.DEFINE_integer("seed", 0, "Seed of the cubes.")


def least_squares_density(operator, extinction, iterations: int):
    """CG on L^T L rho = L^T E, per cube, from rho = 0."""
    axes = (1, 2, 3)
    b = operator.transpose(extinction)
    x, r = jnp.zeros_like(b), b
    p, rs = r, jnp.sum(r * r, axis=axes, keepdims=True)

    def body(_, carry):
        x, r, p, rs = carry
        ap = operator.transpose(operator(p))
        alpha = rs / jnp.sum(p * ap, axis=axes, keepdims=True)
        x, r = x + alpha * p, r - alpha * ap
        rs_new = jnp.sum(r * r, axis=axes, keepdims=True)
        return x, r, r + rs_new / rs * p, rs_new

    return jax.lax.fori_loop(0, iterations, body, (x, r, p, rs))[0]


def radial_difference_density(region: Region, extinction, step_cells: float = 1.0):
    """rho ~ dE/dr along the unit vector from the Sun, by a central difference of `step_cells`
    cells with trilinear interpolation of E (cubes ``(n, nx, ny, nz)``, edges clamped)."""
    centres = jnp.asarray(region.cell_centres_pc())
    rhat = centres / jnp.linalg.norm(centres, axis=-1, keepdims=True)
    h = step_cells * region.cell_size_pc[0]
    size, lower = jnp.asarray(region.cell_size_pc), jnp.asarray(region.lower_pc)

    def sample(cube, points):
        coords = jnp.moveaxis((points - lower) / size - 0.5, -1, 0)
        return jax.scipy.ndimage.map_coordinates(cube, list(coords), order=1, mode="nearest")

    def one(cube):
        return (sample(cube, centres + h * rhat) - sample(cube, centres - h * rhat)) / (2 * h)

    return jax.vmap(one)(extinction)


def report(label: str, region: Region, density, estimate) -> str:
    """One line: residual std and c_r(k) of `estimate` against the true `density`."""
    table = metrics.cross_correlation_coefficient(
        np.asarray(density), np.asarray(estimate), region.cell_size_pc
    )
    return (
        f"{label}: density residual std {float(jnp.std(estimate - density)):.6f} mag/pc; "
        f"c_r at k = {np.round(table['k'][[0, 6, 14, -2]], 2)}: "
        f"{np.round(table['c_r'][[0, 6, 14, -2]], 3)}; min c_r for k in [0.046, 0.893] "
        f"pc^-1: {metrics.min_c_r_in_range(table, 0.046, 0.893):.3f}"
    )


def main(argv):
    del argv
    region = Region.named("SR")
    operator = los_operator(region)
    keys = jax.random.split(jax.random.key(FLAGS.seed), FLAGS.num_cubes)
    density, extinction = sims.simulate_batch_fn(region)(keys)
    e_hat = transforms.normalise_extinction(extinction)
    solve = jax.jit(least_squares_density, static_argnums=2)
    for name, e in (("float32", e_hat), ("bfloat16", e_hat.astype(jnp.bfloat16))):
        observed = transforms.denormalise_extinction(e.astype(jnp.float32))
        recovered = solve(operator, observed, FLAGS.iterations)
        error = float(jnp.std(observed - extinction))
        print(report(f"{name:>8} input (extinction error std {error:.2e} mag)", region, density,
                     recovered))  # fmt: skip
    local = radial_difference_density(region, extinction)
    print(report("radial difference (float32)", region, density, local))


if __name__ == "__main__":
    define_flags()
    app.run(main)
