"""dustjax.blocked_operator: the star operator with a transpose sorted by cell in blocks."""

import numpy as np
import pytest

from dustjax import inversion
from dustjax.blocked_operator import blocked
from dustjax.geometry import Region

REGION = Region((-40.0, -30.0, -20.0), (40.0, 50.0, 60.0), (8, 6, 5))


def _stars(n, seed):
    """Random stars inside and outside the box, and some exactly on its faces and edges."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(REGION.lower_pc), np.asarray(REGION.upper_pc)
    xyz = rng.uniform(lo - 30.0, hi + 30.0, (n, 3))
    xyz[: n // 10, 0] = hi[0]  # on the far x face
    xyz[n // 10 : n // 5, 1] = lo[1]  # on the near y face
    xyz[n // 5 : n // 5 + 5] = hi  # on a corner
    return xyz


@pytest.mark.parametrize("block", [1, 7, 128])
def test_blocked_operator_is_the_same_linear_map(block):
    """apply is the StarOperator's (same rows), transpose its transpose to float32 rounding, and
    <A x, v> = <x, A^T v>; row weights act on both layouts alike."""
    rng = np.random.default_rng(block)
    op = inversion.star_operator(REGION, _stars(1500, block))
    b = blocked(op, block)
    x = rng.random(REGION.shape).astype(np.float32)
    v = rng.standard_normal(op.num_rows).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(b.apply(x)), np.asarray(op.apply(x)))
    ref = np.asarray(op.transpose(v), np.float64)
    got = np.asarray(b.transpose(v), np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    lhs = float(np.dot(np.asarray(b.apply(x), np.float64), v))
    assert lhs == pytest.approx(float(np.sum(got * x)), rel=1e-5)
    w = rng.uniform(0.5, 2.0, op.num_rows)
    bw = b.row_weighted(w)
    np.testing.assert_allclose(np.asarray(bw.apply(x)), np.asarray(b.apply(x)) * w, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(bw.transpose(v), np.float64), np.asarray(b.transpose(v * w), np.float64),
        rtol=1e-5, atol=1e-5 * np.abs(ref).max(),
    )  # fmt: skip
    # batched values, and stars at the Sun (paths of zero length: an all-zero operator)
    vb = np.stack([v, 2 * v])
    np.testing.assert_allclose(np.asarray(b.transpose(vb))[1], 2 * np.asarray(b.transpose(v)),
                               rtol=1e-5, atol=2e-5 * np.abs(ref).max())  # fmt: skip
    empty = blocked(inversion.star_operator(REGION, np.zeros((3, 3))), block)
    assert not np.any(np.asarray(empty.transpose(np.ones(3, np.float32))))


def test_blocked_refuses_a_bad_block():
    op = inversion.star_operator(REGION, _stars(10, 0))
    with pytest.raises(ValueError, match="block"):
        blocked(op, 0)


def test_threaded_star_operator_is_the_serial_one_bit_for_bit():
    """star_operator(workers=3) on stars inside, outside and on the box's faces: the same
    indices and lengths as the serial build, which equals dustjax.los.integrate_to_points."""
    from dustjax.los import integrate_to_points

    xyz = _stars(1000, 3)
    serial = inversion.star_operator(REGION, xyz, chunk=64)
    threaded = inversion.star_operator(REGION, xyz, chunk=64, workers=3)
    np.testing.assert_array_equal(np.asarray(threaded.indices), np.asarray(serial.indices))
    np.testing.assert_array_equal(np.asarray(threaded.lengths), np.asarray(serial.lengths))
    rho = np.random.default_rng(4).random(REGION.shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(blocked(threaded).apply(rho)),
                               np.asarray(integrate_to_points(rho, REGION, xyz)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
