"""Read and write RELION STAR files, fast enough for millions of particles.

``read_star`` returns every data block as a :class:`pandas.DataFrame` (loop blocks as
tables, simple key/value blocks as one-row tables), keyed by the block name without
``data_``; column names are the labels without the leading underscore. Loop bodies are
parsed by pandas' C tokenizer (about 2-5 s per million rows); only bodies it cannot
parse (single-quoted strings, ragged rows) go through a slower Python tokenizer, which
also names the offending line.

``write_star`` writes RELION-style loop blocks atomically (temp file, fsync,
``os.replace``). The helpers :func:`atomic_path` / :func:`atomic_output` are shared by
the other writers of :mod:`cryoclass.io`.

Example
-------
>>> blocks = read_star("particles.star")          # doctest: +SKIP
>>> blocks["particles"]["rlnImageName"].iloc[0]   # doctest: +SKIP
'000001@Extract/job005/mic001.mrcs'
>>> write_star("out.star", blocks)                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cryoclass.errors import InputError
from cryoclass.io.fields import STAR_VERSION

logger = logging.getLogger(__name__)

__all__ = ["read_star", "write_star", "atomic_path", "atomic_output"]

_DATA_RE = re.compile(rb"^[ \t]*data_(\S*)[^\n]*$", re.M)
# A loop body ends at the next line that starts a block, a loop or a label.
_BODY_END_RE = re.compile(rb"^[ \t]*(?:data_|loop_|_)", re.M)
_TOKEN_RE = re.compile(r'"([^"]*)"|\'([^\']*)\'|(\S+)')
_NA_VALUES = ["nan", "NaN", "-nan", "NAN", "-NaN"]
_WRITE_CHUNK_ROWS = 50_000


# --- atomic writes ----------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    Readers never see a half-written file: either the old file or the complete new one.
    On an exception the temporary file is removed and ``path`` is left untouched.

    Parameters
    ----------
    path
        Final destination.

    Yields
    ------
    str
        Temporary file name in the same folder (already created, empty).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[io.IOBase]:
    """Open a temporary file for writing that atomically replaces ``path`` on success.

    Parameters
    ----------
    path
        Final destination.
    mode
        ``"w"`` (text, UTF-8) or ``"wb"``.

    Yields
    ------
    file object
    """
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()


# --- reading ----------------------------------------------------------------------------


def _line_at(buf, pos: int) -> tuple[bytes, int]:
    """Return the line starting at ``pos`` (without newline) and the next line's start."""
    end = buf.find(b"\n", pos)
    if end < 0:
        end = len(buf)
    return bytes(buf[pos:end]), end + 1


def _tokenize(line: str) -> list[str]:
    """Split a STAR line into values; quotes group words, an unquoted ``#`` ends the line."""
    tokens = []
    for m in _TOKEN_RE.finditer(line):
        if m.group(3) is not None:
            if m.group(3).startswith("#"):
                break
            tokens.append(m.group(3))
        else:
            tokens.append(m.group(1) if m.group(1) is not None else m.group(2))
    return tokens


def _numeric_or_str(values: list[str]) -> pd.Series:
    """Convert one column of tokens to int64/float64 when every token parses, else str."""
    series = pd.Series(values, dtype=object)
    try:
        return pd.to_numeric(series.where(~series.isin(_NA_VALUES), np.nan))
    except (ValueError, TypeError):
        return series.astype(str)


def _parse_body_slow(text: str, labels: list[str], path: str, first_line: int) -> pd.DataFrame:
    """Tokenize a loop body in Python (quotes of both kinds); exact errors with line numbers."""
    rows = []
    for offset, raw in enumerate(text.split("\n")):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = _tokenize(line)
        if len(tokens) != len(labels):
            raise InputError(
                f"{path}: line {first_line + offset}: expected {len(labels)} values "
                f"(one per label {labels[0]} ... {labels[-1]}), found {len(tokens)}; "
                "fix or remove that row"
            )
        rows.append(tokens)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in labels]
    return pd.DataFrame({lab: _numeric_or_str(list(col)) for lab, col in zip(labels, columns,
                                                                                strict=True)})


def _parse_body(buf, start: int, end: int, labels: list[str], path: str) -> pd.DataFrame:
    """Parse a loop body ``buf[start:end]``: pandas C tokenizer, Python fallback."""
    body = bytes(buf[start:end])
    if not labels:
        return pd.DataFrame()
    if b"'" not in body:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                warnings.simplefilter("ignore", pd.errors.DtypeWarning)
                frame = pd.read_csv(
                    io.BytesIO(body), sep=r"\s+", header=None, names=labels, index_col=False,
                    comment="#", quotechar='"', keep_default_na=False, na_values=_NA_VALUES,
                    engine="c",
                )
        except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as exc:
            logger.debug("%s: fast STAR parser failed (%s); using the slow path", path, exc)
        else:
            # Short rows show up as empty strings; quoted "" too. Both go the exact way.
            ragged = any(
                (frame[c] == "").any() for c in frame.columns
                if not pd.api.types.is_numeric_dtype(frame[c])
            )
            if len(labels) == len(frame.columns) and not ragged:
                if len(frame) == 0:
                    return pd.DataFrame({lab: pd.Series([], dtype=object) for lab in labels})
                for col in frame.columns:
                    if frame[col].dtype == object:  # mixed types across parser chunks
                        frame[col] = _numeric_or_str(frame[col].astype(str).tolist())
                return frame
    first_line = _count_newlines(buf, start) + 1
    return _parse_body_slow(body.decode("utf-8", errors="replace"), labels, path, first_line)


def _parse_block(buf, name: str, start: int, end: int, path: str) -> pd.DataFrame:
    """Parse one data block ``buf[start:end]`` (after its ``data_`` line)."""
    pos = start
    simple: dict[str, str] = {}
    while pos < end:
        raw, nxt = _line_at(buf, pos)
        line = raw.decode("utf-8", errors="replace").strip()
        if not line or line.startswith("#"):
            pos = nxt
            continue
        if line.startswith("loop_"):
            labels: list[str] = []
            pos = nxt
            while pos < end:
                raw, nxt = _line_at(buf, pos)
                text = raw.decode("utf-8", errors="replace").strip()
                if not text or text.startswith("#"):
                    pos = nxt
                    continue
                if not text.startswith("_"):
                    break
                labels.append(text.split()[0][1:])
                pos = nxt
            match = _BODY_END_RE.search(buf, pos, end)
            body_end = match.start() if match else end
            frame = _parse_body(buf, pos, body_end, labels, path)
            if body_end < end:
                logger.warning("%s: data_%s has more than one loop or items after its loop; "
                               "only the first loop is read", path, name)
            if simple:
                logger.warning("%s: data_%s mixes key/value items and a loop; the key/value "
                               "items are ignored", path, name)
            return frame
        if line.startswith("_"):
            tokens = _tokenize(line)
            key = tokens[0][1:]
            simple[key] = tokens[1] if len(tokens) > 1 else ""
            pos = nxt
            continue
        raise InputError(
            f"{path}: line {_count_newlines(buf, pos) + 1}: unexpected text {line[:40]!r} in "
            f"data_{name} (expected loop_, a _label or a comment)"
        )
    if not simple:
        return pd.DataFrame()
    return pd.DataFrame({k: _numeric_or_str([v]) for k, v in simple.items()})


def _count_newlines(buf, pos: int) -> int:
    """Count the newlines before ``pos`` (for error messages only)."""
    return bytes(buf[:pos]).count(b"\n")


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file.

    Parameters
    ----------
    path
        STAR file (RELION 3.0, 3.1+ or any loop/key-value STAR).

    Returns
    -------
    dict[str, pandas.DataFrame]
        Block name without ``data_`` (``""`` for a bare ``data_``) -> table, in file
        order. Loop blocks give one row per loop row; key/value blocks one row. Column
        names are the labels without the leading underscore; numeric columns are
        int64/float64, the others str.

    Raises
    ------
    InputError
        Missing/unreadable file, no ``data_`` block, rows with the wrong number of values.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: STAR file not found; check the path")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: STAR file is empty")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            starts = [(m.group(1).decode("utf-8", errors="replace"), m.start(), m.end() + 1)
                      for m in _DATA_RE.finditer(mm)]
            if not starts:
                raise InputError(f"{path}: no data_ block found; is this a STAR file?")
            blocks: dict[str, pd.DataFrame] = {}
            for k, (name, _, body_start) in enumerate(starts):
                block_end = starts[k + 1][1] if k + 1 < len(starts) else len(mm)
                if name in blocks:
                    logger.warning("%s: duplicate block data_%s; the last one is used", path, name)
                blocks[name] = _parse_block(mm, name, min(body_start, block_end), block_end, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read STAR file ({exc.strerror or exc})") from exc
    logger.debug("%s: read blocks %s", path, {k: len(v) for k, v in blocks.items()})
    return blocks


# --- writing ----------------------------------------------------------------------------


def _quote(value: str) -> str:
    if value == "" or any(ch.isspace() for ch in value):
        return '"' + value + '"'
    return value


def _column_format(series: pd.Series) -> tuple[str, np.ndarray]:
    """Return a %-format and an array of values for one column."""
    if pd.api.types.is_bool_dtype(series):
        return "%d", series.to_numpy(dtype=np.int64)
    if pd.api.types.is_integer_dtype(series) and not series.isna().any():
        return "%d", series.to_numpy(dtype=np.int64)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        finite = np.abs(values[np.isfinite(values) & (values != 0)])
        # fixed %.6f unless the column only holds tiny or huge magnitudes
        if finite.size and (finite.max() < 1e-3 or finite.min() >= 1e15):
            return "%.6e", values
        return "%.6f", values
    strings = series.astype(object).where(series.notna(), "nan").astype(str)
    text = strings.to_numpy(dtype=object)
    needs = ((strings == "") | strings.str.contains(r"\s", regex=True)).to_numpy(dtype=bool)
    if needs.any():
        text = text.copy()
        text[needs] = [_quote(v) for v in text[needs]]
    return "%s", text


def _write_block(fh, name: str, frame: pd.DataFrame) -> None:
    fh.write(f"\n# version {STAR_VERSION}\n\ndata_{name}\n\nloop_\n")
    fh.write("".join(f"_{col} #{i + 1}\n" for i, col in enumerate(frame.columns)))
    n_rows = len(frame)
    if n_rows == 0 or len(frame.columns) == 0:
        fh.write("\n")
        return
    formats, columns = zip(*(_column_format(frame[c]) for c in frame.columns), strict=True)
    row_format = " ".join(formats) + "\n"
    chunk = np.empty((min(_WRITE_CHUNK_ROWS, n_rows), len(columns)), dtype=object)
    for start in range(0, n_rows, _WRITE_CHUNK_ROWS):
        stop = min(start + _WRITE_CHUNK_ROWS, n_rows)
        part = chunk[: stop - start]
        for j, col in enumerate(columns):
            part[:, j] = col[start:stop]
        fh.write((row_format * (stop - start)) % tuple(part.ravel().tolist()))
    fh.write("\n")


def write_star(path: str | os.PathLike, blocks: Mapping[str, pd.DataFrame]) -> None:
    """Write data blocks as RELION-style loop tables, atomically.

    Parameters
    ----------
    path
        Destination; replaced atomically (temp file in the same folder, fsync, rename).
    blocks
        Block name (without ``data_``) -> table; written in the mapping's order, each as a
        ``loop_`` with ``_label #n`` headers. Integer columns are written as integers,
        floats as ``%.6f`` (``%.6e`` for columns of only tiny or huge magnitudes),
        strings quoted with ``"`` when empty or containing whitespace.
    """
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "w") as fh:
        for name, frame in blocks.items():
            _write_block(fh, name, frame)
    logger.debug("wrote %s (%s)", path, {k: len(v) for k, v in blocks.items()})
