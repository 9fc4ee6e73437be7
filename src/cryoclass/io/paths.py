"""Output locations: check a run directory before any work; OS write errors as one line.

Every output file is written under a temporary name and renamed into place
(:func:`cryoclass.io.star.atomic_path`), so a failed write leaves the old file or none,
never a half-written one. This module turns the ``OSError`` of such a failure (a file in
the way, no permission, a read-only file system, the disk or quota full, a file-size
limit) into an :class:`~cryoclass.errors.OutputError` with one line naming the path and
the cause, raised on every rank so that the job stops together and prints it once.

Example
-------
>>> out = prepare_output_dir("run1", comm)        # doctest: +SKIP
>>> on_root(comm, lambda: write_stack(out / "a.mrcs", images, 1.0))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryoclass.errors import OutputError

__all__ = ["prepare_output_dir", "output_error", "on_root", "agree_error", "h5_output",
           "h5_file"]

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit was reached)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "a file is in the way",
    errno.ENOTDIR: "a file is in the way (not a directory)",
    errno.EISDIR: "a directory is in the way",
}


def _reason(exc: BaseException) -> str:
    """Short cause of an OSError (h5py's errors carry the errno only in their text)."""
    code = getattr(exc, "errno", None)
    if code in _REASONS:
        return _REASONS[code]
    text = str(exc)
    for code, reason in _REASONS.items():
        if os.strerror(code) in text or f"errno = {code}," in text:
            return reason
    return text.splitlines()[0] if text else type(exc).__name__


def output_error(path: str | os.PathLike | None, exc: BaseException) -> OutputError:
    """Return the one-line :class:`OutputError` for a failed write of ``path``."""
    where = os.fspath(path) if path is not None else (getattr(exc, "filename", None) or
                                                       "output")
    reason = _reason(exc)
    full = reason in (_REASONS[errno.ENOSPC], _REASONS[errno.EDQUOT], _REASONS[errno.EFBIG])
    hint = "free space or write elsewhere" if full else "choose another location"
    return OutputError(f"{os.fspath(where)}: cannot write: {reason}; {hint} (the file was "
                       "not written)")


def agree_error(comm, message: str | None) -> None:
    """Raise ``OutputError(message)`` on every rank when any rank has one (collective).

    The lowest rank's message wins, so every rank raises the same error.
    """
    if comm.size > 1:
        message = next((m for m in comm.allgather(message) if m is not None), None)
    if message is not None:
        raise _collective(message)


def _collective(message: str) -> OutputError:
    """Return an OutputError marked as raised on every rank (the CLI prints it once)."""
    err = OutputError(message)
    err.collective = True
    return err


def on_root(comm, fn, path: str | os.PathLike | None = None):
    """Run ``fn()`` on rank 0 only; a write error there is raised on every rank.

    Returns ``fn()``'s result on rank 0 (None elsewhere). Collective.
    """
    result, message = None, None
    if comm.rank == 0:
        try:
            result = fn()
        except OutputError as exc:
            message = str(exc)
        except OSError as exc:
            message = str(output_error(path or getattr(exc, "filename", None), exc))
    if comm.size > 1:
        message = comm.bcast(message)
    if message is not None:
        raise _collective(message)
    return result


def prepare_output_dir(path: str | os.PathLike, comm=None, option: str = "--out") -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written in it.

    Collective with ``comm``: rank 0 checks, every rank raises the same
    :class:`OutputError` on a problem (a file of that name, a parent that is a file, no
    permission, a read-only or full file system), before any work is done.
    """
    from cryoclass.parallel.comm import Comm

    comm = comm if comm is not None else Comm(None)
    path = Path(path)

    def check():
        if path.exists() and not path.is_dir():
            raise OutputError(f"{option} {path}: exists and is not a directory; give a "
                              "new or existing directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutputError(f"{option} {path}: a file is in the way of this directory "
                              "(one of its parents is a file); choose another location") \
                from None
        except OSError as exc:
            raise OutputError(f"{option} {path}: cannot create the directory: "
                              f"{_reason(exc)}; choose another location") from None
        try:  # a real probe: permission bits say nothing on read-only mounts or for root
            fd, probe = tempfile.mkstemp(prefix=".cryoclass-write-test.", dir=path)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"{option} {path}: cannot write files there: "
                              f"{_reason(exc)}; choose another location") from None

    on_root(comm, check)
    return path


@contextlib.contextmanager
def h5_file(tmp: str | os.PathLike) -> Iterator[object]:
    """Open ``tmp`` (an existing, empty file) as a new HDF5 file, written through Python.

    HDF5's own file driver crashes the process (segmentation fault) when a write fails
    with a full disk; through a Python file object the failure is an ``OSError`` like any
    other write, which the caller reports and cleans up.
    """
    import h5py

    try:
        with open(tmp, "r+b") as fh, h5py.File(fh, "w") as f:
            yield f
    except RuntimeError as exc:  # h5py's form of a failed write through the file object
        text = str(exc)
        if "write" not in text and "errno" not in text:
            raise
        code = next((c for c in _REASONS if f"errno = {c}," in text
                     or os.strerror(c) in text), errno.EIO)
        raise OSError(code, text.splitlines()[0]) from exc


@contextlib.contextmanager
def h5_output(path: str | os.PathLike) -> Iterator[object]:
    """Write a new HDF5 file atomically: a temporary file renamed over ``path`` at the end."""
    from cryoclass.io.star import atomic_path

    with atomic_path(path) as tmp, h5_file(tmp) as f:
        yield f
