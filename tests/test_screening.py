"""Constant (zero-variance) images: found before classification, never NaN in an output.

A few constant images are left out with one warning line and written to
rejected_constant.star/.cs, with the same result for 1, 2 and 3 ranks; all or most of
the set constant stops the run with one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest

from cryoclass.io.cs import read_cs
from cryoclass.io.particles import load_particles
from cryoclass.io.star import read_star
from cryoclass.numerics.screen import constant_images
from cryoclass.screening import MAX_CONSTANT_FRACTION
from cryoclass.simulate import SimulationParams, simulate_dataset
from run_fixtures import FAST, MPIEXEC, SRC

CONSTANT_ROWS = (3, 100, 239)  # 0-based; 239 is the last row (the last rank's slice)


def cli(*args, n=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC),
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "cryoclass", *map(str, args)]
    if n:
        cmd = [str(MPIEXEC), "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def blank(star: Path, rows, value=0.0) -> None:
    """Make the images of some particle rows constant (in place)."""
    table = load_particles(star)
    for r in rows:
        with mrcfile.open(table.meta.image_path[r], "r+") as m:
            m.data[table.meta.image_index[r]] = value


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_dataset(out / "D", SimulationParams(n_particles=240, box_px=48,
                                                         pixel_size_A=4.0, seed=3,
                                                         particles_per_micrograph=60))


def copy_set(star: Path, dest: Path) -> Path:
    shutil.copytree(star.parent, dest)
    return dest / star.name


@pytest.fixture(scope="module")
def few(clean, tmp_path_factory):
    star = copy_set(clean, tmp_path_factory.mktemp("few") / "F")
    blank(star, CONSTANT_ROWS[:2], 0.0)  # all-zero boxes (micrograph edge)
    blank(star, CONSTANT_ROWS[2:], 7.5)  # a constant non-zero value
    return star


def test_constant_images_flags_zero_variance_only():
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((5, 8, 8)).astype(np.float32)
    imgs[1] = 0.0
    imgs[2] = -3.25
    imgs[3] = 1e4 + 1e-4 * rng.standard_normal((8, 8))  # rounding-level spread
    imgs[4] *= 1e-20  # tiny but real contrast
    np.testing.assert_array_equal(constant_images(imgs), [False, True, True, True, False])


def no_nan_anywhere(run: Path) -> None:
    """No NaN in run.h5, the STAR/.cs outputs or the class averages."""
    bad = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fc":
            if np.isnan(obj[()]).any():
                bad.append(f"run.h5:{name}")
    with h5py.File(run / "run.h5", "r") as f:
        f.visititems(visit)
        for key, val in f.attrs.items():
            if isinstance(val, float) and np.isnan(val):
                bad.append(f"run.h5 attr {key}")
    for p in run.glob("*.star"):
        for name, block in read_star(p).items():
            num = block.select_dtypes("number")
            if num.isna().to_numpy().any():
                bad.append(f"{p.name}:{name}")
            if block.astype(str).isin(["nan", "NaN"]).to_numpy().any():
                bad.append(f"{p.name}:{name} (text)")
    for p in run.glob("*.cs"):
        arr = read_cs(p)
        bad += [f"{p.name}:{n}" for n in arr.dtype.names
                if arr.dtype[n].kind == "f" and np.isnan(arr[n]).any()]
    with mrcfile.open(run / "class_averages.mrcs", permissive=True) as m:
        if np.isnan(m.data).any():
            bad.append("class_averages.mrcs")
    assert not bad, bad


def run_results(run: Path) -> dict:
    with h5py.File(run / "run.h5", "r") as f:
        out = {k: f["particles"][k][()] for k in f["particles"]}
        out["classes"] = f["classes/images"][()]
    return out


@pytest.mark.mpi
def test_few_constant_images_are_left_out_the_same_for_1_2_3_ranks(few, tmp_path):
    runs = {}
    for n in (1, 2, 3):
        out = tmp_path / f"R{n}"
        r = cli("classify", few, "--out", out, *FAST, n=n)
        assert r.returncode == 0, r.stderr[-3000:]
        warn = [ln for ln in r.stderr.splitlines() if "images are constant" in ln]
        assert len(warn) == 1, r.stderr[-3000:]  # one warning line, from rank 0
        assert "3 of 240" in warn[0] and "rows 4, 101, 240" in warn[0], warn[0]
        # no micrograph files: said once although three .cs files are written
        missing = [ln for ln in r.stderr.splitlines() if "no location/* fields" in ln]
        assert len(missing) == 1, r.stderr[-3000:]
        runs[n] = run_results(out)
        no_nan_anywhere(out)
        rej = read_star(out / "rejected_constant.star")["particles"]
        star = read_star(few)["particles"]
        want = star["rlnImageName"].iloc[list(CONSTANT_ROWS)].tolist()
        assert rej["rlnImageName"].tolist() == want
        assert "rlnClassNumber" not in rej  # never classified
        cs = read_cs(out / "rejected_constant.cs")
        np.testing.assert_array_equal(cs["blob/idx"], [int(w.split("@")[0]) - 1
                                                       for w in want])
        kept = read_star(out / "particles.star")["particles"]["rlnImageName"]
        assert not set(want) & set(kept)
        np.testing.assert_array_equal(runs[n]["input_row"],
                                      np.setdiff1d(np.arange(240), CONSTANT_ROWS))
    for n in (2, 3):  # the same classification whatever the rank count
        for key in ("class", "half_set", "duplicate", "input_row"):
            np.testing.assert_array_equal(runs[n][key], runs[1][key], err_msg=key)
        np.testing.assert_allclose(runs[n]["classes"], runs[1]["classes"], rtol=0,
                                   atol=1e-4 * np.abs(runs[1]["classes"]).max())
    # the selection of such a run maps its rows back to the input's
    r = cli("select", tmp_path / "R2", "--drop", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    sel = read_star(tmp_path / "R2" / "select" / "selected.star")["particles"]
    part = read_star(tmp_path / "R2" / "particles.star")["particles"].set_index(
        "rlnImageName")
    np.testing.assert_array_equal(part.loc[sel["rlnImageName"], "rlnClassNumber"],
                                  sel["rlnClassNumber"])
    assert 2 not in set(sel["rlnClassNumber"])


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [None, 2])
def test_all_constant_images_stop_with_one_line(clean, tmp_path, ranks):
    star = copy_set(clean, tmp_path / "Z")
    blank(star, range(240), 0.0)
    r = cli("classify", star, "--out", tmp_path / "RZ", *FAST, n=ranks)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "all 240 particle images are constant" in err[0], r.stderr
    assert not (tmp_path / "RZ" / "run.h5").exists()


@pytest.mark.mpi
def test_most_constant_images_stop_with_one_line(clean, tmp_path):
    star = copy_set(clean, tmp_path / "M")
    n_const = int(MAX_CONSTANT_FRACTION * 240) + 1
    blank(star, range(240 - n_const, 240), 0.0)  # the last ranks' slices
    r = cli("classify", star, "--out", tmp_path / "RM", *FAST, n=3)
    assert r.returncode == 2, r.stderr[-3000:]
    err = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(err) == 1, r.stderr
    assert f"{n_const} of 240" in err[0] and "more than 50%" in err[0], err[0]
    r = cli("classify", star, "--out", tmp_path / "RV", "--validate-only", *FAST)
    assert r.returncode == 2 and "more than 50%" in r.stderr


def test_too_few_left_for_the_classes(clean, tmp_path):
    star = copy_set(clean, tmp_path / "K")
    blank(star, range(100), 0.0)
    r = cli("classify", star, "--out", tmp_path / "RK", *FAST[2:], "--classes", "150")
    assert r.returncode == 2 and "140 particles are left for 150 classes" in r.stderr, \
        r.stderr[-2000:]
