"""Shared settings of the tests that run ``cryoclass`` as a subprocess (a quick classify)."""

import sys
from pathlib import Path

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
SRC = Path(__file__).resolve().parents[1] / "src"
#: a short classification: few classes, iterations and rotations, force max (the marginal
#: over every pose has its own tests: test_information.py, test_mpi.py)
FAST = ["--marginalize", "never", "--classes", "4", "--max-res", "12", "--online-iters", "3", "--batch-per-class",
        "30", "--psi-step", "10", "--set", "classify.anneal_iters=1", "--no-plots",
        "--no-progress"]
