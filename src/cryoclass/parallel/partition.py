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


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Hash each uint64 value with the splitmix64 finalizer (well mixed, 64 bits)."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def half_sets(start: int, stop: int, n: int, seed: int) -> np.ndarray:
    """Return the fixed random half-set (0/1) of particles ``[start, stop)`` of ``n``.

    Row ``r`` is paired with row ``r + ceil(n/2)``; a hash of the seed and the pair picks
    which of the two is in half-set 1. So the halves are balanced to one particle,
    neighbouring rows (often the same micrograph, or duplicate picks) fall into the
    halves independently, each particle's half depends only on its row and ``n`` (not on
    the rank count), and no rank needs memory for the whole set.
    """
    m = (n + 1) // 2
    rows = np.arange(start, stop, dtype=np.int64)
    side = (rows >= m).astype(np.int64)
    pair = (rows - side * m).astype(np.uint64)
    key = splitmix64(np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B1) + np.uint64(0x4A1F))
    bit = (splitmix64(pair ^ key) >> np.uint64(63)).astype(np.int64)
    return bit ^ side


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
