"""Collective particle I/O: every rank reads, checks and writes only its own rows, and the
files are byte-for-byte those one process writes from the whole set."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoclass.io.particles import load_particles, write_subset_cs
from cryoclass.io.star import read_star, write_star
from cryoclass.simulate import SimulationParams, simulate_dataset

from conftest import mpiexec_command

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "mpi" / "collective_io.py"
LAUNCHER = mpiexec_command()
N = 400


def run(args, n=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, *map(str, args)]
    if n:
        cmd = [*LAUNCHER, "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def cli(*args, n=None, timeout=300):
    return run(["-m", "cryoclass", *args], n=n, timeout=timeout)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A simulated STAR set with two awkward extra columns, and the same set as .cs."""
    root = tmp_path_factory.mktemp("coll")
    star = simulate_dataset(root, SimulationParams(n_particles=N, box_px=32, pixel_size_A=4.0,
                                                    seed=5, duplicate_fraction=0.15,
                                                    particles_per_micrograph=40,
                                                    micrograph_size_px=1024))
    blocks = read_star(star)
    parts = blocks["particles"]
    for mic in parts["rlnMicrographName"].unique():  # headers for the .cs location/* fields
        with mrcfile.new(root / mic) as m:
            m.set_data(np.zeros((1024, 1024), dtype=np.int8))
    # integers in the first rows, floats later: one process types the column float
    parts["rlnMyValue"] = np.where(np.arange(N) < N // 2, np.arange(N) % 7,
                                   np.arange(N) * 0.25).astype(object)
    parts.loc[: N // 2 - 1, "rlnMyValue"] = [int(v) for v in range(N // 2)]
    # the last stack gets a longer name: bytes fields of the .cs differ in width by rank
    names = parts["rlnImageName"].str.split("@", n=1, expand=True)
    last = names[1].iloc[-1]
    longer = last.replace(".mrcs", "_with_a_much_longer_name.mrcs")
    (root / last).rename(root / longer)
    parts["rlnImageName"] = names[0] + "@" + names[1].replace(last, longer)
    # tiny values in the first rows only: the whole column is written as %.6e
    parts["rlnTiny"] = np.where(np.arange(N) < 20, 1e-5, 0.0)
    write_star(star, blocks)
    cs = root / "particles.cs"
    write_subset_cs(cs, load_particles(star), None)
    assert load_particles(cs).has_locations
    return {"star": star, "cs": cs}


def test_index_pieces_read_any_row_range(sets):
    from cryoclass.io.particles import _find_particle_block
    from cryoclass.io.star import index_star, read_star_rows

    whole = read_star(sets["star"])["particles"]
    idx = index_star(sets["star"], lambda lab: _find_particle_block(lab, "x"),
                     piece_bytes=1500)
    assert len(idx.pieces) > 20 and idx.n_rows == N
    assert [p[2] for p in idx.pieces] == list(np.cumsum([0] + [p[3] for p in idx.pieces])[:-1])
    for a, b in ((0, N), (0, 1), (37, 38), (13, 301), (N - 5, N), (7, 7)):
        got = read_star_rows(idx, a, b)
        assert len(got) == b - a
        for col in ("rlnImageName", "rlnDefocusU", "rlnCoordinateX"):
            assert got[col].tolist() == whole[col].iloc[a:b].tolist()


@pytest.mark.mpi
@pytest.mark.parametrize("fmt", ["star", "cs"])
def test_every_rank_count_writes_the_files_one_process_writes(sets, tmp_path, fmt):
    ref = tmp_path / "ref"
    r = run([SCRIPT, sets[fmt], ref, 1 << 30, "--no-mpi"])
    assert r.returncode == 0, r.stderr[-3000:]
    names = ["particles.star", "particles.cs", "rejected.star", "rejected.cs", "all.star"]
    kept = len(read_star(ref / "particles.star")["particles"])
    rejected = len(read_star(ref / "rejected.star")["particles"])
    assert kept + rejected == N and rejected > 10  # duplicates were found
    all_star = read_star(ref / "all.star")["particles"]
    if fmt == "star":
        assert all_star["rlnMyValue"].dtype == np.float64
        assert "1.000000e-05" in (ref / "all.star").read_text()
    for n in (1, 2, 3):
        out = tmp_path / f"n{n}"
        r = run([SCRIPT, sets[fmt], out, 1500], n=n)  # many small pieces of the STAR body
        assert r.returncode == 0, r.stderr[-3000:]
        for name in names:
            assert (out / name).read_bytes() == (ref / name).read_bytes(), (n, name)
        st = np.load(out / "stats.npz")
        bounds = st["bounds"]  # each rank held only its own contiguous rows
        assert bounds[:, 0].tolist() == list(np.cumsum([0, *bounds[:-1, 1]]))
        assert bounds[:, 1].sum() == N and (bounds[:, 2] == N).all()
        assert (bounds[:, 3] == 32).all()
        rows = np.arange(N)
        ess, cls = 1 + (rows * 0.37) % 4, rows % 5
        want = [np.median(ess[cls == c]) for c in range(5)]
        np.testing.assert_array_equal(st["median"][:5], want)
        assert np.isnan(st["median"][5])


@pytest.mark.mpi
def test_errors_in_the_last_ranks_rows_stop_every_rank(sets, tmp_path):
    from test_cli import one_line_error

    d = tmp_path / "bad"
    shutil.copytree(sets["star"].parent, d)
    blocks = read_star(d / "particles.star")
    bad = {k: v.copy() for k, v in blocks.items()}
    bad["particles"]["rlnDefocusU"] = bad["particles"]["rlnDefocusU"].astype(object)
    bad["particles"].loc[N - 2, "rlnDefocusU"] = "abc"
    write_star(d / "bad_value.star", bad)
    r = cli("classify", d / "bad_value.star", "--out", tmp_path / "r", "--validate-only",
            n=3, timeout=120)
    one_line_error(r, f"particle row {N - 1}", "rlnDefocusU")
    assert r.stderr.count("cryoclass: error") == 1, r.stderr  # reported once, not by every rank
    # a stack that only the last rank reads is missing
    last = blocks["particles"]["rlnImageName"].iloc[-1].split("@", 1)[1]
    first = blocks["particles"]["rlnImageName"].iloc[0].split("@", 1)[1]
    assert last != first
    (d / last).unlink()
    r = cli("classify", d / "particles.star", "--out", tmp_path / "r", "--validate-only",
            n=3, timeout=120)
    one_line_error(r, Path(last).name, "not found")
    assert r.stderr.count("cryoclass: error") == 1, r.stderr
