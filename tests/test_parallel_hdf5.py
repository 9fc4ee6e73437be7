"""run.h5 from the parallel-HDF5 writer equals the gathering fallback's, file for file.

Runs where h5py was built with MPI (the system-MPI stack of `make test-mpi-hdf5`, which
sets CRYOCLASS_TEST_MPIEXEC to the system mpirun); elsewhere the gathering writer is
checked against a one-rank run.
"""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cryoclass.simulate import SimulationParams, simulate_dataset

from conftest import mpiexec_command

SRC = Path(__file__).resolve().parents[1] / "src"
OPTS = ["--marginalize", "never", "--classes", "3", "--max-res", "14", "--online-iters", "2", "--batch-per-class", "30",
        "--psi-step", "15", "--set", "classify.anneal_iters=1", "--no-plots"]
VOLATILE = {"created", "argv", "host", "n_ranks"}
pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("phdf5"), SimulationParams(
        n_particles=150, box_px=32, pixel_size_A=6.0, seed=4, particles_per_micrograph=50))


def classify(star, out, ranks, parallel: bool):
    env = dict(os.environ, PYTHONPATH=str(SRC),
               CRYOCLASS_PARALLEL_HDF5="1" if parallel else "0")
    cmd = ([*mpiexec_command(), "-n", str(ranks)] if ranks > 1 else []) + [
        sys.executable, "-m", "cryoclass", "classify", str(star), "--out", str(out), *OPTS]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return (out / "logs" / "rank0000.log").read_text()


def contents(path):
    items = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                items[name] = (obj.dtype.str, obj[()])
        f.visititems(visit)
        attrs = {k: v for k, v in f.attrs.items() if k not in VOLATILE}
    return items, attrs


def assert_same_files(a, b, particles_only=False):
    da, aa = contents(a)
    db, ab = contents(b)
    keys = sorted(k for k in da if k.startswith("particles/")) if particles_only else sorted(da)
    assert keys == sorted(k for k in db if not particles_only or k.startswith("particles/"))
    for k in keys:
        assert da[k][0] == db[k][0], k  # dtype
        if "seconds" in k or k.startswith("iterations/t_") or "per_s" in k:
            continue  # timings
        np.testing.assert_array_equal(da[k][1], db[k][1], err_msg=k)
    if not particles_only:
        assert aa == ab


@pytest.mark.skipif(not h5py.get_config().mpi, reason="h5py without MPI (make test-mpi-hdf5)")
def test_parallel_and_gathering_writers_write_the_same_file(star, tmp_path):
    log_p = classify(star, tmp_path / "par", 2, parallel=True)
    log_g = classify(star, tmp_path / "gat", 2, parallel=False)
    assert "parallel writer" in log_p and "gather writer" in log_g
    assert_same_files(tmp_path / "par" / "run.h5", tmp_path / "gat" / "run.h5")


def test_gathering_writer_matches_one_rank(star, tmp_path):
    classify(star, tmp_path / "one", 1, parallel=False)
    log = classify(star, tmp_path / "three", 3, parallel=False)
    assert "gather writer" in log
    da, _ = contents(tmp_path / "one" / "run.h5")
    db, _ = contents(tmp_path / "three" / "run.h5")
    for k in ("particles/class", "particles/half_set", "particles/duplicate"):
        np.testing.assert_array_equal(da[k][1], db[k][1], err_msg=k)
    assert da["particles/ess"][1].shape == db["particles/ess"][1].shape == (150,)
