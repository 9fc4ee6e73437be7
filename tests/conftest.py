"""Shared test fixtures: array backends (NumPy, and CuPy where a device exists) and
dtype-dependent tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from cryoclass.backend import cupy_available, to_host


def _backend_params():
    params = [pytest.param("numpy", id="numpy")]
    params.append(pytest.param(
        "cupy", id="cupy",
        marks=[pytest.mark.gpu,
               pytest.mark.skipif(not cupy_available(), reason="no CUDA device for CuPy")]))
    return params


@pytest.fixture(params=_backend_params())
def xp(request):
    """Array namespace under test: numpy, or cupy where a CUDA device is usable."""
    if request.param == "numpy":
        return np
    import cupy

    return cupy


# Relative tolerances of arithmetic (not of approximations such as interpolation) per
# precision: a few hundred ulps of the accumulated sums the numerics perform.
_RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.complex64): 2e-5,
         np.dtype(np.float64): 1e-11, np.dtype(np.complex128): 1e-11}


def rtol_for(dtype) -> float:
    """Relative tolerance for results computed in ``dtype`` (real or complex)."""
    return _RTOL[np.dtype(dtype)]


def atol_for(dtype, scale: float = 1.0) -> float:
    """Absolute tolerance for results of magnitude ``scale`` computed in ``dtype``."""
    return rtol_for(dtype) * scale


def complex_dtype(real_dtype):
    """The complex dtype paired with a real one (float32 -> complex64)."""
    return np.result_type(np.dtype(real_dtype), np.complex64)


def host(a):
    """Copy to host memory as a NumPy array (no-op for NumPy)."""
    return to_host(a)


def mpiexec_command():
    """The MPI launcher for tests: $CRYOCLASS_TEST_MPIEXEC, else the venv's own mpiexec."""
    import os
    import shlex
    import sys
    from pathlib import Path

    env = os.environ.get("CRYOCLASS_TEST_MPIEXEC")
    if env:
        return shlex.split(env)
    return [str(Path(sys.executable).parent / "mpiexec")]
