"""Array namespaces (NumPy or CuPy) and host/device transfer.

The backend follows the data: numerics call :func:`array_namespace` on their
inputs. Only :func:`get_namespace` (used by the driver) chooses a backend by
name, and only this module imports CuPy.

Examples
--------
>>> import numpy as np
>>> array_namespace(np.zeros(3)) is np
True
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def array_namespace(*arrays: Any) -> ModuleType:
    """Return ``numpy`` or ``cupy``, whichever module owns the arrays."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_host(a: Any) -> np.ndarray:
    """Copy an array to host memory (no-op for NumPy arrays)."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return np.asarray(get() if get is not None else a)


def cupy_available() -> bool:
    """Return True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return bool(cupy.cuda.is_available()) and cupy.cuda.runtime.getDeviceCount() > 0
    except (ImportError, RuntimeError):
        return False
    except Exception:  # CUDARuntimeError is not always a RuntimeError subclass
        return False


def get_namespace(name: str) -> ModuleType:
    """Resolve a backend name (``numpy``, ``cupy`` or ``auto``) to a module."""
    if name == "numpy":
        return np
    if name in ("cupy", "auto"):
        if cupy_available():
            import cupy

            return cupy
        if name == "cupy":
            from cryoclass.errors import ConfigError

            raise ConfigError("compute.backend = 'cupy' but no CUDA device is usable here")
        return np
    from cryoclass.errors import ConfigError

    raise ConfigError(f"unknown backend {name!r} (use 'numpy', 'cupy' or 'auto')")


def select_device(local_rank: int, devices: list[int] | None = None) -> int | None:
    """Bind this process to one GPU chosen by its node-local rank.

    Parameters
    ----------
    local_rank : int
        Rank of this process among the ranks on the same node.
    devices : list of int, optional
        Device ids to choose from (default: all visible devices).

    Returns
    -------
    int or None
        The device id in use, or None when no device is usable.
    """
    if not cupy_available():
        return None
    import cupy

    visible = devices if devices else list(range(cupy.cuda.runtime.getDeviceCount()))
    dev = visible[local_rank % len(visible)]
    cupy.cuda.Device(dev).use()
    logger.debug("local rank %d uses CUDA device %d", local_rank, dev)
    return dev


def device_free_bytes(xp: ModuleType) -> int | None:
    """Free memory of the current GPU (incl. CuPy's pool), or None for NumPy."""
    if xp is np:
        return None
    free, _ = xp.cuda.runtime.memGetInfo()
    return int(free) + int(xp.get_default_memory_pool().free_bytes())


def pinned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Return a NumPy array in page-locked (pinned) host memory (fast copies to the GPU)."""
    import cupy

    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    mem = cupy.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
    return np.frombuffer(mem, dtype, count).reshape(shape)


def synchronize(a: Any) -> None:
    """Wait until the device has finished the work queued on the current stream."""
    if not isinstance(a, np.ndarray) and type(a).__module__.startswith("cupy"):
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def fft_module(xp: ModuleType) -> Any:
    """Return the fastest FFT module for a namespace (scipy.fft on CPU, cupy.fft on GPU)."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft


def fft_workers() -> int:
    """Threads for scipy.fft (``CRYOCLASS_FFT_WORKERS``, default 1: MPI ranks own the cores)."""
    return int(os.environ.get("CRYOCLASS_FFT_WORKERS", "1"))
