import numpy as np
import pytest

from cryoclass.parallel.partition import (
    batch_members,
    block_range,
    chunks,
    half_sets,
    local_members,
)


@pytest.mark.parametrize("n", [0, 1, 7, 10, 1001])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 16])
def test_blocks_cover_once_and_balance(n, size):
    parts = [block_range(n, size, r) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    for (a, b), (c, d) in zip(parts, parts[1:]):
        assert b == c
    lens = [b - a for a, b in parts]
    assert max(lens) - min(lens) <= 1


def test_batches_do_not_depend_on_rank_count():
    n = 1000
    members = batch_members(n, 300, seed=4, iteration=2)
    assert members.size == 300 and np.all(np.diff(members) > 0)
    for size in (1, 2, 3):
        got = np.concatenate([local_members(members, *block_range(n, size, r))
                              + block_range(n, size, r)[0] for r in range(size)])
        assert np.array_equal(got, members)
    assert not np.array_equal(members, batch_members(n, 300, seed=4, iteration=3))
    assert np.array_equal(batch_members(10, 50, 0, 0), np.arange(10))


def test_half_sets_and_chunks():
    h = half_sets(0, 101, 101, 0)
    assert set(np.unique(h)) == {0, 1} and abs(h.sum() - 50) <= 1
    assert np.array_equal(h, half_sets(0, 101, 101, 0))
    assert not np.array_equal(h, half_sets(0, 101, 101, 1))  # the seed matters


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 100_001])
def test_half_sets_are_slice_independent_balanced_and_mixed(n):
    whole = half_sets(0, n, n, 5)
    for size in (2, 3, 7):  # any rank's slice equals that part of the whole
        got = np.concatenate([half_sets(*block_range(n, size, r), n, 5) for r in range(size)])
        assert np.array_equal(got, whole)
    assert abs(2 * int(whole.sum()) - n) <= 1  # balanced to one particle
    if n >= 1000:  # neighbours independent: adjacent rows agree about half the time
        same = np.mean(whole[1:] == whole[:-1])
        assert 0.45 < same < 0.55
    sl = list(chunks(10, 4))
    assert [(s.start, s.stop) for s in sl] == [(0, 4), (4, 8), (8, 10)]
