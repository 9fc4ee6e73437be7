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

import numpy as np

from cryoclass.errors import InputError
from cryoclass.io.star import write_in_rank_order

logger = logging.getLogger(__name__)

__all__ = ["read_cs", "write_cs", "with_fields"]


def read_cs(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Read a CryoSPARC ``.cs`` file.

    Parameters
    ----------
    path
        The ``.cs`` file (``.npy`` format, any suffix).
    mmap
        Memory-map the file read-only instead of reading it (take slices of the result).

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
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
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


def write_cs(path: str | os.PathLike, arr, comm=None) -> None:
    """Write a structured array as a ``.cs`` file, atomically.

    The bytes are exactly those :func:`numpy.save` writes (no ``.npy`` suffix is added).
    Fields of str or object dtype are stored as fixed-length UTF-8 bytes, as CryoSPARC
    does.

    Parameters
    ----------
    path
        Destination; replaced atomically.
    arr
        One-dimensional structured array, or a callable returning an iterator of such
        arrays (consecutive row chunks with the same fields, at least one): it is called
        twice, to agree on one dtype and to write, so one chunk is in memory at a time.
    comm : Comm, optional
        Collective write (every rank calls it with its own rows, written in rank order):
        the ranks agree on one dtype (the widest of each bytes field), rank 0 writes the
        header and its rows, then every other rank's rows as they arrive in chunks, so no
        rank holds the whole array. The file equals ``numpy.save`` of the concatenation.
    """
    from cryoclass.parallel.comm import Comm

    comm = comm if comm is not None else Comm(None)
    chunks = arr if callable(arr) else (lambda: iter([arr]))
    dtypes, n_local = [], 0
    for a in chunks():  # first pass: one dtype and the row count
        if a.dtype.names is None:
            raise ValueError("write_cs needs a structured array")
        dtypes.append(_storable(np.ascontiguousarray(a)).dtype)
        n_local += len(a)
    dtype = common_dtype([d for part in comm.allgather(dtypes) for d in part])
    n_total = int(sum(comm.allgather(n_local)))
    step = max(1, _CS_CHUNK_BYTES // max(dtype.itemsize, 1))

    def pieces():
        for a in chunks():
            a = _storable(np.ascontiguousarray(a)).astype(dtype, copy=False)
            for s in range(0, len(a), step):
                yield a[s:s + step].tobytes()

    write_in_rank_order(path, comm, "wb", lambda fh: fh.write(_npy_header(dtype, n_total)),
                        pieces(), b"", _CS_TAG)


def common_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """One structured dtype for slices of one array: bytes fields take the widest width.

    Every slice must have the same fields in the same order with the same kinds.
    """
    first = dtypes[0]
    descr = []
    for name in first.names:
        subs = [dt[name] for dt in dtypes]
        base, shape = subs[0].base, subs[0].shape
        if base.kind == "S":
            base = np.dtype(f"S{max(s.base.itemsize for s in subs)}")
        elif any(s.base != base or s.shape != shape for s in subs):
            raise ValueError(f"field {name} has different types on different ranks: "
                             f"{sorted({str(s) for s in subs})}")
        descr.append((name, base, shape))
    if any(dt.names != first.names for dt in dtypes):
        raise ValueError("the slices of one .cs array have different fields")
    return np.dtype(descr)


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """Return the header :func:`numpy.save` writes for ``n`` items of ``dtype`` (1-D)."""
    import io

    from numpy.lib import format as npy

    header = {"descr": npy.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
    buf = io.BytesIO()
    try:
        npy.write_array_header_1_0(buf, header)
    except ValueError:  # header over 64 KiB
        buf = io.BytesIO()
        npy.write_array_header_2_0(buf, header)
    return buf.getvalue()


_CS_TAG = 0x0C5A
_CS_CHUNK_BYTES = 16 << 20


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
