"""The star operator with a transpose that needs no contended scatter (issue 17's refinement cost).

`dustjax.inversion.StarOperator.transpose` scatter-adds N x K values (10^6 stars x ~60 cells on
the LR box) onto the few cells: on a GPU every add is an atomic on one of 32^3 addresses, and
the cells near the Sun take one from every star, so a FISTA step of the catalogue refinement
costs tens of ms. `BlockedStarOperator` keeps the same rows for ``apply`` and adds the
operator's entries sorted by cell, cut into blocks of ``block`` entries that each belong to one
cell: the transpose gathers the values of the blocks' stars (a gather, no atomics), sums each
block, and scatter-adds only one value per block (about N K / block + cells of them). Same
linear map; the sums run in another order (float32 rounding; tests).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.inversion import StarOperator

DEFAULT_BLOCK = 128


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class BlockedStarOperator:
    """`StarOperator`'s rows (``indices``, ``lengths``, for ``apply``) and its columns in blocks:
    ``t_rows[b, j]`` (star) and ``t_lengths[b, j]`` (length, zero on padding) of block b, whose
    entries all lie in cell ``t_cells[b]``."""

    indices: jax.Array
    lengths: jax.Array
    t_rows: jax.Array
    t_lengths: jax.Array
    t_cells: jax.Array
    shape: tuple[int, int, int] = dataclasses.field(metadata=dict(static=True))

    # the rows are StarOperator's (same fields ``indices``, ``lengths``): its functions serve
    __call__ = StarOperator.__call__
    apply = StarOperator.apply
    num_rows = StarOperator.num_rows

    def transpose(self, values):
        values = jnp.asarray(values)
        batch = values.shape[:-1]
        picked = jnp.take(values, self.t_rows, axis=-1)  # (..., blocks, block)
        sums = jnp.einsum("...bj,bj->...b", picked, self.t_lengths.astype(values.dtype))
        flat = jnp.zeros((*batch, int(np.prod(self.shape))), values.dtype)
        return flat.at[..., self.t_cells].add(sums).reshape(*batch, *self.shape)

    T = transpose

    def row_weighted(self, weights) -> BlockedStarOperator:
        """Each row (star) n times ``weights[n]``, in both layouts."""
        w = jnp.asarray(weights, jnp.float32).reshape(-1)
        return dataclasses.replace(
            self, lengths=self.lengths * w[:, None], t_lengths=self.t_lengths * w[self.t_rows]
        )


def blocked(op: StarOperator, block: int = DEFAULT_BLOCK) -> BlockedStarOperator:
    """`op` with its entries also sorted by cell in blocks of ``block`` (built on the host)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    idx = np.asarray(op.indices).reshape(-1)
    length = np.asarray(op.lengths).reshape(-1)
    keep = np.flatnonzero(length != 0)
    width = op.indices.shape[1]
    cells, length = idx[keep], length[keep]
    num_cells = int(np.prod(op.shape))
    # a stable sort by cell (a radix sort when the cell numbers fit 16 bits: 32^3 cells do)
    key = cells.astype(np.uint16) if num_cells <= 1 << 16 else cells
    order = np.argsort(key, kind="stable")
    cells, length = cells[order], length[order]
    rows = (keep[order] // max(width, 1)).astype(np.int32)
    counts = np.bincount(cells, minlength=num_cells)
    nblocks = -(-counts // block)  # blocks per cell
    first_entry = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first_block = np.concatenate([[0], np.cumsum(nblocks)[:-1]])
    rank = np.arange(len(cells)) - first_entry[cells]
    slot = first_block[cells] * block + rank  # position in the (blocks, block) arrays
    total = max(int(nblocks.sum()), 1)
    t_rows = np.zeros(total * block, np.int32)
    t_len = np.zeros(total * block, np.float32)
    t_rows[slot], t_len[slot] = rows, length
    t_cells = np.repeat(np.arange(num_cells, dtype=np.int32), nblocks)
    if len(t_cells) == 0:
        t_cells = np.zeros(1, np.int32)
    return BlockedStarOperator(
        op.indices, op.lengths, jnp.asarray(t_rows.reshape(total, block)),
        jnp.asarray(t_len.reshape(total, block)), jnp.asarray(t_cells), tuple(op.shape),
    )  # fmt: skip
