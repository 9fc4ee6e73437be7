"""Output-path problems: one line, a non-zero exit, and no half-written file left behind.

A file in the way of ``--out``, a directory that cannot be written, and the disk filling
up while the outputs are written (a real full file system: a small tmpfs where the tests
may mount one, and a file-size limit, RLIMIT_FSIZE, which any user can set and which
fails writes the same way), with one and two MPI ranks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoclass.errors import OutputError
from cryoclass.io.paths import h5_output, on_root, output_error, prepare_output_dir
from cryoclass.io.star import write_star
from cryoclass.parallel.comm import Comm
from cryoclass.simulate import SimulationParams, simulate_dataset
from run_fixtures import FAST, MPIEXEC, SRC


def env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC),
                                                         os.environ.get("PYTHONPATH", "")]))


def classify(star, out, n=None, timeout=300):
    cmd = [sys.executable, "-m", "cryoclass", "classify", str(star), "--out", str(out), *FAST]
    if n:
        cmd = [str(MPIEXEC), "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_dataset(out, SimulationParams(n_particles=240, box_px=48,
                                                   pixel_size_A=4.0, seed=3,
                                                   particles_per_micrograph=60))


def one_line(r, *needles):
    """The run failed with exit status 74 and exactly one error line, no traceback."""
    assert r.returncode == 74, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, r.stderr[-3000:]
    for nd in needles:
        assert nd in lines[0], lines[0]
    return lines[0]


def no_leftovers(folder: Path) -> None:
    """No temporary file anywhere below ``folder``; every output present is complete."""
    import h5py

    tmp = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not tmp, tmp
    for p in folder.rglob("*.h5"):
        with h5py.File(p, "r"):  # a complete HDF5 file
            pass
    for p in folder.rglob("*.cs"):
        np.load(p, allow_pickle=False)


# --- a file or a closed directory in the way ---------------------------------------------


def test_out_naming_an_existing_file(dataset, tmp_path):
    target = tmp_path / "not_a_dir"
    target.write_text("keep me\n")
    r = classify(dataset, target)
    one_line(r, str(target), "not a directory")
    assert target.read_text() == "keep me\n"
    r = classify(dataset, target / "run")  # a parent that is a file
    one_line(r, "a file is in the way")


@contextlib.contextmanager
def unwritable_dir(tmp_path: Path):
    """A directory this process cannot write: chmod for a user, a read-only mount for root."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {r.stderr}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_out_in_a_directory_without_write_permission(dataset, tmp_path):
    with unwritable_dir(tmp_path) as d:
        r = classify(dataset, d / "run")
        line = one_line(r, str(d / "run"))
        assert "permission denied" in line or "read-only" in line
        r = classify(dataset, d)  # the directory itself exists but takes no files
        one_line(r, "cannot write files there")
        assert not any(d.iterdir())


def test_prepare_output_dir_probe_and_message(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and not any(out.iterdir())  # the probe file is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        prepare_output_dir(tmp_path / "f")


# --- the disk fills up while writing ------------------------------------------------------


# MPI is started before the limit is set (its shared-memory segments exceed it); then
# every write past the limit fails with EFBIG (SIGXFSZ ignored), as on a full disk.
_LIMITED = """import resource, signal, sys
from mpi4py import MPI
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from cryoclass.cli import main
sys.exit(main(sys.argv[2:]))
"""


def classify_limited(star, out, limit_bytes, n=1, extra=()):
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-c", _LIMITED, str(limit_bytes),
           "classify", str(star), "--out", str(out), *FAST, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("where", ["checkpoint", "run.h5"])
def test_write_failure_mid_run_one_line_no_half_file(dataset, tmp_path, ranks, where):
    """A file-size limit makes a write fail mid-file: in the first checkpoint, or (no
    checkpoints) in run.h5, the first of the final outputs."""
    out = tmp_path / "run"
    extra = () if where == "checkpoint" else ("--set", "output.checkpoint=false")
    r = classify_limited(dataset, out, 60 * 1024, ranks, extra)
    line = one_line(r, "cannot write", "file too large")
    assert where in line
    no_leftovers(out)
    assert not (out / "run.h5").exists() and not (out / "particles.star").exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [None, 2])
def test_disk_full_on_a_small_tmpfs(dataset, tmp_path, ranks):
    """A real full file system (root only: mounts a 300 KiB tmpfs)."""
    fs = tmp_path / "fs"
    if not _mount_tmpfs(fs, "300k"):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        r = classify(dataset, fs / "run", n=ranks)
        one_line(r, "no space left on the device")
        no_leftovers(fs)
    finally:
        subprocess.run(["umount", str(fs)], check=False)


# --- the pieces: injected write errors ------------------------------------------------------


class _FullFile:
    """A writable file object whose writes fail with ENOSPC after ``budget`` bytes."""

    def __init__(self, fh, budget):
        self._fh, self._left = fh, budget

    def write(self, data):
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def test_star_writer_removes_its_temporary_file_on_a_write_error(tmp_path, monkeypatch):
    import builtins

    import pandas as pd

    real_open = builtins.open

    def full_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        return _FullFile(fh, 200) if "w" in mode and str(file).endswith(".tmp") else fh

    monkeypatch.setattr(builtins, "open", full_open)
    path = tmp_path / "big.star"
    block = pd.DataFrame({"rlnImageName": [f"{i}@s.mrcs" for i in range(1, 500)]})
    with pytest.raises(OutputError, match="no space left on the device") as exc:
        write_star(path, {"particles": block}, Comm(None))
    assert str(path) in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_h5_output_disk_full_is_an_oserror_not_a_crash(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def full_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        return _FullFile(fh, 4096) if "+" in mode and str(file).endswith(".tmp") else fh

    monkeypatch.setattr(builtins, "open", full_open)
    path = tmp_path / "x.h5"
    with pytest.raises(OSError), h5_output(path) as f:
        f["a"] = np.arange(100_000, dtype=np.float64)
    assert list(tmp_path.iterdir()) == []


def test_on_root_turns_a_write_error_into_one_output_error(tmp_path):
    def fail():
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "q.cs"))

    with pytest.raises(OutputError, match="disk quota exceeded") as exc:
        on_root(Comm(None), fail)
    assert getattr(exc.value, "collective", False)
    msg = str(output_error(tmp_path / "x", OSError(errno.EROFS, "ro")))
    assert "read-only file system" in msg and "\n" not in msg



@pytest.mark.mpi
@pytest.mark.parametrize("ranks, limit", [(1, 50_000), (3, 50_000), (3, 100_000)])
def test_collective_writers_agree_on_rank_0s_write_error(tmp_path, ranks, limit):
    """Rank 0 fails mid-file (in its own 64 KB of big.txt, or in rank 1's): all ranks
    raise the same error and none is left blocked sending."""
    script = Path(__file__).parent / "mpi" / "write_error.py"
    out, reports = tmp_path / "out", tmp_path / "reports"
    out.mkdir()
    reports.mkdir()
    cmd = [str(MPIEXEC), "-n", str(ranks), sys.executable, str(script), str(out),
           str(limit), str(reports)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    got = {}
    lines = [ln for p in sorted(reports.iterdir()) for ln in p.read_text().splitlines()]
    for line in lines:
        rank, name, msg = line.split(" ", 2)
        got.setdefault(name, {})[int(rank)] = msg
    for name in ("big.txt", "run.h5"):
        assert sorted(got[name]) == list(range(ranks)), lines
        assert len(set(got[name].values())) == 1, got[name]
        assert "file too large" in got[name][0]
    assert list(out.iterdir()) == []


def test_simulate_and_select_outputs_in_the_way(dataset, tmp_path):
    cmd = [sys.executable, "-m", "cryoclass"]
    target = tmp_path / "file"
    target.write_text("x")
    r = subprocess.run([*cmd, "simulate", str(target), "--n", "20"], capture_output=True,
                       text=True, env=env(), timeout=120)
    one_line(r, "not a directory")
    run = tmp_path / "run"
    r = classify(dataset, run)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*cmd, "select", str(run), "--drop", "1", "--out", str(target)],
                       capture_output=True, text=True, env=env(), timeout=120)
    one_line(r, str(target), "not a directory")
    assert target.read_text() == "x"
