"""The command line as a user meets it: one-line errors, MPI runs, kill and resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest

from cryoclass.io.star import read_star, write_star
from cryoclass.simulate import SimulationParams, simulate_dataset

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--classes", "4", "--max-res", "12", "--online-iters", "3", "--batch-per-class",
        "30", "--psi-step", "10", "--set", "classify.anneal_iters=1", "--no-plots"]


def env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC),
                                                         os.environ.get("PYTHONPATH", "")]))


def cli(*args, n=None, timeout=300):
    cmd = [sys.executable, "-m", "cryoclass", *map(str, args)]
    if n:
        cmd = [str(MPIEXEC), "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    star = simulate_dataset(out, SimulationParams(n_particles=240, box_px=48,
                                                   pixel_size_A=4.0, seed=3,
                                                   particles_per_micrograph=60))
    return star


def one_line_error(r, *needles):
    assert r.returncode != 0
    err = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert err, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for nd in needles:
        assert nd in r.stderr, r.stderr
    return err


def test_help_and_config():
    r = cli("--help")
    assert r.returncode == 0 and "classify" in r.stdout
    r = cli("classify", "--help")
    assert r.returncode == 0 and "--no-force-max" in r.stdout
    r = cli("config", "--classes", "7", "--no-force-max")
    assert r.returncode == 0
    assert "n_classes = 7" in r.stdout and "force_max = false" in r.stdout
    r = cli("config", "--no-force-max", "--exhaustive")  # full marginalization
    assert r.returncode == 0 and 'mode = "exhaustive"' in r.stdout


def test_bad_inputs_give_one_line_errors(dataset, tmp_path):
    one_line_error(cli("classify", tmp_path / "missing.star", "--out", tmp_path / "r"),
                   "missing.star")
    one_line_error(cli("classify", dataset, "--out", tmp_path / "r", "--set",
                       "classify.n_clases=3"), "n_classes")
    one_line_error(cli("classify", dataset, "--out", tmp_path / "r", "--classes", "1000"),
                   "1000 classes")
    blocks = read_star(dataset)
    # missing CTF columns
    b = {k: v.copy() for k, v in blocks.items()}
    b["particles"] = b["particles"].drop(columns=["rlnDefocusU"])
    bad = dataset.parent / "noctf.star"
    write_star(bad, b)
    one_line_error(cli("classify", bad, "--out", tmp_path / "r"), "rlnDefocusU", "--no-ctf")
    # index past the end of a stack
    b = {k: v.copy() for k, v in blocks.items()}
    name = b["particles"]["rlnImageName"].iloc[0]
    b["particles"].loc[0, "rlnImageName"] = "999@" + name.split("@", 1)[1]
    bad = dataset.parent / "badindex.star"
    write_star(bad, b)
    one_line_error(cli("classify", bad, "--out", tmp_path / "r"), "999")


def test_nan_image_aborts_all_ranks(dataset, tmp_path):
    import shutil

    d = tmp_path / "nan"
    shutil.copytree(dataset.parent, d)
    star = d / dataset.name
    blocks = read_star(star)
    last = blocks["particles"]["rlnImageName"].iloc[-1]  # a particle owned by the last rank
    idx, stack = last.split("@", 1)
    with mrcfile.open(d / stack, "r+") as m:
        m.data[int(idx) - 1, 3, 3] = np.nan
    t0 = time.time()
    r = cli("classify", star, "--out", tmp_path / "r", *FAST, n=2, timeout=120)
    assert time.time() - t0 < 120
    one_line_error(r, "NaN")


@pytest.mark.mpi
def test_mpi_run_writes_outputs(dataset, tmp_path):
    out = tmp_path / "run"
    r = cli("classify", dataset, "--out", out, *FAST, n=2)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("run.h5", "particles.star", "particles.cs", "class_averages.mrcs",
                 "events.log", "config.toml", "report.html"):
        assert (out / name).is_file(), name
    with h5py.File(out / "run.h5") as f:
        n = f["particles/class"].shape[0]
        assert n == 240 and f.attrs["n_ranks"] == 2
        counts = f["classes/count"][()]
        assert np.all(np.diff(counts) <= 0) and counts.sum() == n
        assert f["classes/metrics/outside_power_frac"].shape == (4,)
    with mrcfile.open(out / "class_averages.mrcs") as m:
        assert m.data.shape == (4, 48, 48)
        assert abs(float(m.voxel_size.x) - 4.0) < 1e-4
    stars = read_star(out / "particles.star")["particles"]
    assert {"rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst"} <= set(stars.columns)
    assert "ESS quartiles" in (out / "events.log").read_text()
    r = cli("report", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "<table" in (out / "report.html").read_text()


@pytest.mark.mpi
def test_sigkill_then_resume_equals_uninterrupted(dataset, tmp_path):
    opts = [*FAST[:5], "6", *FAST[6:]]  # six online iterations
    ref = tmp_path / "ref"
    r = cli("classify", dataset, "--out", ref, *opts, n=2)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "killed"
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "cryoclass", "classify",
           str(dataset), "--out", str(run), *opts]
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    ckpt = run / "checkpoint.h5"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.is_file():
            try:
                with h5py.File(ckpt, "r") as f:
                    if f.attrs["iteration"] >= 2:
                        break
            except OSError:
                pass
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert not (run / "run.h5").exists()
    r = cli("resume", run, n=3)  # a different rank count
    assert r.returncode == 0, r.stderr[-3000:]
    with h5py.File(ref / "run.h5") as a, h5py.File(run / "run.h5") as b:
        np.testing.assert_array_equal(a["particles/class"][()], b["particles/class"][()])
        np.testing.assert_allclose(a["classes/images"][()], b["classes/images"][()],
                                   atol=1e-4 * np.abs(a["classes/images"][()]).max())
