"""Order statistics of values spread over ranks, without gathering them.

``grouped_median`` gives exactly what ``numpy.median`` of the concatenated values of each
group would give, with a few dozen small Allreduces instead of moving the values: a
bisection over the 64-bit patterns of the float64 values (ordered like the floats) finds
each middle element.

Example
-------
>>> import numpy as np
>>> from cryoclass.parallel.comm import Comm
>>> grouped_median(np.array([3.0, 1.0, 2.0, 10.0]), np.array([0, 0, 0, 1]), 3, Comm(None))
array([ 2., 10., nan])
"""

from __future__ import annotations

import numpy as np

_SIGN = np.uint64(1 << 63)


def _ordered_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys that sort like the float64 values (negative zero before zero)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _key_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_ordered_keys`."""
    bits = np.where(keys & _SIGN, keys & ~_SIGN, ~keys)
    return bits.view(np.float64)


def grouped_median(values: np.ndarray, groups: np.ndarray, n_groups: int, comm) -> np.ndarray:
    """Median of the values of each group over all ranks (NaN for an empty group).

    Parameters
    ----------
    values : float (P,)
        This rank's values (finite).
    groups : int (P,)
        Group of each value, in ``[0, n_groups)``.
    n_groups : int
    comm : Comm
        Collective: every rank calls it.

    Returns
    -------
    float64 (n_groups,), identical on every rank.
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    order = np.lexsort((values, groups))
    keys = _ordered_keys(values[order])
    bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
    counts = comm.allreduce_sum(np.bincount(groups, minlength=n_groups)[:n_groups]
                                .astype(np.float64)).astype(np.int64)
    # 0-based ranks of the two middle elements of every group (equal for odd counts)
    want = np.concatenate([(counts - 1) // 2, counts // 2]) + 1  # (2 * n_groups,) counts
    grp = np.concatenate([np.arange(n_groups)] * 2)
    lo = np.zeros(2 * n_groups, dtype=np.uint64)
    hi = np.full(2 * n_groups, np.iinfo(np.uint64).max, dtype=np.uint64)
    active = counts[grp] > 0
    while True:  # smallest key with at least ``want`` values <= key: 64 halvings at most
        todo = active & (lo < hi)
        if not comm.any_true(bool(todo.any())):
            break
        mid = lo + (hi - lo) // np.uint64(2)
        le = np.zeros(2 * n_groups)
        for j in np.flatnonzero(todo):
            g = grp[j]
            le[j] = np.searchsorted(keys[bounds[g]:bounds[g + 1]], mid[j], side="right")
        le = comm.allreduce_sum(le)
        enough = le >= want
        hi = np.where(todo & enough, mid, hi)
        lo = np.where(todo & ~enough, mid + np.uint64(1), lo)
    mid_vals = _key_values(lo)
    out = (mid_vals[:n_groups] + mid_vals[n_groups:]) / 2
    out[counts == 0] = np.nan
    return out
