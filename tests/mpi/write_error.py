"""A write that fails on rank 0 mid-file, collectively: every rank must raise the same error.

Usage: mpiexec -n R python write_error.py OUTDIR LIMIT_BYTES REPORTDIR

Rank 0 gets a file-size limit (writes past it fail with EFBIG, as on a full disk); every
rank sends many small pieces of ``big.txt`` (write_in_rank_order) and its rows of
``run.h5`` (the gathering HDF5 writer). Each rank writes ``<rank> <file> <message>`` for
the OutputError it got, or ``<rank> <file> ok``, to REPORTDIR/rank<r>.txt (printed lines
of several ranks can interleave).
"""

import resource
import signal
import sys
from pathlib import Path

import numpy as np

from cryoclass.errors import OutputError
from cryoclass.io.results import PARTICLE_DTYPES, write_run_file
from cryoclass.io.star import write_in_rank_order
from cryoclass.parallel.comm import Comm

out, limit, reports = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
if "--no-mpi" in sys.argv:
    comm = Comm(None)
else:
    from mpi4py import MPI

    comm = Comm(MPI.COMM_WORLD)
if comm.rank == 0:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def report(name, fn):
    try:
        fn()
        line = f"{comm.rank} {name} ok"
    except OutputError as exc:
        line = f"{comm.rank} {name} {exc}"
    with open(reports / f"rank{comm.rank}.txt", "a") as fh:  # written before the limit
        fh.write(line + "\n")


pieces = (f"rank {comm.rank} line {i}\n" * 20 for i in range(200))
report("big.txt", lambda: write_in_rank_order(out / "big.txt", comm, "w",
                                              lambda fh: fh.write("head\n"), pieces, "",
                                              0x77))
n_local = 40_000
start = comm.rank * n_local
local = {name: np.zeros(n_local, dtype=dt) for name, dt in PARTICLE_DTYPES.items()}
report("run.h5", lambda: write_run_file(out / "run.h5", comm, comm.size * n_local, start,
                                        local, lambda f: None, chunk_rows=5000))
