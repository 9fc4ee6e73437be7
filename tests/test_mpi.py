"""MPI behaviour under the venv's own mpiexec (the mpich wheel)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import mpiexec_command

HERE = Path(__file__).resolve().parent
LAUNCHER = mpiexec_command()
pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(shutil.which(LAUNCHER[0]) is None,
                                 reason=f"no MPI launcher {LAUNCHER[0]}")]


def mpirun(n, *args, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([*LAUNCHER, "-n", str(n), sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.mark.parametrize("extra", [[], ["classify.marginalize_poses=always"]],
                         ids=["defaults", "marginal_over_every_pose"])
def test_same_classes_and_poses_on_1_2_3_ranks(tmp_path, extra):
    out = {}
    for n in (1, 2, 3):
        f = tmp_path / f"r{n}.npz"
        r = mpirun(n, HERE / "mpi" / "run_fixture.py", f, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        out[n] = np.load(f)
    for n in (2, 3):
        assert np.array_equal(out[n]["cls"], out[1]["cls"])
        d = np.angle(np.exp(1j * (out[n]["psi"] - out[1]["psi"])))
        assert np.mean(np.abs(d) < 1e-6) > 0.99
        assert np.allclose(out[n]["post"], out[1]["post"], atol=1e-3)
        np.testing.assert_allclose(out[n]["classes"], out[1]["classes"], atol=1e-3 * np.abs(
            out[1]["classes"]).max())
