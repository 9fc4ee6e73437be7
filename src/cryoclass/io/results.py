"""run.h5 writers: parallel HDF5 where h5py has MPI, a bounded-memory fallback elsewhere.

Both produce the same file (same datasets, dtypes, attributes):

* parallel: every rank opens the file with ``driver="mpio"``, the datasets are created
  collectively, and each rank writes its own contiguous slice of every per-particle
  dataset with a collective write. The shared, rank-independent part (class averages,
  per-iteration diagnostics, config, provenance) is identical on every rank and is written
  by all of them, as parallel HDF5 requires for metadata.
* fallback (serial h5py, the PyPI wheel): rank 0 creates the file, writes its own slice,
  then receives every other rank's slices in chunks of ``chunk_rows`` rows and writes them;
  rank 0 never holds all N particles at once.

Either way the file is written under a temporary name and renamed by rank 0 at the end.
Set ``CRYOCLASS_PARALLEL_HDF5=0`` to force the fallback.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

logger = logging.getLogger(__name__)

#: Per-particle datasets of ``/particles`` and their dtypes.
PARTICLE_DTYPES = {
    "input_row": np.int64, "class": np.int32, "class_posterior": np.float32,
    "best_class_prob": np.float32,
    "ess": np.float32, "psi_deg": np.float32, "shift_x_px": np.float32,
    "shift_y_px": np.float32, "shift_x_A": np.float32, "shift_y_A": np.float32,
    "score": np.float32, "half_set": np.int8, "duplicate": np.int8,
}
_TAG = 0x5EAD


def parallel_hdf5(comm) -> bool:
    """Tell whether this job can write run.h5 with the MPI-IO driver."""
    if comm.mpi is None or comm.size == 1:
        return False
    if os.environ.get("CRYOCLASS_PARALLEL_HDF5", "1") == "0":
        return False
    return bool(h5py.get_config().mpi)


def write_run_file(path: Path, comm, n_total: int, start: int, local: dict,
                   write_shared, chunk_rows: int = 65536) -> str:
    """Write run.h5 collectively; returns the writer used ("parallel" or "gather").

    Parameters
    ----------
    path : Path
        Final file name.
    comm : Comm
    n_total : int
        Number of particles over all ranks.
    start : int
        First global row of this rank's slice.
    local : dict of name -> array (n_local,)
        This rank's values for every key of :data:`PARTICLE_DTYPES`.
    write_shared : callable(h5py.File)
        Writes the rank-independent groups and attributes (identical on every rank).
    """
    from cryoclass.io.paths import agree_error, h5_file, output_error

    path = Path(path)
    tmp, message = None, None
    if comm.rank == 0:
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp",
                                       dir=path.parent)
            os.close(fd)
        except OSError as exc:
            message = str(output_error(path, exc))
    tmp, message = comm.bcast((tmp, message))
    agree_error(comm, message)
    n_local = len(next(iter(local.values()))) if local else 0
    mode = "parallel" if parallel_hdf5(comm) else "gather"
    received = 0  # gather writer: the ranks whose rows have all arrived
    try:
        if mode == "parallel":
            with h5py.File(tmp, "w", driver="mpio", comm=comm.mpi) as f:
                g = f.create_group("particles")
                for name, dt in PARTICLE_DTYPES.items():
                    d = g.create_dataset(name, (n_total,), dtype=dt)
                    with d.collective:
                        d[start:start + n_local] = np.asarray(local[name], dtype=dt)
                write_shared(f)
        elif comm.rank == 0:
            with h5_file(tmp) as f:  # a full disk is an OSError, not a crash
                g = f.create_group("particles")
                ds = {name: g.create_dataset(name, (n_total,), dtype=dt)
                      for name, dt in PARTICLE_DTYPES.items()}
                for name, d in ds.items():
                    d[start:start + n_local] = np.asarray(local[name], dtype=d.dtype)
                for src in range(1, comm.size):
                    while True:
                        msg = comm.recv(src, _TAG)
                        if msg is None:
                            break
                        off, arrays = msg
                        for name, arr in arrays.items():
                            ds[name][off:off + len(arr)] = arr
                    received = src
                write_shared(f)
        else:
            for s in range(0, n_local, chunk_rows):
                e = min(n_local, s + chunk_rows)
                comm.send((start + s, {name: np.asarray(local[name][s:e],
                                                        dtype=PARTICLE_DTYPES[name])
                                      for name in PARTICLE_DTYPES}), 0, _TAG)
            comm.send(None, 0, _TAG)
        if comm.rank == 0 and mode == "gather":
            _finish(tmp, path)
    except OSError as exc:  # disk full, quota, file-size limit, ...
        message = str(output_error(path, exc))
        if mode == "gather" and comm.rank == 0:
            for src in range(received + 1, comm.size):  # so that no rank blocks sending
                while comm.recv(src, _TAG) is not None:
                    pass
    except BaseException:
        if comm.rank == 0 and tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if mode == "parallel":  # every rank took part in the file: all must have succeeded
        message = next((m for m in comm.allgather(message) if m is not None), None)
        if message is None and comm.rank == 0:
            try:
                _finish(tmp, path)
            except OSError as exc:
                message = str(output_error(path, exc))
    if message is not None and comm.rank == 0 and tmp and os.path.exists(tmp):
        os.unlink(tmp)
    agree_error(comm, message)
    logger.info("run.h5 written with the %s writer", mode)
    return mode


def _finish(tmp: str, path: Path) -> None:
    """Flush the temporary file to disk, make it readable, rename it over ``path``."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
