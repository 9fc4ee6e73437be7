"""Where a rank keeps its preprocessed particles between iterations.

Every iteration reads chunks of a rank's particles (their averaging-disk Fourier
coefficients, ``(n_local, M)`` complex) in sorted row order. Three places can hold them:

* :class:`ArrayStore`: one array on the compute device (NumPy: RAM; CuPy: GPU memory),
  when it fits. ``take`` is a gather on the device.
* :class:`HostStreamStore`: host memory (pinned on a GPU node), each chunk gathered into
  a reused staging buffer and copied to the device. Used when the shard does not fit on
  the GPU. One copy per chunk costs ``8 M`` bytes per particle (13 KB at 64 px / 6 Å):
  about 0.5 µs at 25 GB/s against tens of µs of pose search, so it is not overlapped.
* :class:`ScratchStore`: a file on a node-local disk (``--scratch DIR``), read with
  ``pread`` into the staging buffer. Neither memory maps nor page cache count towards the
  process's resident memory, so a rank's RAM is bounded by its chunk size, not its shard.

:func:`make_store` picks one from the backend, the free device memory and the config;
:func:`placement` is the pure rule. Only the allocation of pinned memory and the query of
free device memory are CuPy-specific (in :mod:`cryoclass.backend`); everything else here
runs and is tested on NumPy.

Example
-------
>>> import numpy as np
>>> store = make_store(np, (10, 4), np.complex64)
>>> store.put(slice(0, 10), np.ones((10, 4), np.complex64))
>>> store.take(np.array([1, 3])).shape
(2, 4)
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from cryoclass import backend

logger = logging.getLogger(__name__)

#: Fraction of the free device memory the particles may take when cached on the GPU; the
#: rest is left for the E-step's work arrays (GEMM operands, per-rotation sums).
DEVICE_FRACTION = 0.5


def placement(n_bytes: int, free_device_bytes: int | None, cache: str,
              scratch_dir: str) -> str:
    """Return where a shard of ``n_bytes`` goes: ``device``, ``host`` or ``scratch``.

    Parameters
    ----------
    n_bytes : int
        Size of the rank's preprocessed particles.
    free_device_bytes : int or None
        Free memory of the rank's GPU, or None on the CPU backend.
    cache : str
        ``compute.particle_cache``: ``auto``, ``device`` or ``host``.
    scratch_dir : str
        ``compute.scratch_dir`` ("" for none).
    """
    if free_device_bytes is None:  # CPU: the "device" is RAM
        return "scratch" if scratch_dir else "device"
    if cache == "device" or (cache == "auto" and not scratch_dir
                             and n_bytes <= DEVICE_FRACTION * free_device_bytes):
        return "device"
    return "scratch" if scratch_dir else "host"


class ArrayStore:
    """The particles as one array on the compute device."""

    def __init__(self, xp: ModuleType, shape: tuple[int, int], dtype):
        self.xp = xp
        self.data = xp.empty(shape, dtype=dtype)  # (n_local, M)

    def put(self, sl: slice, block) -> None:
        """Store rows ``sl`` (a device or host array of shape (rows, M))."""
        self.data[sl] = self.xp.asarray(block)

    def take(self, rows: np.ndarray):
        """Return rows (sorted or not) as a device array (P, M)."""
        return self.data[self.xp.asarray(rows)]

    def close(self) -> None:
        """Release the memory."""
        self.data = None


class _StagedStore:
    """Rows gathered into a reused host staging buffer, then moved to the device."""

    def __init__(self, xp: ModuleType, shape: tuple[int, int], dtype, alloc=np.empty):
        self.xp = xp
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self._alloc = alloc
        self._staging = alloc((0, self.shape[1]), self.dtype)

    def _buffer(self, p: int) -> np.ndarray:
        if self._staging.shape[0] < p:  # grows to the largest chunk, then is reused
            self._staging = self._alloc((p, self.shape[1]), self.dtype)
        return self._staging[:p]

    def take(self, rows: np.ndarray):
        """Return rows (any order) as a device array (P, M)."""
        rows = np.asarray(rows, dtype=np.int64)
        buf = self._buffer(rows.size)
        self._gather(rows, buf)
        out = self.xp.asarray(buf)  # host -> device copy
        if out is buf:  # NumPy: the buffer itself; it is reused, so return a copy
            return buf.copy()
        backend.synchronize(out)  # the copy out of the staging buffer ends before its reuse
        return out


class HostStreamStore(_StagedStore):
    """The particles in host memory, copied to the device one chunk at a time.

    ``alloc`` makes host arrays: :func:`cryoclass.backend.pinned_empty` on a GPU node
    (page-locked memory copies to the device at full bus speed), ``numpy.empty`` else.
    """

    def __init__(self, xp: ModuleType, shape: tuple[int, int], dtype, alloc=np.empty):
        super().__init__(xp, shape, dtype, alloc)
        self.data = alloc(self.shape, self.dtype)  # (n_local, M) host

    def put(self, sl: slice, block) -> None:
        """Store rows ``sl``."""
        self.data[sl] = backend.to_host(block)

    def _gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        np.take(self.data, rows, axis=0, out=out)

    def close(self) -> None:
        """Release the memory."""
        self.data = None


class ScratchStore(_StagedStore):
    """The particles in a file on a node-local disk, read back with ``pread``.

    The file ``folder/cryoclass-rank<rank>-<pid>.bin`` holds the rows in order
    (``M`` values of ``dtype`` each) and is removed by :meth:`close` or at exit.
    """

    def __init__(self, xp: ModuleType, shape: tuple[int, int], dtype, folder: str | Path,
                 rank: int, alloc=np.empty):
        super().__init__(xp, shape, dtype, alloc)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"cryoclass-rank{rank:04d}-{os.getpid()}.bin"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        os.ftruncate(self._fd, self.shape[0] * self.row_bytes)
        atexit.register(self.close)
        logger.info("rank %d keeps its %.1f MB of particle data in %s", rank,
                    self.shape[0] * self.row_bytes / 1e6, self.path)

    def put(self, sl: slice, block) -> None:
        """Write rows ``sl`` (contiguous) to the file."""
        data = np.ascontiguousarray(backend.to_host(block), dtype=self.dtype)
        view = memoryview(data).cast("B")
        offset = sl.start * self.row_bytes
        while view:
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def _gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        if rows.size == 0:
            return
        # runs of consecutive rows are read with one call each
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [rows.size]])
        flat = memoryview(out.reshape(-1).view(np.uint8))
        for a, b in zip(starts, stops, strict=True):
            view = flat[a * self.row_bytes:b * self.row_bytes]
            offset = int(rows[a]) * self.row_bytes
            while view:
                done = os.preadv(self._fd, [view], offset)
                if done == 0:
                    raise OSError(f"{self.path}: unexpected end of the scratch file")
                view, offset = view[done:], offset + done

    def close(self) -> None:
        """Close and delete the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)


def make_store(xp: ModuleType, shape: tuple[int, int], dtype, cache: str = "auto",
               scratch_dir: str = "", rank: int = 0):
    """Create the store for a rank's particles (see :func:`placement`)."""
    n_bytes = int(shape[0]) * int(shape[1]) * np.dtype(dtype).itemsize
    free = backend.device_free_bytes(xp)
    where = placement(n_bytes, free, cache, scratch_dir)
    alloc = backend.pinned_empty if free is not None else np.empty
    if where == "device":
        store = ArrayStore(xp, shape, dtype)
    elif where == "host":
        store = HostStreamStore(xp, shape, dtype, alloc)
    else:
        store = ScratchStore(xp, shape, dtype, scratch_dir, rank, alloc)
    if free is not None:
        logger.info("rank %d: %.1f MB of particles %s (GPU has %.1f MB free)", rank,
                    n_bytes / 1e6, {"device": "cached on the GPU",
                                    "host": "in pinned host memory, streamed to the GPU",
                                    "scratch": "on scratch disk, streamed to the GPU"}[where],
                    free / 1e6)
    return store
