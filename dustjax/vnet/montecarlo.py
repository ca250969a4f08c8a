"""The Monte Carlo of `dustjax.vnet.apply` fused into one program on the devices.

`apply.monte_carlo` redraws E ~ N(E, sigma_E), grids, predicts and accumulates the moments one
batch per Python step. `monte_carlo` here does the same arithmetic (the same keys, batches and
moments, so the same numbers) as one jitted ``fori_loop`` over the batches: no host round trip
per batch, the redraws of a batch split over the local devices (a 1D mesh, axis ``"redraws"``),
the catalogue, the neighbours and the model's weights replicated.

Compilation is paid once per (model, region, batch, redraws, catalogue size class): the
predictor's closed-over weights are lifted out of the program into arguments
(`hoist_constants`), so the program neither embeds 100M parameters as constants (slow to
compile, and a poor key for the persistent compilation cache) nor changes when the catalogue
does (its stars are padded to one of 8 sizes an octave, `padded_size`); the compiled loop is
kept per predictor. A second process finds XLA's part in the persistent compilation cache and
redoes only JAX's tracing and lowering, so nothing here is an eager JAX op (each one is a small
program of its own) and the model is traced once per input shape (docs/benchmarks.md, issue 22).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dustjax import catalog as cat
from dustjax.geometry import Region
from dustjax.los import los_operator
from dustjax.sharding import make_mesh
from dustjax.vnet import gridding

MC_AXIS = "redraws"

_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_of(predictor) -> dict:
    """The compiled programs kept for `predictor` (a fresh dict if it cannot be weakly held)."""
    try:
        return _PROGRAMS.setdefault(predictor, {})
    except TypeError:
        return {}


def hoist_constants(fn: Callable, *example) -> tuple[Callable, list]:
    """``(pure, consts)`` with ``pure(consts, *args) == fn(*args)`` for args shaped as `example`:
    the arrays `fn` closes over (e.g. a model's weights) become arguments of ``pure``.

    `fn` is traced once (its jaxpr and output structure together): a V-net trace costs ~0.1 s
    of Python, paid again in every process since JAX's persistent cache keeps only XLA's part.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example)
    jaxpr = closed.jaxpr
    out_tree = jax.tree.structure(out_shape)

    def pure(consts, *args):
        flat = jax.core.eval_jaxpr(jaxpr, consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(out_tree, flat)

    return pure, list(closed.consts)


def padded_size(n: int) -> int:
    """`n` rounded up to 8-15 times a power of two (<= 1/8 more): the compacted catalogue's
    length, so that catalogues of about the same size share one compiled program."""
    step = 1 << max(0, int(n).bit_length() - 4)
    return -(-int(n) // step) * step


def redraw_inputs(knn: gridding.KNNWeights, catalog: cat.StarCatalog):
    """``(ext, sig, idx, w)`` (numpy) for `redraw_cubes`: the extinctions and errors of the stars
    that are a neighbour of some cell (`KNNWeights.compact`), padded to `padded_size` with
    zeros that no cell reads, and the neighbour table indexing into them."""
    used, small = knn.compact()
    size = padded_size(len(used))
    ext = np.zeros(size, np.float32)
    sig = np.zeros(size, np.float32)
    ext[: len(used)] = catalog.extinction[used]
    sig[: len(used)] = catalog.sigma_extinction[used]
    return ext, sig, np.asarray(small.indices, np.int32), np.asarray(small.weights, np.float32)


def redraw_cubes(key, ext, sig, idx, w, batch_size: int, shape):
    """``(batch_size, *shape)`` cubes of E ~ N(ext, sig) gridded by eq. 5, clipped at 0: the one
    redraw-and-grid step (`dustjax.vnet.apply.redraw_gridder` closes it over a catalogue)."""
    draws = ext + sig * jax.random.normal(key, (batch_size, ext.shape[0]), ext.dtype)
    cubes = jnp.sum(jnp.take(draws, idx, axis=1) * w, axis=-1).reshape(batch_size, *shape)
    return jnp.maximum(cubes, 0.0)


def _program(predictor, batch_size: int, shape, num_redraws: int, num_steps: int, fill, mesh):
    """The jitted fused loop for `predictor` (cached while the predictor lives): `num_steps`
    batches from the batch index ``first`` (an argument) on."""
    key = (batch_size, tuple(shape), num_redraws, num_steps, fill, mesh)
    per_predictor = _cache_of(predictor)
    if key in per_predictor:
        return per_predictor[key]
    example = jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32)
    pure, consts = hoist_constants(predictor, example)
    split = NamedSharding(mesh, P(MC_AXIS))
    whole = NamedSharding(mesh, P())

    def run(consts, ext, sig, idx, w, ref, op, mask, seed, first):
        base = jax.random.key(seed)
        ref_ext = op(ref)

        def body(i, carry):
            b = first + i  # the batch's global index: its key and its redraws' numbers
            draw_key, fill_key = jax.random.split(jax.random.fold_in(base, b))
            cubes = redraw_cubes(draw_key, ext, sig, idx, w, batch_size, shape)
            if fill is not None:
                cubes = fill(cubes, mask, fill_key)
            cubes = jax.lax.with_sharding_constraint(cubes, split)
            density = pure(consts, cubes)
            extinction = op(density)
            valid = (b * batch_size + jnp.arange(batch_size)) < num_redraws
            v = valid.astype(jnp.float32)[:, None, None, None]
            dd = (density - ref) * v
            de = (extinction - ref_ext) * v
            s1, s2, e1, e2 = carry
            return (s1 + dd.sum(0), s2 + (dd**2).sum(0), e1 + de.sum(0), e2 + (de**2).sum(0))

        zeros = jnp.zeros(shape, jnp.float32)
        return jax.lax.fori_loop(0, num_steps, body, (zeros,) * 4)

    program = (jax.jit(run, out_shardings=whole), consts, whole)
    per_predictor[key] = program
    return program


def predict_one(predictor, extinction) -> np.ndarray:
    """``predictor`` on one cube ``(nx, ny, nz)``, compiled with its weights as arguments (once
    per predictor and shape, and a small key for the persistent compilation cache)."""
    x = np.asarray(extinction, np.float32)[None]  # numpy: no eager (compiled) JAX op
    key = ("predict_one", x.shape)
    per_predictor = _cache_of(predictor)
    if key not in per_predictor:
        pure, consts = hoist_constants(predictor, jax.ShapeDtypeStruct(x.shape, x.dtype))
        per_predictor[key] = (jax.jit(pure), consts)
    run, consts = per_predictor[key]
    return np.asarray(run(consts, x))[0]


def monte_carlo(
    predictor,
    knn: gridding.KNNWeights,
    catalog: cat.StarCatalog,
    region: Region,
    *,
    num_redraws: int = 300,
    batch_size: int = 16,
    seed: int = 0,
    inside_mask=None,
    reference=None,
    num_devices: int | None = None,
    fill=None,
    over_processes: bool = True,
) -> dict[str, np.ndarray]:
    """`dustjax.vnet.apply.monte_carlo` as one program on the local devices (same arguments,
    same result for the same ``batch_size``; ``num_devices`` limits the devices used).

    ``batch_size`` is rounded up to a multiple of the devices (the extra redraws of the last
    batch are masked, as the padding of a short last batch is). With ``inside_mask``,
    ``fill(cubes, inside_mask, key)`` fills the cells outside (`apply.fill_outside`).

    Several processes (`dustjax.distributed`; ``over_processes=False`` turns it off): process
    p runs its block of the batches (the same keys as one process uses for them) on its local
    devices, then the processes add their sums (`process_allgather`), around the reference of
    process 0: the same moments as one process, up to the order of the float32 sums. Every
    process must call it with the same catalogue and arguments.
    """
    if num_redraws < 2:
        raise ValueError(f"num_redraws must be >= 2 for a dispersion, got {num_redraws}")
    if (inside_mask is None) != (fill is None):
        raise ValueError("give inside_mask and fill together (apply.fill_outside)")
    mesh = make_mesh(num_devices, MC_AXIS, devices=jax.local_devices())
    batch_size = int(max(1, min(batch_size, num_redraws)))
    batch_size = -(-batch_size // mesh.size) * mesh.size
    shape = tuple(region.shape)
    op = los_operator(region)
    has_mask = inside_mask is not None
    processes = jax.process_count() if over_processes else 1
    num_batches = -(-num_redraws // batch_size)
    num_steps = -(-num_batches // processes)  # batches past the last are masked (valid)
    first = (jax.process_index() if processes > 1 else 0) * num_steps
    run, consts, whole = _program(predictor, batch_size, shape, num_redraws, num_steps, fill,
                                  mesh)  # fmt: skip

    # Inputs as numpy and the key made in the program: an eager JAX op (zeros, op(ref),
    # random.key) is a small program of its own, traced and lowered again in every process.
    put = lambda x: jax.device_put(x, whole)  # noqa: E731
    ref = np.zeros(shape, np.float32) if reference is None else np.asarray(reference, np.float32)
    if processes > 1:  # all processes' sums around one reference
        from jax.experimental import multihost_utils

        ref = np.asarray(multihost_utils.broadcast_one_to_all(ref), np.float32)
    mask = np.asarray(inside_mask) if has_mask else np.zeros((), bool)
    s1, s2, e1, e2 = run(
        put(consts),
        *(put(x) for x in redraw_inputs(knn, catalog)),
        put(ref),
        put(op),
        put(mask),
        np.uint32(seed % 2**32),  # jax.random.key(seed)'s own 32 bits (no x64)
        np.int32(first),
    )
    sums = np.stack([np.asarray(x) for x in (s1, s2, e1, e2)])
    if processes > 1:
        from jax.experimental import multihost_utils

        sums = np.asarray(multihost_utils.process_allgather(sums), np.float64).sum(axis=0)
    s1, s2, e1, e2 = sums.astype(np.float64)
    n = num_redraws
    mean = ref.astype(np.float64) + s1 / n
    var = np.clip((s2 - s1**2 / n) / (n - 1), 0.0, None)
    ext_var = np.clip((e2 - e1**2 / n) / (n - 1), 0.0, None)
    return dict(
        density_mean=mean.astype(np.float32),
        density_std=np.sqrt(var).astype(np.float32),
        extinction_std=np.sqrt(ext_var).astype(np.float32),
    )
