"""Classify the in-memory fixture on however many ranks mpiexec started; rank 0 saves.

Usage: run_fixture.py OUT.npz [section.key=value ...] (extra configuration overrides).
"""

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cryoclass.config import load_config  # noqa: E402
from cryoclass.em import classify  # noqa: E402
from cryoclass.parallel.comm import Comm  # noqa: E402

from engine_fixtures import make_problem  # noqa: E402

table, truth = make_problem(n_per=60, snr=0.3)
cfg = load_config(None, ["classify.n_classes=4", "classify.max_res_A=12",
                         "classify.online_em_iters=5", "classify.batch_size_per_class=40",
                         "classify.anneal_start_iter=1", "classify.anneal_iters=2",
                         "search.psi_step_deg=8", "mask.inner_diameter_A=160",
                         *sys.argv[2:]])
comm = Comm(MPI.COMM_WORLD)
res = classify(table, cfg, comm)
p = res.gather_particles(comm)
if comm.rank == 0:
    np.savez(sys.argv[1], cls=p.class_index, psi=p.psi_rad, shift=p.shift_px,
             post=p.class_posterior, classes=res.state.classes)
