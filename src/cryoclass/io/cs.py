"""Read and write CryoSPARC ``.cs`` files.

A ``.cs`` file is a numpy structured array saved with :func:`numpy.save` (the ``.npy``
format) under a ``.cs`` name. Strings are fixed-length bytes (``S``), e.g. ``blob/path``;
vector fields such as ``blob/shape`` are sub-arrays. Field names are in
:mod:`cryoclass.io.fields`.

Example
-------
>>> arr = read_cs("J12/particles.cs")          # doctest: +SKIP
>>> arr["blob/path"][0], arr["blob/idx"][0]    # doctest: +SKIP
(b'J10/extract/mic_001_particles.mrc', 0)
>>> write_cs("out.cs", arr)                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np

from cryoclass.errors import InputError
from cryoclass.io.star import atomic_output

logger = logging.getLogger(__name__)

__all__ = ["read_cs", "write_cs", "with_fields"]


def read_cs(path: str | os.PathLike) -> np.ndarray:
    """Read a CryoSPARC ``.cs`` file.

    Parameters
    ----------
    path
        The ``.cs`` file (``.npy`` format, any suffix).

    Returns
    -------
    numpy.ndarray
        Structured array, one row per item (particle), fields as stored.

    Raises
    ------
    InputError
        Missing file, not in ``.npy`` format, pickled objects, or not a structured array.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: CryoSPARC .cs file not found; check the path")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise InputError(
            f"{path}: not a readable CryoSPARC .cs file (numpy .npy structured array): {exc}"
        ) from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        raise InputError(f"{path}: not a CryoSPARC .cs file (expected a numpy structured "
                         "array with fields such as blob/path)")
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    logger.debug("%s: %d rows, %d fields", path, len(arr), len(arr.dtype.names))
    return arr


def _bytes_dtype(values: np.ndarray) -> np.ndarray:
    """Convert a str/object array to fixed-length UTF-8 bytes (``S``)."""
    encoded = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.ravel()]
    width = max((len(v) for v in encoded), default=1) or 1
    return np.array(encoded, dtype=f"S{width}").reshape(values.shape)


def _storable(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` with str/object fields turned into fixed-length bytes."""
    bad = [n for n in arr.dtype.names if arr.dtype[n].kind in "OU"]
    if not bad:
        return arr
    return with_fields(arr, {n: _bytes_dtype(np.asarray(arr[n])) for n in bad})


def write_cs(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write a structured array as a ``.cs`` file, atomically.

    The bytes are exactly those :func:`numpy.save` writes (no ``.npy`` suffix is added).
    Fields of str or object dtype are stored as fixed-length UTF-8 bytes, as CryoSPARC
    does.

    Parameters
    ----------
    path
        Destination; replaced atomically.
    arr
        One-dimensional structured array.
    """
    if arr.dtype.names is None:
        raise ValueError("write_cs needs a structured array")
    arr = _storable(np.ascontiguousarray(arr))
    Path(os.fspath(path)).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    logger.debug("wrote %s (%d rows)", os.fspath(path), len(arr))


def with_fields(arr: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
    """Return a copy of ``arr`` with fields replaced (same position) or appended.

    Parameters
    ----------
    arr
        Structured array, shape (n,).
    values
        Field name -> array of shape (n,) or (n, k); the field takes that array's dtype
        and trailing shape.

    Returns
    -------
    numpy.ndarray
        New structured array, shape (n,).
    """
    n = len(arr)
    values = {k: np.asarray(v) for k, v in values.items()}
    for name, v in values.items():
        if len(v) != n:
            raise ValueError(f"field {name}: {len(v)} values for {n} rows")
    descr = []
    for name in arr.dtype.names:
        if name in values:
            v = values[name]
            descr.append((name, v.dtype, v.shape[1:]))
        else:
            sub = arr.dtype[name]
            descr.append((name, sub.base, sub.shape))
    for name, v in values.items():
        if name not in arr.dtype.names:
            descr.append((name, v.dtype, v.shape[1:]))
    out = np.empty(n, dtype=np.dtype(descr))
    for name in arr.dtype.names:
        if name not in values:
            out[name] = arr[name]
    for name, v in values.items():
        out[name] = v
    return out
