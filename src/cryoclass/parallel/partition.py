"""Pure partitioning of particles over ranks and of work into chunks.

Nothing here depends on MPI: results are functions of (n, size, rank) only, so the
set of particles each rank owns, and every per-particle decision, is independent of
the rank count.

Examples
--------
>>> block_range(10, 3, 0), block_range(10, 3, 1), block_range(10, 3, 2)
((0, 4), (4, 7), (7, 10))
"""

from __future__ import annotations

import numpy as np


def block_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of ``n`` items owned by ``rank`` of ``size``.

    The first ``n % size`` ranks get one extra item.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"bad rank {rank} of {size}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def chunks(n: int, chunk: int):
    """Yield ``slice`` objects covering ``range(n)`` in pieces of at most ``chunk``."""
    for s in range(0, n, max(1, chunk)):
        yield slice(s, min(n, s + chunk))


def half_sets(n: int, seed: int) -> np.ndarray:
    """Return a fixed random half-set (0/1, balanced) for each of ``n`` particles."""
    rng = np.random.default_rng([seed, 0x4A1F])
    h = np.zeros(n, dtype=np.int64)
    h[rng.permutation(n)[: n // 2]] = 1
    return h


def batch_members(n: int, batch: int, seed: int, iteration: int) -> np.ndarray:
    """Sorted global indices of the particles used by an online-EM iteration."""
    if batch >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, 0xB47C, iteration])
    return np.sort(rng.choice(n, size=batch, replace=False))


def local_members(members: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Local row numbers (0-based within the shard) of global members in ``[start, stop)``."""
    lo, hi = np.searchsorted(members, [start, stop])
    return members[lo:hi] - start
