"""Particle stores: every place a rank can keep its particles gives the same rows back."""

import os

import numpy as np
import pytest

from cryoclass.parallel.comm import gpu_aware_mpi
from cryoclass.store import (
    ArrayStore,
    HostStreamStore,
    ScratchStore,
    make_store,
    placement,
)


def _data(n=257, m=33, dtype=np.complex64):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("kind", ["array", "host", "scratch"])
def test_stores_return_the_rows_they_were_given(tmp_path, kind, dtype):
    data = _data(dtype=dtype)
    store = {"array": lambda: ArrayStore(np, data.shape, dtype),
             "host": lambda: HostStreamStore(np, data.shape, dtype),
             "scratch": lambda: ScratchStore(np, data.shape, dtype, tmp_path, 3)}[kind]()
    for start in range(0, len(data), 100):  # written in blocks, as preprocessing does
        store.put(slice(start, min(len(data), start + 100)), data[start:start + 100])
    rng = np.random.default_rng(1)
    for rows in (np.arange(len(data)), np.sort(rng.choice(len(data), 60, replace=False)),
                 np.array([5]), np.array([], dtype=np.int64), np.array([9, 2, 2, 256]),
                 np.arange(10, 90)):
        first = store.take(rows)
        np.testing.assert_array_equal(first, data[rows])
        second = store.take(rows[::-1])  # a reused staging buffer must not alias results
        np.testing.assert_array_equal(first, data[rows])
        np.testing.assert_array_equal(second, data[rows[::-1]])
    if kind == "scratch":
        assert store.path.stat().st_size == data.nbytes
        store.close()
        assert not store.path.exists()


def test_placement_rule():
    gb = 1 << 30
    assert placement(10 * gb, None, "auto", "") == "device"  # CPU: RAM
    assert placement(10 * gb, None, "auto", "/scratch") == "scratch"
    assert placement(10 * gb, 40 * gb, "auto", "") == "device"  # fits in half the GPU
    assert placement(30 * gb, 40 * gb, "auto", "") == "host"  # does not: pinned host
    assert placement(30 * gb, 40 * gb, "auto", "/scratch") == "scratch"
    assert placement(1, 40 * gb, "host", "") == "host"
    assert placement(30 * gb, 40 * gb, "device", "") == "device"


def test_make_store_on_numpy(tmp_path):
    assert isinstance(make_store(np, (4, 2), np.complex64), ArrayStore)
    s = make_store(np, (4, 2), np.complex64, scratch_dir=str(tmp_path), rank=1)
    assert isinstance(s, ScratchStore) and s.path.name.startswith("cryoclass-rank0001-")
    s.close()


def test_gpu_aware_mpi_detection(monkeypatch):
    assert gpu_aware_mpi({"CRYOCLASS_GPU_AWARE_MPI": "1"}) is True
    assert gpu_aware_mpi({"CRYOCLASS_GPU_AWARE_MPI": "0", "MPICH_GPU_SUPPORT_ENABLED": "1"}) \
        is False
    # this process has no MPI library loaded, or the mpich wheel built without CUDA
    assert gpu_aware_mpi({}) is False
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc")


@pytest.mark.gpu
def test_gpu_stores_and_classification_agree(xp):
    """On a GPU: pinned streaming and the device cache give the same rows and classes."""
    if xp is np:
        pytest.skip("the NumPy stores are tested above")
    from cryoclass.backend import pinned_empty, to_host
    from cryoclass.config import load_config
    from cryoclass.em import classify
    from cryoclass.parallel.comm import Comm

    from engine_fixtures import make_problem

    data = _data()
    store = HostStreamStore(xp, data.shape, np.complex64, alloc=pinned_empty)
    store.put(slice(0, len(data)), xp.asarray(data))
    rows = np.array([3, 4, 5, 200])
    np.testing.assert_array_equal(to_host(store.take(rows)), data[rows])
    table, _ = make_problem(n_per=30, snr=0.3)
    opts = ["classify.n_classes=3", "classify.max_res_A=12", "classify.online_em_iters=2",
            "classify.batch_size_per_class=30", "search.psi_step_deg=10",
            "mask.inner_diameter_A=160"]
    out = {}
    for cache in ("device", "host"):
        cfg = load_config(None, opts + [f"compute.particle_cache={cache}"])
        out[cache] = classify(table, cfg, Comm(None), xp)
    np.testing.assert_array_equal(out["device"].particles.class_index,
                                  out["host"].particles.class_index)
