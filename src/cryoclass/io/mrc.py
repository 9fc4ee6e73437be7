"""MRC image stacks: atomic writers and a lazy, memory-mapped particle image reader.

``ImageSource`` maps particle rows to (stack file, 0-based index) pairs, checks the
stacks from their headers only (``validate``) and reads any subset of particles as one
float32 array (``read``), opening each stack as a read-only memory map on first use and
keeping at most ``max_open`` of them open. A rank therefore only touches the pages of
its own shard.

Example
-------
>>> write_stack("parts.mrcs", images, pixel_size_A=1.06)      # doctest: +SKIP
>>> src = ImageSource(["parts.mrcs"] * 3, [0, 2, 1])           # doctest: +SKIP
>>> src.validate(); src.box_px                                 # doctest: +SKIP
64
>>> src.read([2, 0]).shape                                     # doctest: +SKIP
(2, 64, 64)
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
import pandas as pd

from cryoclass.errors import InputError
from cryoclass.io.star import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["ImageSource", "write_stack", "write_image", "read_stack", "StackInfo",
           "read_header"]

#: MRC modes cryoclass reads: int8, int16, float32, uint16, float16.
_READABLE_MODES = {0, 1, 2, 6, 12}


@dataclass(frozen=True)
class StackInfo:
    """What an MRC header says about a stack.

    Attributes
    ----------
    path : str
    nx, ny, nz : int
        Image width, height and number of images (a 2D file has ``nz == 1``).
    mode : int
        MRC mode.
    dtype : numpy.dtype
        Data type of the stored pixels (with byte order).
    data_offset : int
        Bytes before the pixel data (1024 + extended header).
    expected_size : int
        ``data_offset`` + bytes of ``nx * ny * nz`` pixels.
    file_size : int
    voxel_size_A : float
        Pixel size in the header (x), 0 when unset.
    """

    path: str
    nx: int
    ny: int
    nz: int
    mode: int
    dtype: np.dtype
    data_offset: int
    expected_size: int
    file_size: int
    voxel_size_A: float


def read_header(path: str) -> StackInfo:
    """Read and check an MRC header (no pixel reads).

    Parameters
    ----------
    path
        MRC file.

    Returns
    -------
    StackInfo

    Raises
    ------
    InputError
        Missing or unreadable file, invalid header, complex or unsupported mode, or a data
        block shorter than the header declares (truncated file).
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: image stack not found")
    file_size = os.path.getsize(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header
                if header is None:
                    raise ValueError("no header")
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                mode = int(header.mode)
                offset = 1024 + int(header.nsymbt)
                voxel = float(mrc.voxel_size.x)
        for w in caught:
            logger.debug("%s: %s", path, w.message)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc}); re-extract or replace "
                         "this stack") from exc
    if mode not in _READABLE_MODES:
        kind = "complex" if mode in (3, 4) else "unsupported"
        raise InputError(f"{path}: MRC mode {mode} is {kind}; particle stacks must hold real "
                         "images (mode 0, 1, 2, 6 or 12)")
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise InputError(f"{path}: MRC header declares an empty or invalid shape "
                         f"nx={nx} ny={ny} nz={nz}; the file is corrupt")
    dtype = mrcfile.utils.data_dtype_from_header(header)
    expected = offset + nx * ny * nz * dtype.itemsize
    if file_size < expected:
        raise InputError(
            f"{path}: truncated MRC file: header declares {nz} images of {nx}x{ny} "
            f"({expected} bytes) but the file has {file_size} bytes; re-extract or re-copy it"
        )
    return StackInfo(path, nx, ny, nz, mode, dtype, offset, expected, file_size, voxel)


def _stack_data(path: str) -> tuple[object, np.ndarray]:
    """Open ``path`` as a read-only memory map; return (handle, data of shape (nz, ny, nx))."""
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            handle = mrcfile.mmap(path, mode="r", permissive=True)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot open MRC stack ({exc})") from exc
    data = handle.data
    if data is None:
        handle.close()
        raise InputError(f"{path}: MRC data block unreadable (truncated or corrupt file)")
    if data.ndim == 2:
        data = data[np.newaxis]
    elif data.ndim != 3:
        handle.close()
        raise InputError(f"{path}: expected a 2D image or an image stack, found data of "
                         f"shape {data.shape}")
    return handle, data


class ImageSource:
    """Lazy reader of particle images from MRC stacks.

    Parameters
    ----------
    paths : array-like of str, shape (n_particles,)
        Stack file of each particle (already resolved).
    indices : array-like of int, shape (n_particles,)
        0-based image index of each particle within its stack.
    max_open : int
        Most stacks kept open (memory-mapped) at a time; least recently used are closed.
    row_offset : int
        Added to row numbers in messages (the first row of a rank's slice in the set).
    contrast : array-like of float, shape (n_particles,), optional
        Multiplier of each particle's image as read (``-1`` turns dark protein on a light
        background into cryoclass's light-on-dark; from CryoSPARC's ``blob/sign``).
    """

    def __init__(self, paths: Sequence[str] | np.ndarray | pd.Series,
                 indices: Sequence[int] | np.ndarray | pd.Series, *, max_open: int = 64,
                 row_offset: int = 0, contrast=None):
        path_arr = np.asarray(paths, dtype=object)
        idx_arr = np.asarray(indices)
        if path_arr.ndim != 1 or idx_arr.shape != path_arr.shape:
            raise ValueError(f"paths {path_arr.shape} and indices {idx_arr.shape} must be "
                             "1D and the same length")
        if not np.issubdtype(idx_arr.dtype, np.integer):
            raise ValueError("indices must be integers")
        codes, uniques = pd.factorize(path_arr)
        self._file_ids = codes.astype(np.int64)  # (n_particles,)
        self._files: list[str] = [str(u) for u in uniques]
        self._indices = idx_arr.astype(np.int64)  # (n_particles,)
        self._max_open = max(1, int(max_open))
        self._open: OrderedDict[int, tuple[object, np.ndarray]] = OrderedDict()
        self._info: dict[int, StackInfo] = {}
        self._box_px: int | None = None
        self._row0 = int(row_offset)
        self._contrast = None
        if contrast is not None:
            c = np.asarray(contrast, dtype=np.float32).reshape(-1)
            if c.shape != path_arr.shape:
                raise ValueError("contrast must have one value per particle")
            self._contrast = None if (c == 1).all() else c

    def __len__(self) -> int:
        return len(self._indices)

    @property
    def files(self) -> list[str]:
        """Distinct stack files, in order of first use."""
        return list(self._files)

    @property
    def box_px(self) -> int:
        """Image side length in pixels (from the first stack's header unless validated)."""
        if self._box_px is None:
            if not self._files:
                return 0
            first = int(self._file_ids[0])
            info = self._header(first, row=0)
            self._box_px = info.nx
        return self._box_px

    def _header(self, fid: int, row: int) -> StackInfo:
        info = self._info.get(fid)
        if info is None:
            try:
                info = read_header(self._files[fid])
            except InputError as exc:
                raise InputError(f"{exc} (first used by particle row "
                                 f"{self._row0 + row + 1})") from None
            self._info[fid] = info
        return info

    def validate(self, rows: Sequence[int] | np.ndarray | None = None) -> None:
        """Check the stacks used by ``rows`` (all particles when None) from headers only.

        Checks that each file exists and is a readable MRC of a real mode, is not
        truncated, that every index is below the stack's image count, and that all
        images are square with one box size. Sets :attr:`box_px`.

        Raises
        ------
        InputError
            Naming the file and the (1-based) particle row.
        """
        sel = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        if sel.size == 0:
            return
        fids = self._file_ids[sel]
        idx = self._indices[sel]
        if (idx < 0).any():
            bad = int(sel[np.argmax(idx < 0)])
            raise InputError(f"particle row {self._row0 + bad + 1}: negative image index "
                             f"{int(self._indices[bad])} in {self._files[self._file_ids[bad]]}")
        # first row and largest index of each file used
        frame = pd.DataFrame({"fid": fids, "idx": idx, "row": sel})
        first_row = frame.groupby("fid", sort=False)["row"].first()
        max_pos = frame.groupby("fid", sort=False)["idx"].idxmax()
        box: tuple[int, str] | None = None
        for fid, row in first_row.items():
            info = self._header(int(fid), int(row))
            if info.nx != info.ny:
                raise InputError(f"{info.path}: images are {info.nx}x{info.ny} pixels; "
                                 "particle images must be square (first used by particle "
                                 f"row {self._row0 + int(row) + 1})")
            if box is None:
                box = (info.nx, info.path)
            elif info.nx != box[0]:
                raise InputError(
                    f"mixed box sizes: {box[1]} has {box[0]}x{box[0]} images but "
                    f"{info.path} has {info.nx}x{info.nx} (first used by particle row "
                    f"{self._row0 + int(row) + 1}); re-extract all particles with one box "
                    "size"
                )
            worst = frame.loc[max_pos[fid]]
            if int(worst["idx"]) >= info.nz:
                raise InputError(
                    f"{info.path}: particle row {self._row0 + int(worst['row']) + 1} asks "
                    "for image "
                    f"{int(worst['idx']) + 1} (1-based) but the stack holds {info.nz} "
                    "images; the stack is incomplete or the particle file points to the "
                    "wrong stack"
                )
        assert box is not None
        self._box_px = box[0]
        logger.debug("validated %d particles in %d stacks, box %d px", sel.size,
                      len(first_row), box[0])

    def _data(self, fid: int) -> np.ndarray:
        entry = self._open.get(fid)
        if entry is not None:
            self._open.move_to_end(fid)
            return entry[1]
        handle, data = _stack_data(self._files[fid])
        self._open[fid] = (handle, data)
        while len(self._open) > self._max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        return data

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Read the images of the given particle rows.

        Parameters
        ----------
        rows : array-like of int, shape (n,)
            Particle rows, any order, repeats allowed.

        Returns
        -------
        numpy.ndarray, shape (n, box_px, box_px), float32
            Images in the order of ``rows``.

        Raises
        ------
        InputError
            Unreadable stack, index past the end, wrong box size, NaN or inf pixels.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        box = self.box_px
        out = np.empty((rows.size, box, box), dtype=np.float32)  # (n, box, box)
        if rows.size == 0:
            return out
        fids = self._file_ids[rows]
        idx = self._indices[rows]
        order = np.lexsort((idx, fids))  # group by file, ascending index within a file
        cuts = np.flatnonzero(np.diff(fids[order])) + 1
        for group in np.split(order, cuts):
            fid = int(fids[group[0]])
            path = self._files[fid]
            data = self._data(fid)  # (nz, ny, nx)
            if data.shape[1:] != (box, box):
                raise InputError(
                    f"{path}: images are {data.shape[2]}x{data.shape[1]} but other stacks "
                    f"hold {box}x{box} (particle row {self._row0 + int(rows[group[0]]) + 1}); "
                    "re-extract "
                    "all particles with one box size"
                )
            want = idx[group]
            if want[-1] >= data.shape[0] or want[0] < 0:
                k = int(np.argmax((want >= data.shape[0]) | (want < 0)))
                raise InputError(
                    f"{path}: particle row {self._row0 + int(rows[group[k]]) + 1} asks for image "
                    f"{int(want[k]) + 1} (1-based) but the stack holds {data.shape[0]} images"
                )
            try:
                block = data[want]  # (len(group), box, box), stored dtype
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: cannot read images ({exc})") from exc
            out[group] = block
            if block.dtype.kind == "f":
                images = out[group]
                finite = np.isfinite(images).all(axis=(1, 2))
                if not finite.all():
                    k = int(np.argmin(finite))
                    raise InputError(
                        f"{path}: image {int(want[k]) + 1} (1-based; particle row "
                        f"{self._row0 + int(rows[group[k]]) + 1}) contains NaN or infinite pixels; "
                        "re-extract it or remove that particle"
                    )
        if self._contrast is not None:
            out *= self._contrast[rows][:, None, None]
        return out

    def close(self) -> None:
        """Close every open stack."""
        while self._open:
            _, (handle, _) = self._open.popitem()
            handle.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


def write_stack(path: str | os.PathLike, data: np.ndarray, pixel_size_A: float) -> None:
    """Write images as an MRC stack (mode 2, float32), atomically.

    Parameters
    ----------
    path
        Destination (``.mrcs`` by convention); replaced atomically.
    data : numpy.ndarray, shape (n, ny, nx)
        Images; converted to float32.
    pixel_size_A
        Pixel size written as the voxel size of the header.
    """
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"write_stack expects (n, ny, nx) images, got shape {data.shape}")
    _write_mrc(path, data, pixel_size_A, stack=True)


def write_image(path: str | os.PathLike, image: np.ndarray, pixel_size_A: float) -> None:
    """Write one 2D image as an MRC file (mode 2, float32), atomically.

    Parameters
    ----------
    path
        Destination; replaced atomically.
    image : numpy.ndarray, shape (ny, nx)
    pixel_size_A
        Pixel size written to the header.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"write_image expects a (ny, nx) image, got shape {image.shape}")
    _write_mrc(path, image, pixel_size_A, stack=False)


def _write_mrc(path: str | os.PathLike, data: np.ndarray, pixel_size_A: float,
               stack: bool) -> None:
    Path(os.fspath(path)).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if stack:
                mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size_A)
            mrc.update_header_stats()
    for message in {str(w.message) for w in caught}:
        logger.warning("%s: %s", os.fspath(path), message)
    logger.debug("wrote %s %s, %.4f A/px", os.fspath(path), data.shape, pixel_size_A)


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a whole MRC file into memory.

    Parameters
    ----------
    path
        MRC image or stack.

    Returns
    -------
    data : numpy.ndarray, shape (n, ny, nx), float32
    pixel_size_A : float
        Voxel size from the header (0 when unset).
    """
    path = os.fspath(path)
    info = read_header(path)
    handle, data = _stack_data(path)
    try:
        return np.array(data, dtype=np.float32), info.voxel_size_A
    finally:
        handle.close()
