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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoclass.errors import InputError
from cryoclass.io.fields import STAR_VERSION

logger = logging.getLogger(__name__)

__all__ = ["read_star", "write_star", "atomic_path", "atomic_output", "write_in_rank_order"]

_DATA_RE = re.compile(rb"^[ \t]*data_(\S*)[^\n]*$", re.M)
# A loop body ends at the next line that starts a block, a loop or a label.
_BODY_END_RE = re.compile(rb"^[ \t]*(?:data_|loop_|_)", re.M)
_TOKEN_RE = re.compile(r'"([^"]*)"|\'([^\']*)\'|(\S+)')
_NA_VALUES = ["nan", "NaN", "-nan", "NAN", "-NaN"]
_WRITE_CHUNK_ROWS = 50_000
#: Approximate bytes of the particle loop body per piece of a :class:`StarIndex`.
PIECE_BYTES = 8 << 20
_STAR_TAG = 0x57A2


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
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=folder)
    except OSError as exc:
        exc.filename = path
        raise
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            exc.filename = path  # name the output in the error, not the temporary file
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


def _block_layout(buf, name: str, start: int, end: int, path: str) -> tuple:
    """Lay out one data block ``buf[start:end]`` (after its ``data_`` line).

    Returns ``("loop", labels, body_start, body_end)`` for a loop block or
    ``("simple", {key: value})`` for a key/value block; nothing is parsed yet.
    """
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
            pos = min(pos, end)
            match = _BODY_END_RE.search(buf, pos, end)
            body_end = match.start() if match else end
            if body_end < end:
                logger.warning("%s: data_%s has more than one loop or items after its loop; "
                               "only the first loop is read", path, name)
            if simple:
                logger.warning("%s: data_%s mixes key/value items and a loop; the key/value "
                               "items are ignored", path, name)
            return ("loop", labels, pos, body_end)
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
    return ("simple", simple)


def _layout_frame(buf, layout: tuple, path: str) -> pd.DataFrame:
    """Parse a block laid out by :func:`_block_layout` into a table."""
    if layout[0] == "loop":
        _, labels, body_start, body_end = layout
        return _parse_body(buf, body_start, body_end, labels, path)
    simple = layout[1]
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
    with _open_star(path) as mm:
        blocks = {name: _layout_frame(mm, layout, path)
                  for name, layout in _layouts(mm, path).items()}
    logger.debug("%s: read blocks %s", path, {k: len(v) for k, v in blocks.items()})
    return blocks


# --- reading in row slices (one per MPI rank) ---------------------------------------------


@dataclass
class StarIndex:
    """Where the rows of a STAR file's particle loop are, without parsing them.

    ``blocks`` holds every other block, parsed (they are small: optics, general);
    ``pieces`` cuts the particle loop body into line-aligned byte ranges, each with its
    first row and row count, so any rank can parse just the rows it owns.
    """

    path: str
    blocks: dict[str, pd.DataFrame]
    block_order: list[str]
    particles_block: str
    labels: list[str]
    pieces: list[tuple[int, int, int, int]]  # (byte start, byte end, first row, rows)
    key_value: bool = False  # the particle block is one key/value row (kept parsed)

    @property
    def n_rows(self) -> int:
        """Rows of the particle loop."""
        return sum(p[3] for p in self.pieces)


def _data_rows(text: bytes) -> int:
    """Count loop rows in a body fragment: lines that are neither blank nor comments."""
    n = 0
    for line in text.split(b"\n"):
        line = line.strip()
        if line and not line.startswith(b"#"):
            n += 1
    return n


def index_star(path: str | os.PathLike, choose_block,
               piece_bytes: int | None = None) -> StarIndex:
    """Index a STAR file: parse every block but the particle loop, cut that into pieces.

    Parameters
    ----------
    path
        STAR file.
    choose_block : callable(dict[str, list[str]]) -> str
        Picks the particle block from each block's labels (columns).
    piece_bytes
        Approximate size of one piece of the particle loop body (default
        :data:`PIECE_BYTES`).

    Raises
    ------
    InputError
        Missing/unreadable file, no ``data_`` block, malformed block headers.
    """
    path = os.fspath(path)
    piece_bytes = piece_bytes or PIECE_BYTES
    with _open_star(path) as mm:
        layouts = _layouts(mm, path)
        name = choose_block({k: (v[1] if v[0] == "loop" else list(v[1]))
                             for k, v in layouts.items()})
        blocks = {k: _layout_frame(mm, v, path) for k, v in layouts.items() if k != name}
        layout = layouts[name]
        pieces: list[tuple[int, int, int, int]] = []
        if layout[0] == "loop":
            labels, pos, end = layout[1], layout[2], layout[3]
            row = 0
            while pos < end:
                stop = min(end, pos + piece_bytes)
                if stop < end:
                    nl = mm.find(b"\n", stop, end)
                    stop = end if nl < 0 else nl + 1
                rows = _data_rows(mm[pos:stop])
                if rows:
                    pieces.append((pos, stop, row, rows))
                row += rows
                pos = stop
        else:  # a key/value block is one row, kept parsed in ``blocks``
            labels = list(layout[1])
            blocks[name] = _layout_frame(mm, layout, path)
            pieces = [(0, 0, 0, 1)] if labels else []
    return StarIndex(path, blocks, list(layouts), name, labels, pieces,
                     key_value=layout[0] != "loop")


def read_star_rows(index: StarIndex, start: int, stop: int) -> pd.DataFrame:
    """Rows ``[start, stop)`` of the particle loop of an indexed STAR file.

    Only the pieces that hold those rows are read and parsed. Columns are typed as by
    :func:`read_star` within the slice (int64/float64 where every value parses, else str).
    """
    if index.key_value:
        frame = index.blocks[index.particles_block]
        return frame.iloc[start:stop].reset_index(drop=True)
    parts = []
    with _open_star(index.path) as mm:
        for b0, b1, r0, nr in index.pieces:
            if r0 + nr <= start or r0 >= stop:
                continue
            frame = _parse_body(mm, b0, b1, index.labels, index.path)
            if len(frame) != nr:
                raise InputError(f"{index.path}: line {_count_newlines(mm, b0) + 1}: the "
                                 f"rows from here could not be split into {nr} rows of "
                                 f"{len(index.labels)} values")
            parts.append(frame.iloc[max(0, start - r0):min(nr, stop - r0)])
    if not parts:
        return pd.DataFrame({lab: pd.Series([], dtype=object) for lab in index.labels})
    return concat_rows(parts)


def concat_rows(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate slices of one loop, typed as one parse of all their rows would be.

    A column with numbers in one slice and text in another becomes numeric when every
    value parses, else text (as :func:`read_star` types a column).
    """
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(
        drop=True)
    for col in out.columns:
        if out[col].dtype == object:  # numbers in one piece, text in another
            out[col] = _numeric_or_str(out[col].astype(str).tolist())
    return out


@contextlib.contextmanager
def _open_star(path: str) -> Iterator[mmap.mmap]:
    """Memory-map a STAR file; a missing, empty or unreadable file is an InputError."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: STAR file not found; check the path")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: STAR file is empty")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm
    except OSError as exc:
        raise InputError(f"{path}: cannot read STAR file ({exc.strerror or exc})") from exc


def _layouts(mm, path: str) -> dict[str, tuple]:
    """Layout of every data block, in file order."""
    starts = [(m.group(1).decode("utf-8", errors="replace"), m.start(), m.end() + 1)
              for m in _DATA_RE.finditer(mm)]
    if not starts:
        raise InputError(f"{path}: no data_ block found; is this a STAR file?")
    out: dict[str, tuple] = {}
    for k, (name, _, body_start) in enumerate(starts):
        block_end = starts[k + 1][1] if k + 1 < len(starts) else len(mm)
        if name in out:
            logger.warning("%s: duplicate block data_%s; the last one is used", path, name)
        out[name] = _block_layout(mm, name, min(body_start, block_end), block_end, path)
    return out


# --- writing ----------------------------------------------------------------------------


def _quote(value: str) -> str:
    if value == "" or any(ch.isspace() for ch in value):
        return '"' + value + '"'
    return value


def _column_spec(series: pd.Series) -> tuple:
    """Return what decides a column's format: ``(kind, smallest, largest)`` magnitude.

    ``kind`` is ``"i"`` (integers, no missing values), ``"f"`` (other numbers) or ``"s"``;
    the magnitudes are over finite non-zero values (floats only). Specs of the slices of
    one column held by different ranks merge with :func:`_merge_specs`.
    """
    if pd.api.types.is_bool_dtype(series):
        return ("i", np.inf, 0.0)
    if pd.api.types.is_integer_dtype(series) and not series.isna().any():
        return ("i", np.inf, 0.0)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        finite = np.abs(values[np.isfinite(values) & (values != 0)])
        if finite.size:
            return ("f", float(finite.min()), float(finite.max()))
        return ("f", np.inf, 0.0)
    return ("s", np.inf, 0.0)


def _merge_specs(specs: list[tuple]) -> tuple:
    """One spec for a column from the specs of its slices (empty slices are ``None``)."""
    specs = [s for s in specs if s is not None]
    if not specs:
        return ("i", np.inf, 0.0)
    kinds = {s[0] for s in specs}
    kind = "s" if "s" in kinds else ("f" if "f" in kinds else "i")
    return (kind, min(s[1] for s in specs), max(s[2] for s in specs))


def _column_format(series: pd.Series, spec: tuple) -> tuple[str, np.ndarray]:
    """Return a %-format and an array of values for one column, given its spec."""
    kind, lo, hi = spec
    if kind == "i":
        return "%d", series.to_numpy(dtype=np.int64)
    if kind == "f":
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        # fixed %.6f unless the column only holds tiny or huge magnitudes
        if np.isfinite(lo) and (hi < 1e-3 or lo >= 1e15):
            return "%.6e", values
        return "%.6f", values
    strings = series.astype(object).where(series.notna(), "nan").astype(str)
    text = strings.to_numpy(dtype=object)
    needs = ((strings == "") | strings.str.contains(r"\s", regex=True)).to_numpy(dtype=bool)
    if needs.any():
        text = text.copy()
        text[needs] = [_quote(v) for v in text[needs]]
    return "%s", text


def _block_header(name: str, columns) -> str:
    return (f"\n# version {STAR_VERSION}\n\ndata_{name}\n\nloop_\n"
            + "".join(f"_{col} #{i + 1}\n" for i, col in enumerate(columns)))


def _block_rows(frame: pd.DataFrame, specs: list[tuple]) -> Iterator[str]:
    """Yield the rows of a loop block as text, ``_WRITE_CHUNK_ROWS`` rows at a time."""
    n_rows = len(frame)
    if n_rows == 0 or len(frame.columns) == 0:
        return
    formats, columns = zip(*(_column_format(frame[c], sp)
                             for c, sp in zip(frame.columns, specs, strict=True)), strict=True)
    row_format = " ".join(formats) + "\n"
    chunk = np.empty((min(_WRITE_CHUNK_ROWS, n_rows), len(columns)), dtype=object)
    for start in range(0, n_rows, _WRITE_CHUNK_ROWS):
        stop = min(start + _WRITE_CHUNK_ROWS, n_rows)
        part = chunk[: stop - start]
        for j, col in enumerate(columns):
            part[:, j] = col[start:stop]
        yield (row_format * (stop - start)) % tuple(part.ravel().tolist())


def _write_block(fh, name: str, frame: pd.DataFrame) -> None:
    fh.write(_block_header(name, frame.columns))
    for text in _block_rows(frame, [_column_spec(frame[c]) for c in frame.columns]):
        fh.write(text)
    fh.write("\n")


def write_star(path: str | os.PathLike, blocks: Mapping[str, object], comm=None,
               comments: Sequence[str] = ()) -> None:
    """Write data blocks as RELION-style loop tables, atomically.

    Parameters
    ----------
    path
        Destination; replaced atomically (temp file in the same folder, fsync, rename).
    blocks
        Block name (without ``data_``) -> table; written in the mapping's order, each as a
        ``loop_`` with ``_label #n`` headers. Integer columns are written as integers,
        floats as ``%.6f`` (``%.6e`` for columns of only tiny or huge magnitudes),
        strings quoted with ``"`` when empty or containing whitespace. The LAST block may
        instead be a callable returning an iterator of tables with the same columns
        (consecutive row chunks, at least one): it is called twice, once to agree on the
        column formats and once to write, so only one chunk is in memory at a time.
    comm : Comm, optional
        Collective write (every rank calls it): the rows of the LAST block are
        distributed, each rank passing its own, written in rank order; the other blocks
        are rank 0's. Rank 0 writes the file; every other rank formats its rows and sends
        them in chunks of ``_WRITE_CHUNK_ROWS`` rows, so no rank holds the whole text.
        Column formats are agreed over all ranks, so the file is the one a single process
        writes from the concatenated table.
    comments : sequence of str
        Lines written as ``# line`` before the first block (readers skip them).
    """
    from cryoclass.parallel.comm import Comm

    path = os.fspath(path)
    comm = comm if comm is not None else Comm(None)
    names = list(blocks)
    last = blocks[names[-1]]
    frames = last if callable(last) else (lambda: iter([last]))
    columns, local = None, []
    for frame in frames():  # first pass: the format of every column
        columns = list(frame.columns)
        if len(frame):
            local.append([_column_spec(frame[c]) for c in frame.columns])
    mine = [_merge_specs(list(col)) for col in zip(*local, strict=True)] if local else None
    gathered = [m for m in comm.allgather(mine) if m is not None]
    specs = ([_merge_specs(list(col)) for col in zip(*gathered, strict=True)] if gathered
             else [_merge_specs([])] * len(columns))

    def rows():
        for frame in frames():
            yield from _block_rows(frame, specs)

    def head(fh):
        for line in comments:
            fh.write(f"# {line}\n")
        for name in names[:-1]:
            _write_block(fh, name, blocks[name])
        fh.write(_block_header(names[-1], columns))

    write_in_rank_order(path, comm, "w", head, rows(), "\n", _STAR_TAG)


def write_in_rank_order(path: str | os.PathLike, comm, mode: str, head, pieces, tail,
                        tag: int) -> None:
    """Write a file from every rank's pieces, in rank order; collective.

    Rank 0 writes ``head(fh)``, its own ``pieces``, every other rank's pieces as they
    arrive (each rank sends them as it makes them, so no rank holds a whole file) and
    ``tail``, atomically (:func:`atomic_output`, ``mode`` "w" or "wb").
    """
    from cryoclass.io.paths import agree_error, output_error

    path = os.fspath(path)
    if comm.rank != 0:
        for piece in pieces:
            comm.send(piece, 0, tag)
        comm.send(None, 0, tag)
        agree_error(comm, None)
        return
    message, done = None, 0  # done: the other ranks whose pieces have all arrived
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, mode) as fh:
            head(fh)
            for piece in pieces:
                fh.write(piece)
            for src in range(1, comm.size):
                while (piece := comm.recv(src, tag)) is not None:
                    fh.write(piece)
                done = src
            fh.write(tail)
    except OSError as exc:  # disk full, no permission, ...: the temporary file is gone
        message = str(output_error(path, exc))
        for src in range(done + 1, comm.size):  # take the others' pieces, so none blocks
            while comm.recv(src, tag) is not None:
                pass
    agree_error(comm, message)
    logger.debug("wrote %s from %d rank(s)", path, comm.size)
