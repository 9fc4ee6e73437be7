"""The collectives the driver needs, over an mpi4py communicator or none.

``Comm(mpi_comm)`` wraps an mpi4py communicator; ``Comm(None)`` is a one-rank
stand-in so the driver runs (and is tested) without MPI. The communicator is always
passed in: nothing here touches ``MPI.COMM_WORLD``.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

logger = logging.getLogger(__name__)


class Comm:
    """Sum-allreduce, bcast, (all)gather, alltoall, send/recv, abort on a communicator."""

    def __init__(self, mpi_comm=None):
        self.mpi = mpi_comm
        self.rank = 0 if mpi_comm is None else mpi_comm.Get_rank()
        self.size = 1 if mpi_comm is None else mpi_comm.Get_size()
        self._gpu_aware: bool | None = None

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """Sum a contiguous float64 host buffer over ranks, in place; returns it."""
        if self.mpi is not None and self.size > 1:
            from mpi4py import MPI

            self.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    @property
    def gpu_aware(self) -> bool:
        """Whether the MPI library takes GPU buffers (see :func:`gpu_aware_mpi`)."""
        if self._gpu_aware is None:
            self._gpu_aware = self.mpi is not None and gpu_aware_mpi()
        return self._gpu_aware

    def allreduce_sum_to_host(self, buf) -> np.ndarray:
        """Sum a contiguous float64 buffer (host or GPU) over ranks; return the host sum.

        A GPU buffer is summed in place on the device when the MPI library is GPU-aware,
        else staged through host memory; either way the device's queued work is finished
        first.
        """
        if isinstance(buf, np.ndarray):
            return self.allreduce_sum(buf)
        from cryoclass.backend import synchronize, to_host

        synchronize(buf)
        if self.gpu_aware and self.size > 1:
            from mpi4py import MPI

            self.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return to_host(buf)
        return self.allreduce_sum(to_host(buf))

    def bcast(self, obj, root: int = 0):
        """Broadcast a small Python object."""
        if self.mpi is None or self.size == 1:
            return obj
        return self.mpi.bcast(obj, root=root)

    def gather(self, obj, root: int = 0):
        """Gather small Python objects to ``root`` (None elsewhere)."""
        if self.mpi is None or self.size == 1:
            return [obj]
        return self.mpi.gather(obj, root=root)

    def allgather(self, obj):
        """Gather small Python objects to every rank."""
        if self.mpi is None or self.size == 1:
            return [obj]
        return self.mpi.allgather(obj)

    def alltoall(self, objs: list) -> list:
        """Send ``objs[r]`` to rank ``r``; return what each rank sent here (pickled)."""
        if self.mpi is None or self.size == 1:
            return list(objs)
        return self.mpi.alltoall(objs)

    def send(self, obj, dest: int, tag: int = 0) -> None:
        """Send a small Python object (pickled) to one rank."""
        self.mpi.send(obj, dest=dest, tag=tag)

    def recv(self, source: int, tag: int = 0):
        """Receive a small Python object from one rank."""
        return self.mpi.recv(source=source, tag=tag)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.mpi is not None and self.size > 1:
            self.mpi.Barrier()

    def abort(self, code: int) -> None:
        """Stop every rank of the job (never returns)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.mpi is not None and self.size > 1:
            self.mpi.Abort(code)
        raise SystemExit(code)

    def any_true(self, flag: bool) -> bool:
        """Return True on every rank if ``flag`` is true on any rank."""
        buf = np.array([1.0 if flag else 0.0])
        return bool(self.allreduce_sum(buf)[0] > 0)


def gpu_aware_mpi(environ=None) -> bool:
    """Tell whether the loaded MPI library accepts CUDA device buffers.

    In order: ``CRYOCLASS_GPU_AWARE_MPI=0/1`` (the user knows best); the library's own
    answer, ``MPIX_Query_cuda_support()`` (Open MPI, MPICH >= 4), looked up in the
    ``libmpi`` this process loaded; Cray MPICH's ``MPICH_GPU_SUPPORT_ENABLED=1``. False
    when none says yes: host staging always works.
    """
    env = os.environ if environ is None else environ
    forced = env.get("CRYOCLASS_GPU_AWARE_MPI", "").strip().lower()
    if forced in ("0", "1", "yes", "no", "true", "false"):
        return forced in ("1", "yes", "true")
    query = _mpix_query_cuda_support()
    if query is not None:
        return query
    return env.get("MPICH_GPU_SUPPORT_ENABLED", "") == "1"


def _mpix_query_cuda_support() -> bool | None:
    """``MPIX_Query_cuda_support()`` of the loaded libmpi, or None where it has none."""
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            libs = sorted({line.split()[-1] for line in fh
                           if "libmpi" in line and ".so" in line.split()[-1]})
    except OSError:
        return None
    for path in libs:
        try:
            fn = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        except OSError:
            continue
        if fn is not None:
            fn.restype = ctypes.c_int
            fn.argtypes = []
            return bool(fn())
    return None
