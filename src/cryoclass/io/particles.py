"""Particle sets: load RELION STAR / CryoSPARC .cs into one canonical table; write results.

``load_particles`` reads either format into a :class:`ParticleTable` whose ``meta``
frame has the same unit-suffixed columns for both (see
:data:`cryoclass.io.fields.CANONICAL_COLUMNS`), checks the image stacks from their
headers and keeps the raw input (STAR blocks or .cs array) so that the writers can
return every input column, in input order, with the alignment results added.

Example
-------
>>> table = load_particles("Extract/job005/particles.star")        # doctest: +SKIP
>>> table.meta[["defocus_u_A", "pixel_size_A"]].head()              # doctest: +SKIP
>>> images = table.image_source().read(range(100))                  # (100, box, box)
>>> write_particles_star("run/particles.star", table, align)        # doctest: +SKIP

Conventions (details in docs/formats.md): image indices are 0-based in ``meta``
(STAR's ``idx@stack`` is 1-based); angles in radians; ``shift_*_A`` in ``align`` is the
particle centre minus the box centre, so RELION's origin is its negative.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoclass.errors import InputError
from cryoclass.io import fields as F
from cryoclass.io.cs import read_cs, with_fields, write_cs
from cryoclass.io.mrc import ImageSource, read_header
from cryoclass.io.star import StarIndex, concat_rows, index_star, read_star_rows, write_star
from cryoclass.parallel.comm import Comm
from cryoclass.parallel.partition import block_range, splitmix64

logger = logging.getLogger(__name__)

__all__ = [
    "ParticleTable",
    "load_particles",
    "write_particles_star",
    "write_particles_cs",
    "write_subset_star",
    "write_subset_cs",
    "subset_table",
]

_DEG2RAD = np.pi / 180.0


@dataclass
class ParticleTable:
    """A particle set in canonical form plus the raw input it came from.

    Attributes
    ----------
    meta : pandas.DataFrame
        One row per particle in input order, columns
        :data:`cryoclass.io.fields.CANONICAL_COLUMNS` (units in the names).
    source_format : str
        ``"star"`` or ``"cs"``.
    source_path : str
    star_blocks : dict[str, pandas.DataFrame] or None
        Every block as read (STAR input), for writing back all input columns.
    particles_block : str
        Name of the particle block in ``star_blocks`` (``""`` for a bare ``data_``).
    cs_array : numpy.ndarray or None
        The structured array as read (.cs input).
    box_px : int
        Image side length (0 when unknown, i.e. images not checked and no header found).
    has_ctf : bool
        True when CTF correction is on and the CTF values came from the input; False
        means ``meta`` holds the CTF-off convention.
    has_locations : bool
        True when micrograph names and picked coordinates exist.
    base_dir : str
        Folder that relative paths of the input were resolved against.
    row_offset : int
        Row of the whole set where this table's first row sits (a rank's slice).
    n_total : int
        Particles in the whole set (``len(self)`` unless this is a rank's slice).
    pixel_size_A : float
        Pixel size of the set (of its first particle).
    pixel_size_range_A : tuple of float
        Smallest and largest pixel size over the whole set.
    input_rows : numpy.ndarray of int64 or None
        Row in the input file of each of this table's rows, for a subset of the input
        (:func:`subset_table`); None when the table is the input itself (row
        ``row_offset + i``).
    micrograph_shape_px : (ny, nx) or None
        Shape of the micrographs for the .cs ``location/*`` fields when the input does
        not give it and the micrograph files are not found (user-given).
    """

    meta: pd.DataFrame
    source_format: str
    source_path: str
    star_blocks: dict[str, pd.DataFrame] | None = None
    particles_block: str = F.STAR_BLOCK_PARTICLES
    cs_array: np.ndarray | None = None
    box_px: int = 0
    has_ctf: bool = True
    has_locations: bool = False
    base_dir: str = ""
    row_offset: int = 0
    n_total: int = -1
    pixel_size_A: float = 0.0
    pixel_size_range_A: tuple[float, float] = (0.0, 0.0)
    input_rows: np.ndarray | None = None
    micrograph_shape_px: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.n_total < 0:
            self.n_total = len(self.meta)
        if not self.pixel_size_A and len(self.meta):
            ps = self.meta[F.PIXEL_SIZE_A].to_numpy()
            self.pixel_size_A = float(ps[0])
            self.pixel_size_range_A = (float(ps.min()), float(ps.max()))

    def __len__(self) -> int:
        return len(self.meta)

    def global_input_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows in the input file of this table's ``rows`` (all when None), int64."""
        local = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.input_rows is None:
            return local + self.row_offset
        return np.asarray(self.input_rows, dtype=np.int64)[local]

    def image_source(self, max_open: int = 64) -> ImageSource:
        """Return an :class:`~cryoclass.io.mrc.ImageSource` over this table's rows."""
        return ImageSource(self.meta[F.IMAGE_PATH].to_numpy(dtype=object),
                           self.meta[F.IMAGE_INDEX].to_numpy(), max_open=max_open,
                           row_offset=self.row_offset,
                           contrast=self.meta[F.IMAGE_CONTRAST].to_numpy())


# --- helpers ----------------------------------------------------------------------------


#: Comment line of a STAR file written by cryoclass: the folder its relative image names
#: were resolved against when read (image names are copied unchanged, RELION-style).
IMAGE_BASE_COMMENT = "cryoclass: relative image paths were resolved against "


def _recorded_base(path: str) -> str | None:
    """Return the folder a cryoclass-written STAR file records for its relative image names."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for _, line in zip(range(20), fh, strict=False):
                if line.startswith("data_"):
                    break
                text = line.lstrip("#").strip() if line.startswith("#") else ""
                if text.startswith(IMAGE_BASE_COMMENT):
                    return text[len(IMAGE_BASE_COMMENT):]
    except OSError:
        return None
    return None


def _base_candidates(folder: str, project_dir: str | None,
                     recorded: str | None = None) -> list[str]:
    """Folders to resolve relative paths against, in order of preference.

    The file's own folder, the folder recorded in a cryoclass-written STAR file, three
    parents of the file's folder, the working directory; ``project_dir`` alone if given.
    """
    if project_dir is not None:
        return [os.path.abspath(project_dir)]
    folder = os.path.abspath(folder)
    out = [folder] + ([recorded] if recorded else [])
    parent = folder
    for _ in range(3):
        parent = os.path.dirname(parent)
        out.append(parent)
    out.append(os.getcwd())
    return list(dict.fromkeys(out))


def _choose_base(uniques: Sequence[str], candidates: list[str], what: str) -> str:
    """Return the first candidate folder where one of the first relative paths exists.

    The STAR (.cs) file's own folder is tried first; RELION and CryoSPARC write paths
    relative to the project directory, which is usually one to three levels up.
    """
    relative = [p for p in uniques if not os.path.isabs(p)]
    base = candidates[0]
    if relative:
        probes = relative[:3]
        for cand in candidates:
            if any(os.path.exists(os.path.join(cand, p)) for p in probes):
                base = cand
                break
        if base != candidates[0]:
            logger.info("relative %s paths resolved against %s", what, base)
    return base


def _resolve(uniques: Sequence[str], base: str) -> list[str]:
    """Absolute, normalized paths; relative ones are taken relative to ``base``."""
    return [os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))
            for p in uniques]


def _numeric(values: pd.Series | np.ndarray, label: str, path: str,
             finite: bool = True, row0: int = 0) -> np.ndarray:
    """Return a float64 array; non-numbers (and NaN/inf when ``finite``) are InputErrors.

    ``row0`` is the global row of the first value (for the message).
    """
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    out = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(out) if finite else np.isnan(out) & series.notna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{path}: particle row {row0 + row + 1}: {label} is "
                         f"'{series.iloc[row]}', not a finite number; fix that row")
    return out


def _decode(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Factorize a bytes/str array; return (codes, decoded uniques)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    decoded = [u.decode("utf-8", errors="replace") if isinstance(u, bytes) else str(u)
               for u in uniques]
    return codes, decoded


def _ctf_error(path: str, missing: list[str]) -> InputError:
    return InputError(
        f"{path}: CTF correction is on but these CTF fields are missing: "
        f"{', '.join(missing)}; add them (e.g. extract the particles from micrographs "
        "with CTF estimates) or run with CTF correction off (--no-ctf)"
    )


def _ctf_off_columns(n: int, voltage_kv: np.ndarray | None) -> dict[str, np.ndarray]:
    out = {k: np.full(n, v) for k, v in F.CTF_OFF_VALUES.items()}
    volt = np.full(n, F.DEFAULT_VOLTAGE_KV) if voltage_kv is None else voltage_kv.copy()
    volt[~np.isfinite(volt)] = F.DEFAULT_VOLTAGE_KV
    out[F.VOLTAGE_KV] = volt
    return out


def _make_meta(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    meta = pd.DataFrame({name: columns[name] for name in F.CANONICAL_COLUMNS})
    meta[F.IMAGE_INDEX] = meta[F.IMAGE_INDEX].astype(np.int64)
    return meta


def collectively(comm: Comm, fn):
    """Run ``fn`` on every rank; if it raises an InputError on any, raise it on all.

    The message raised is that of the lowest failing rank (the earliest particle row,
    since ranks own contiguous rows in order), so every rank exits with the same error.
    """
    result, msg = None, None
    try:
        result = fn()
    except InputError as exc:
        msg = str(exc)
    if comm.size > 1:
        msg = next((m for m in comm.allgather(msg) if m is not None), None)
    if msg is not None:
        raise InputError(msg)
    return result


# --- STAR -------------------------------------------------------------------------------


def _find_particle_block(labels: dict[str, list[str]], path: str) -> str:
    """Return the particle block of a STAR file, given each block's labels."""
    if F.STAR_BLOCK_PARTICLES in labels:
        name = F.STAR_BLOCK_PARTICLES
    else:
        with_images = [k for k, v in labels.items() if F.RLN_IMAGE_NAME in v]
        others = [k for k in labels if k != F.STAR_BLOCK_OPTICS]
        if with_images:
            name = with_images[0]
        elif len(others) == 1:
            name = others[0]
        else:
            found = ", ".join(f"data_{k}" for k in labels) or "none"
            raise InputError(f"{path}: no particle block (data_particles, or a block with "
                             f"_rlnImageName); blocks found: {found}")
    if F.RLN_IMAGE_NAME not in labels[name]:
        raise InputError(
            f"{path}: data_{name} has no _rlnImageName column, so the particle images "
            "cannot be found; use a particle STAR file from extraction (each row "
            "names its image as index@stack.mrcs)"
        )
    return name


def _join_optics(parts: pd.DataFrame, optics: pd.DataFrame | None, path: str,
                 row0: int) -> dict[str, pd.Series]:
    """Particle columns plus optics-group columns (RELION 3.1+) broadcast per particle."""
    cols: dict[str, pd.Series] = {c: parts[c] for c in parts.columns}
    if optics is None or F.RLN_OPTICS_GROUP not in parts:
        return cols
    if F.RLN_OPTICS_GROUP not in optics.columns:
        raise InputError(f"{path}: data_optics has no _rlnOpticsGroup column")
    keys = pd.Index(optics[F.RLN_OPTICS_GROUP].to_numpy())
    if not keys.is_unique:
        raise InputError(f"{path}: data_optics defines an optics group twice")
    pos = keys.get_indexer(parts[F.RLN_OPTICS_GROUP].to_numpy())
    if (pos < 0).any():
        row = int(np.argmax(pos < 0))
        raise InputError(
            f"{path}: particle row {row0 + row + 1} has _rlnOpticsGroup "
            f"{parts[F.RLN_OPTICS_GROUP].iloc[row]}, which data_optics does not define"
        )
    for c in optics.columns:
        if c not in cols:
            cols[c] = pd.Series(optics[c].to_numpy()[pos])
    return cols


def _split_image_names(names: pd.Series, path: str,
                       row0: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``idx@stack`` -> (0-based index, codes into unique stack names, unique stack names)."""
    names = names.astype(str)
    split = names.str.partition("@")
    has_at = (split[1] == "@").to_numpy()
    idx_text = split[0].where(has_at, "1")
    stack = split[2].where(has_at, split[0])
    idx = pd.to_numeric(idx_text.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(idx) | (idx < 1) | (idx != np.round(idx))
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{path}: particle row {row0 + row + 1}: _rlnImageName "
                         f"{names.iloc[row]!r} is not index@stack with a 1-based index")
    codes, uniques = pd.factorize(stack.to_numpy(dtype=object))
    cleaned = []
    for u in uniques:
        u = str(u).strip()
        for suffix in (":mrcs", ":mrc"):  # RELION's optional file-type suffix
            if u.endswith(suffix):
                u = u[: -len(suffix)]
        cleaned.append(u)
    return idx.astype(np.int64) - 1, codes, cleaned


def _star_meta(cols: dict[str, pd.Series], n: int, path: str, ctf: bool, base: str,
               row0: int) -> tuple[dict[str, np.ndarray], bool, int]:
    """Canonical columns of some STAR rows; returns (columns, has_locations, box or 0)."""
    def num(values, label, finite=True):
        return _numeric(values, label, path, finite=finite, row0=row0)

    index0, codes, stacks = _split_image_names(cols[F.RLN_IMAGE_NAME], path, row0)
    out: dict[str, np.ndarray] = {
        F.IMAGE_PATH: np.asarray(_resolve(stacks, base), dtype=object)[codes],
        F.IMAGE_INDEX: index0,
    }

    # pixel size: per-particle / optics rlnImagePixelSize, rlnPixelSize, or 3.0 mag + detector
    if F.RLN_IMAGE_PIXEL_SIZE in cols:
        psize = num(cols[F.RLN_IMAGE_PIXEL_SIZE], "_rlnImagePixelSize")
    elif F.RLN_PIXEL_SIZE in cols:
        psize = num(cols[F.RLN_PIXEL_SIZE], "_rlnPixelSize")
    elif F.RLN_MAGNIFICATION in cols and F.RLN_DETECTOR_PIXEL_SIZE in cols:
        mag = num(cols[F.RLN_MAGNIFICATION], "_rlnMagnification")
        det_um = num(cols[F.RLN_DETECTOR_PIXEL_SIZE], "_rlnDetectorPixelSize")
        with np.errstate(divide="ignore", invalid="ignore"):
            psize = det_um * 1e4 / mag
    else:
        raise InputError(
            f"{path}: no pixel size; add _rlnImagePixelSize (to data_optics in RELION 3.1+, "
            "or per particle), _rlnPixelSize, or _rlnDetectorPixelSize and _rlnMagnification"
        )
    if not (psize > 0).all():
        row = int(np.argmax(~(psize > 0)))
        raise InputError(f"{path}: particle row {row0 + row + 1}: pixel size {psize[row]} "
                         "is not positive")
    out[F.PIXEL_SIZE_A] = psize

    voltage = (num(cols[F.RLN_VOLTAGE], "_rlnVoltage", finite=False)
               if F.RLN_VOLTAGE in cols else None)
    if ctf:
        missing = ["_" + lab for lab in F.STAR_CTF_REQUIRED if lab not in cols]
        if missing:
            raise _ctf_error(path, missing)
        for canon, (label, factor) in F.STAR_TO_CANONICAL.items():
            if canon in (F.LOCATION_X_PX, F.LOCATION_Y_PX):
                continue
            if label in cols:
                out[canon] = num(cols[label], "_" + label) * factor
            else:  # optional: phase shift, B-factor
                out[canon] = np.zeros(n)
    else:
        out.update(_ctf_off_columns(n, voltage))

    has_mic = F.RLN_MICROGRAPH_NAME in cols
    has_xy = F.RLN_COORDINATE_X in cols and F.RLN_COORDINATE_Y in cols
    out[F.MICROGRAPH] = (cols[F.RLN_MICROGRAPH_NAME].astype(str).to_numpy(dtype=object)
                         if has_mic else np.full(n, "", dtype=object))
    for canon, label in ((F.LOCATION_X_PX, F.RLN_COORDINATE_X),
                         (F.LOCATION_Y_PX, F.RLN_COORDINATE_Y)):
        out[canon] = (num(cols[label], "_" + label, finite=False) if has_xy
                      else np.full(n, np.nan))

    for canon, angst, pixels in ((F.INPUT_ORIGIN_X_A, F.RLN_ORIGIN_X_ANGST, F.RLN_ORIGIN_X),
                                 (F.INPUT_ORIGIN_Y_A, F.RLN_ORIGIN_Y_ANGST, F.RLN_ORIGIN_Y)):
        if angst in cols:
            out[canon] = num(cols[angst], "_" + angst)
        elif pixels in cols:
            out[canon] = num(cols[pixels], "_" + pixels) * psize
        else:
            out[canon] = np.zeros(n)

    out[F.IMAGE_CONTRAST] = np.ones(n)  # RELION particles: light protein on dark
    out[F.MICROGRAPH_NY_PX] = np.zeros(n)  # not in a STAR file (micrograph headers)
    out[F.MICROGRAPH_NX_PX] = np.zeros(n)

    box = 0
    if F.RLN_IMAGE_SIZE in cols:
        sizes = pd.to_numeric(cols[F.RLN_IMAGE_SIZE], errors="coerce")
        if sizes.notna().all() and sizes.nunique() == 1:
            box = int(sizes.iloc[0])
    return out, has_mic and has_xy, box


# --- CryoSPARC .cs ------------------------------------------------------------------------


def _cs_stacks(arr: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes and unique stack paths of ``blob/path`` (CryoSPARC's '>' import mark removed)."""
    codes, stacks = _decode(arr[F.CS_BLOB_PATH])
    return codes, [s.lstrip(">") for s in stacks]


def _check_cs_fields(names: set, path: str) -> None:
    for field in (F.CS_BLOB_PATH, F.CS_BLOB_IDX):
        if field not in names:
            raise InputError(
                f"{path}: no {field} field, so the particle images cannot be found; use "
                "a .cs with the particle blobs (e.g. the extraction job's particles, or "
                "an exported particle set that merges the passthrough fields)"
            )
    if F.CS_BLOB_PSIZE_A not in names:
        raise InputError(f"{path}: no blob/psize_A field (pixel size); add it or use the "
                         "particles output of the extraction job")


def _cs_meta(arr: np.ndarray, path: str, ctf: bool, base: str,
             row0: int) -> tuple[dict[str, np.ndarray], bool, int]:
    """Canonical columns of some .cs rows; returns (columns, has_locations, box or 0)."""
    def num(values, label):
        return _numeric(values, label, path, row0=row0)

    names = set(arr.dtype.names)
    n = len(arr)
    codes, stacks = _cs_stacks(arr)
    out: dict[str, np.ndarray] = {
        F.IMAGE_PATH: np.asarray(_resolve(stacks, base), dtype=object)[codes],
        F.IMAGE_INDEX: arr[F.CS_BLOB_IDX].astype(np.int64),
    }
    psize = num(arr[F.CS_BLOB_PSIZE_A].astype(np.float64), F.CS_BLOB_PSIZE_A)
    if not (psize > 0).all():
        row = int(np.argmax(~(psize > 0)))
        raise InputError(f"{path}: particle row {row0 + row + 1}: blob/psize_A {psize[row]} "
                         "is not positive")
    out[F.PIXEL_SIZE_A] = psize

    voltage = (arr[F.CS_CTF_ACCEL_KV].astype(np.float64) if F.CS_CTF_ACCEL_KV in names
               else None)
    if ctf:
        missing = [f for f in F.CS_CTF_REQUIRED if f not in names]
        if missing:
            raise _ctf_error(path, missing)
        for canon, field in F.CS_TO_CANONICAL.items():
            if canon == F.PIXEL_SIZE_A:
                continue
            out[canon] = (num(arr[field].astype(np.float64), field) if field in names
                          else np.zeros(n))
    else:
        out.update(_ctf_off_columns(n, voltage))

    has_mic = (F.CS_LOCATION_MICROGRAPH_PATH in names
               or F.CS_LOCATION_MICROGRAPH_UID in names)
    has_xy = {F.CS_LOCATION_CENTER_X_FRAC, F.CS_LOCATION_CENTER_Y_FRAC,
              F.CS_LOCATION_MICROGRAPH_SHAPE} <= names
    if F.CS_LOCATION_MICROGRAPH_PATH in names:
        mcodes, mics = _decode(arr[F.CS_LOCATION_MICROGRAPH_PATH])
        out[F.MICROGRAPH] = np.asarray(mics, dtype=object)[mcodes]
    elif has_mic:
        out[F.MICROGRAPH] = arr[F.CS_LOCATION_MICROGRAPH_UID].astype(str).astype(object)
    else:
        out[F.MICROGRAPH] = np.full(n, "", dtype=object)
    if has_xy:
        shape = arr[F.CS_LOCATION_MICROGRAPH_SHAPE].astype(np.float64)  # (n, 2) [ny, nx]
        out[F.LOCATION_X_PX] = arr[F.CS_LOCATION_CENTER_X_FRAC] * shape[:, 1]
        out[F.LOCATION_Y_PX] = arr[F.CS_LOCATION_CENTER_Y_FRAC] * shape[:, 0]
        out[F.MICROGRAPH_NY_PX], out[F.MICROGRAPH_NX_PX] = shape[:, 0], shape[:, 1]
    else:
        out[F.LOCATION_X_PX] = np.full(n, np.nan)
        out[F.LOCATION_Y_PX] = np.full(n, np.nan)
        out[F.MICROGRAPH_NY_PX] = np.zeros(n)
        out[F.MICROGRAPH_NX_PX] = np.zeros(n)

    # CryoSPARC's blob/sign: -1 for light protein on dark (its own extraction, RELION's
    # particles imported), +1 for dark protein; cryoclass works light on dark
    out[F.IMAGE_CONTRAST] = np.ones(n)
    if F.CS_BLOB_SIGN in names:
        sign = np.asarray(arr[F.CS_BLOB_SIGN], dtype=np.float64)
        bad = ~np.isin(sign, (-1.0, 1.0))
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{path}: particle row {row0 + row + 1}: blob/sign is "
                             f"{sign[row]}, not -1 or +1")
        out[F.IMAGE_CONTRAST] = -sign

    if F.CS_A2D_SHIFT in names:
        # assumed: alignments2D/shift (px) has the sign of RELION's origin (docs/formats.md)
        a2d_psize = (arr[F.CS_A2D_PSIZE_A].astype(np.float64) if F.CS_A2D_PSIZE_A in names
                     else psize)
        shift = arr[F.CS_A2D_SHIFT].astype(np.float64)
        out[F.INPUT_ORIGIN_X_A] = shift[:, 0] * a2d_psize
        out[F.INPUT_ORIGIN_Y_A] = shift[:, 1] * a2d_psize
    else:
        out[F.INPUT_ORIGIN_X_A] = np.zeros(n)
        out[F.INPUT_ORIGIN_Y_A] = np.zeros(n)

    box = 0
    if F.CS_BLOB_SHAPE in names and n:
        shapes = np.asarray(arr[F.CS_BLOB_SHAPE]).reshape(n, -1)
        if (shapes == shapes[0]).all() and shapes.shape[1] == 2 and shapes[0, 0] == shapes[0, 1]:
            box = int(shapes[0, 0])
    return out, has_mic and has_xy, box


# --- public loader ------------------------------------------------------------------------


@dataclass
class _Plan:
    """What rank 0 learns about a particle file before any rank reads its rows."""

    fmt: str  # "star" or "cs"
    n: int
    base: str  # folder that relative stack paths are resolved against
    star: StarIndex | None = None


#: Rows converted at a time (.cs input; STAR input goes by the pieces of its index).
CHUNK_ROWS = 65536
#: Rows of an output STAR/.cs built and formatted at a time.
WRITE_CHUNK_ROWS = 50_000


def _plan(path: str, project_dir: str | None) -> _Plan:
    """Inspect a particle file (rank 0): format, particle count, STAR layout, stack folder."""
    if not os.path.exists(path):
        raise InputError(f"{path}: particle file not found; check the path")
    suffix = Path(path).suffix.lower()
    recorded = _recorded_base(path) if suffix == ".star" else None
    candidates = _base_candidates(os.path.dirname(path), project_dir, recorded)
    if suffix == ".star":
        index = index_star(path, lambda labels: _find_particle_block(labels, path))
        if index.n_rows == 0:
            raise InputError(f"{path}: data_{index.particles_block} holds no particles")
        first = read_star_rows(index, 0, min(index.n_rows, 5000))[F.RLN_IMAGE_NAME]
        stacks = _split_image_names(first, path)[2]
        return _Plan("star", index.n_rows, _choose_base(stacks, candidates, "image stack"),
                     index)
    if suffix == ".cs":
        arr = read_cs(path, mmap=True)
        if len(arr) == 0:
            raise InputError(f"{path}: the .cs file holds no particles")
        _check_cs_fields(set(arr.dtype.names), path)
        stacks = _cs_stacks(arr[:5000])[1]
        return _Plan("cs", len(arr), _choose_base(stacks, candidates, "image stack"))
    raise InputError(f"{path}: unknown particle file type {suffix or '(no suffix)'!r}; "
                     "give a RELION .star or a CryoSPARC .cs file")


def _row_chunks(plan: _Plan, start: int, stop: int) -> list[tuple[int, int]]:
    """Row ranges covering ``[start, stop)``: the STAR index's pieces, or blocks of rows."""
    if plan.fmt == "star":
        inner = {p[2] for p in plan.star.pieces if start < p[2] < stop}
    else:
        inner = set(range(start + CHUNK_ROWS, stop, CHUNK_ROWS))
    cuts = [start, *sorted(inner), stop]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _read_slice(plan: _Plan, path: str, start: int, stop: int, ctf: bool):
    """Read and convert rows ``[start, stop)`` one chunk at a time.

    Returns (canonical meta, raw rows (STAR frame or .cs memory map), has_locations, box).
    Converting per chunk keeps the temporary memory of parsing bounded by the chunk.
    """
    metas, raws, flags, boxes = [], [], set(), set()
    cs = read_cs(path, mmap=True) if plan.fmt == "cs" else None
    optics = None
    if plan.fmt == "star" and plan.star.particles_block != F.STAR_BLOCK_OPTICS:
        optics = plan.star.blocks.get(F.STAR_BLOCK_OPTICS)
    for a, b in _row_chunks(plan, start, stop):
        if cs is not None:
            out, has_loc, box = _cs_meta(cs[a:b], path, ctf, plan.base, a)
        else:
            raw = read_star_rows(plan.star, a, b)
            out, has_loc, box = _star_meta(_join_optics(raw, optics, path, a), b - a, path,
                                           ctf, plan.base, a)
            raws.append(raw)
        metas.append(_make_meta(out))
        flags.add(has_loc)
        boxes.add(box)
    meta = pd.concat(metas, ignore_index=True) if len(metas) > 1 else metas[0]
    raw = cs[start:stop] if cs is not None else concat_rows(raws)
    return meta, raw, flags == {True}, boxes.pop() if len(boxes) == 1 else 0


def _agree_dtypes(frame: pd.DataFrame, comm: Comm) -> pd.DataFrame:
    """Give every rank's slice of the particle rows the same column types.

    A column that is integer on one rank and float on another becomes float, and text
    on any rank makes it text everywhere: the slices together are typed as the whole
    table would be.
    """
    if comm.size == 1:
        return frame
    mine = {c: frame[c].dtype.kind if len(frame) else None for c in frame.columns}
    kinds = comm.allgather(mine)
    for c in frame.columns:
        ks = {k[c] for k in kinds} - {None}
        if "O" in ks:  # object or str columns
            if frame[c].dtype != object:
                frame[c] = frame[c].astype(str).astype(object)
        elif "f" in ks and frame[c].dtype.kind in "iub":
            frame[c] = frame[c].astype(np.float64)
    return frame


def load_particles(path: str | os.PathLike, *, ctf: bool = True, project_dir: str | None = None,
                   check_images: bool = True, comm: Comm | None = None) -> ParticleTable:
    """Load a RELION STAR or CryoSPARC .cs particle set (every rank: its own rows).

    Parameters
    ----------
    path
        ``.star`` (RELION 3.0 or 3.1+) or ``.cs`` file.
    ctf
        CTF correction on: the CTF fields must be present. Off: ``meta`` gets the
        CTF-off convention (amplitude contrast 1, defocus 0, Cs 0, phase shift 0).
    project_dir
        Folder that relative stack paths are relative to. Default: the particle file's
        folder, or the first of its three parent folders (then the working directory)
        where the first stacks exist (RELION/CryoSPARC project layout).
    check_images
        Check every referenced stack from its header (exists, readable MRC, real mode,
        not truncated, index in range, one square box size) and set ``box_px``.
    comm : Comm, optional
        Collective load over MPI ranks: rank 0 indexes the file (the STAR particle loop
        is cut into byte ranges, a .cs is memory-mapped), and every rank then reads,
        converts and checks only its own contiguous block of rows
        (:func:`~cryoclass.parallel.partition.block_range`), so no rank holds the whole
        set. An error found by any rank is raised on every rank. Without ``comm``, the
        whole set.

    Returns
    -------
    ParticleTable
        This rank's rows (``row_offset``, ``n_total`` say where they sit in the set).

    Raises
    ------
    InputError
        Any problem with the file, its columns or its stacks, naming what to fix.
    """
    path = os.fspath(path)
    comm = comm if comm is not None else Comm(None)
    plan = collectively(comm, lambda: _plan(path, project_dir) if comm.rank == 0 else None)
    plan = comm.bcast(plan)
    start, stop = block_range(plan.n, comm.size, comm.rank)
    n = stop - start
    meta, raw, has_locations, box = collectively(
        comm, lambda: _read_slice(plan, path, start, stop, ctf))
    base = plan.base
    if plan.fmt == "star":
        raw = _agree_dtypes(raw, comm)
        blocks = {name: (raw if name == plan.star.particles_block else plan.star.blocks[name])
                  for name in plan.star.block_order}
        table = ParticleTable(meta=meta, source_format="star", source_path=path,
                              star_blocks=blocks, particles_block=plan.star.particles_block,
                              has_ctf=ctf, has_locations=has_locations, base_dir=base)
    else:  # the .cs rows stay in the memory-mapped file until they are written
        table = ParticleTable(meta=meta, source_format="cs", source_path=path,
                              cs_array=raw, has_ctf=ctf, has_locations=has_locations,
                              base_dir=base)
    table.row_offset, table.n_total = start, plan.n
    boxes = [b for b in comm.allgather(box) if b]
    table.box_px = boxes[0] if boxes and len(set(boxes)) == 1 else 0
    if check_images:
        def check():
            with table.image_source() as source:
                try:
                    source.validate()
                except InputError as exc:
                    if "not found" in str(exc):
                        raise InputError(f"{exc}; relative paths were resolved against "
                                         f"{base} (set the project directory to change "
                                         "that)") from None
                    raise
                return source.box_px if n else 0
        boxes = [b for b in comm.allgather(collectively(comm, check)) if b]
        if len(set(boxes)) > 1:
            sizes = ", ".join(map(str, sorted(set(boxes))))
            raise InputError(f"{path}: mixed box sizes ({sizes} px) in the image stacks; "
                             "re-extract all particles with one box size")
        table.box_px = boxes[0]
    elif table.box_px == 0 and comm.rank == 0:
        first = str(table.meta[F.IMAGE_PATH].iloc[0])
        if os.path.isfile(first):
            try:
                table.box_px = read_header(first).nx
            except InputError:
                logger.debug("%s: box size unknown (header of %s unreadable)", path, first)
    table.box_px = comm.bcast(table.box_px)
    ps = table.meta[F.PIXEL_SIZE_A].to_numpy()
    ps_range = comm.allgather((float(ps.min()), float(ps.max())) if n else None)
    ps_range = [r for r in ps_range if r is not None]
    table.pixel_size_A = ps_range[0][0]
    table.pixel_size_range_A = (min(r[0] for r in ps_range), max(r[1] for r in ps_range))
    if comm.rank == 0:
        logger.info("%s: %d particles, box %d px, pixel size %.4g A, CTF %s, locations %s%s",
                    path, plan.n, table.box_px, table.pixel_size_A,
                    "on" if table.has_ctf else "off", "yes" if table.has_locations else "no",
                    f", read as {comm.size} slices" if comm.size > 1 else "")
    return table


def subset_table(table: ParticleTable, keep: np.ndarray, comm: Comm | None = None
                 ) -> ParticleTable:
    """Return the particle set without some rows, re-sliced over the ranks; collective.

    Parameters
    ----------
    table
        This rank's slice of the set (as :func:`load_particles` returns it).
    keep : int array
        This rank's rows (local, ascending) that stay in the set.
    comm : Comm, optional

    Returns
    -------
    ParticleTable
        The kept rows of every rank, in input order, sliced by
        :func:`~cryoclass.parallel.partition.block_range` over the new count, as if the
        input had held only them (``input_rows`` gives each row's row in the input).
        Each rank's new slice comes from its own rows and its neighbours' (moved with one
        ``alltoall``); the result is the same for every rank count.
    """
    comm = comm if comm is not None else Comm(None)
    keep = np.asarray(keep, dtype=np.int64)
    counts = np.asarray(comm.allgather(int(keep.size)), dtype=np.int64)
    n_new = int(counts.sum())
    first_new = int(counts[: comm.rank].sum())
    starts = np.array([block_range(n_new, comm.size, r)[0] for r in range(comm.size)])
    dest = np.searchsorted(starts, first_new + np.arange(keep.size), side="right") - 1
    raw = table.cs_array if table.cs_array is not None else (
        table.star_blocks[table.particles_block] if table.star_blocks is not None else None)

    def piece(sel: np.ndarray):
        rows = keep[sel]
        part = None
        if raw is not None:
            part = (np.asarray(raw[rows]) if isinstance(raw, np.ndarray)
                    else raw.iloc[rows].reset_index(drop=True))
        return table.meta.iloc[rows].reset_index(drop=True), part, \
            table.global_input_rows(rows)

    outgoing = [None if r == comm.rank else piece(np.flatnonzero(dest == r))
                for r in range(comm.size)]
    incoming = comm.alltoall(outgoing)
    incoming[comm.rank] = piece(np.flatnonzero(dest == comm.rank))
    metas, raws, inputs = zip(*incoming, strict=True)
    meta = pd.concat(metas, ignore_index=True)
    new_raw = None
    if isinstance(raw, np.ndarray):
        new_raw = np.concatenate(raws)
    elif raw is not None:  # the slices' column types already agree (load_particles)
        new_raw = pd.concat(list(raws), ignore_index=True)
    blocks = None
    if table.star_blocks is not None:
        blocks = {name: (new_raw if name == table.particles_block else block)
                  for name, block in table.star_blocks.items()}
    start, _ = block_range(n_new, comm.size, comm.rank)
    return ParticleTable(
        meta=meta, source_format=table.source_format, source_path=table.source_path,
        star_blocks=blocks, particles_block=table.particles_block,
        cs_array=new_raw if isinstance(raw, np.ndarray) else None, box_px=table.box_px,
        has_ctf=table.has_ctf, has_locations=table.has_locations, base_dir=table.base_dir,
        row_offset=start, n_total=n_new, pixel_size_A=table.pixel_size_A,
        pixel_size_range_A=table.pixel_size_range_A,
        input_rows=np.concatenate(inputs).astype(np.int64),
        micrograph_shape_px=table.micrograph_shape_px)


# --- writers ------------------------------------------------------------------------------


def _rows(table: ParticleTable, rows: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if rows is None:
        return np.arange(len(table))
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (len(table),):
            raise ValueError(f"boolean rows must have shape ({len(table)},)")
        return np.flatnonzero(rows)
    rows = rows.astype(np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
        raise ValueError(f"rows out of range for a table of {len(table)} particles")
    return rows


def _align(table: ParticleTable, align: Mapping[str, object] | None,
           rows: np.ndarray) -> tuple[dict[str, np.ndarray] | None, bool]:
    """Check ``align`` (arrays over all particles), take ``rows``; return (arrays, ctf_off)."""
    if align is None:
        return None, not table.has_ctf
    missing = [k for k in F.ALIGN_KEYS if k not in align]
    if missing:
        raise ValueError(f"align is missing {missing}")
    out = {}
    for key in F.ALIGN_KEYS:
        values = np.asarray(align[key])
        if values.shape != (len(table),):
            raise ValueError(f"align[{key!r}] has shape {values.shape}; expected "
                             f"({len(table)},), one value per particle")
        out[key] = values[rows]
    for key in F.CS_OPTIONAL_ALIGN:  # per-particle E-step quantities, when given
        if align.get(key) is not None:
            values = np.asarray(align[key])
            if values.shape != (len(table),):
                raise ValueError(f"align[{key!r}] has shape {values.shape}; expected "
                                 f"({len(table)},)")
            out[key] = values[rows]
    ctf_off = bool(align.get("ctf_off", not table.has_ctf))
    return out, ctf_off


def _optics_from_meta(table: ParticleTable,
                      comm: Comm) -> tuple[pd.DataFrame, np.ndarray]:
    """One optics group per distinct (pixel size, voltage, Cs, Q0); 1-based ids per particle.

    Groups are numbered in order of first appearance in the whole set (collective).
    """
    meta = table.meta
    keys = [F.PIXEL_SIZE_A, F.VOLTAGE_KV, F.CS_MM, F.AMPLITUDE_CONTRAST]
    local = meta[keys].drop_duplicates()
    groups: list[tuple] = []
    for part in comm.allgather([tuple(r) for r in local.itertuples(index=False)]):
        groups.extend(g for g in part if g not in groups)
    lookup = pd.MultiIndex.from_tuples(groups, names=keys)
    gid = lookup.get_indexer(pd.MultiIndex.from_frame(meta[keys])) + 1
    arr = np.asarray(groups, dtype=np.float64).reshape(-1, len(keys))
    ids = np.arange(1, len(groups) + 1, dtype=np.int64)
    optics = pd.DataFrame({
        F.RLN_OPTICS_GROUP_NAME: [f"opticsGroup{g}" for g in ids],
        F.RLN_OPTICS_GROUP: ids,
        F.RLN_IMAGE_PIXEL_SIZE: arr[:, 0],
        F.RLN_IMAGE_SIZE: np.full(len(groups), table.box_px, dtype=np.int64),
        F.RLN_IMAGE_DIMENSIONALITY: np.full(len(groups), 2, dtype=np.int64),
        F.RLN_VOLTAGE: arr[:, 1],
        F.RLN_SPHERICAL_ABERRATION: arr[:, 2],
        F.RLN_AMPLITUDE_CONTRAST: arr[:, 3],
    })
    return optics, gid.astype(np.int64)


def _image_names(index0: np.ndarray, paths: np.ndarray) -> np.ndarray:
    numbers = pd.Series(index0 + 1).astype(str).str.zfill(6)
    return (numbers + "@" + pd.Series(paths).astype(str)).to_numpy(dtype=object)


def _star_particles_from_meta(table: ParticleTable, rows: np.ndarray) -> pd.DataFrame:
    """RELION particle columns for a table that did not come from STAR."""
    m = table.meta.iloc[rows]
    parts = pd.DataFrame({
        F.RLN_IMAGE_NAME: _image_names(m[F.IMAGE_INDEX].to_numpy(),
                                       m[F.IMAGE_PATH].to_numpy(dtype=object)),
    })
    if table.has_locations:
        parts[F.RLN_MICROGRAPH_NAME] = m[F.MICROGRAPH].to_numpy(dtype=object)
        parts[F.RLN_COORDINATE_X] = m[F.LOCATION_X_PX].to_numpy()
        parts[F.RLN_COORDINATE_Y] = m[F.LOCATION_Y_PX].to_numpy()
    parts[F.RLN_DEFOCUS_U] = m[F.DEFOCUS_U_A].to_numpy()
    parts[F.RLN_DEFOCUS_V] = m[F.DEFOCUS_V_A].to_numpy()
    parts[F.RLN_DEFOCUS_ANGLE] = np.rad2deg(m[F.DEFOCUS_ANGLE_RAD].to_numpy())
    parts[F.RLN_PHASE_SHIFT] = np.rad2deg(m[F.PHASE_SHIFT_RAD].to_numpy())
    parts[F.RLN_CTF_BFACTOR] = m[F.BFACTOR_A2].to_numpy()
    parts[F.RLN_ORIGIN_X_ANGST] = m[F.INPUT_ORIGIN_X_A].to_numpy()
    parts[F.RLN_ORIGIN_Y_ANGST] = m[F.INPUT_ORIGIN_Y_A].to_numpy()
    return parts


def _output_optics(table: ParticleTable, ctf_off: bool,
                   comm: Comm) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Return the optics block of an output STAR and, when built here, each group.

    RELION 3.1 input keeps its optics block; RELION 3.0 and .cs input get one group per
    distinct pixel size / voltage / Cs / amplitude contrast (collective).
    """
    raw = None if table.star_blocks is None else table.star_blocks[table.particles_block]
    if (raw is not None and table.particles_block != F.STAR_BLOCK_OPTICS
            and F.RLN_OPTICS_GROUP in raw and F.STAR_BLOCK_OPTICS in table.star_blocks):
        optics, gid = table.star_blocks[F.STAR_BLOCK_OPTICS].copy(), None
    else:
        optics, gid = _optics_from_meta(table, comm)
    if ctf_off:
        for label, value in ((F.RLN_SPHERICAL_ABERRATION, 0.0), (F.RLN_AMPLITUDE_CONTRAST, 1.0)):
            optics[label] = value
        if F.RLN_VOLTAGE not in optics and (raw is None or F.RLN_VOLTAGE not in raw):
            optics[F.RLN_VOLTAGE] = F.DEFAULT_VOLTAGE_KV
    return optics, gid


def _star_particles(table: ParticleTable, rows: np.ndarray, al: dict[str, np.ndarray] | None,
                    ctf_off: bool, gid: np.ndarray | None) -> pd.DataFrame:
    """Return the particle block of an output STAR for ``rows`` (``al``: alignments)."""
    if table.star_blocks is not None:
        parts = table.star_blocks[table.particles_block].iloc[rows].reset_index(drop=True)
    else:
        parts = _star_particles_from_meta(table, rows)
    if gid is not None:
        parts[F.RLN_OPTICS_GROUP] = gid[rows]
    psize = table.meta[F.PIXEL_SIZE_A].to_numpy()[rows]
    if al is not None:
        origin_x_A = -al["shift_x_A"].astype(np.float64) + 0.0  # + 0.0: no "-0.000000"
        origin_y_A = -al["shift_y_A"].astype(np.float64) + 0.0
        parts[F.RLN_CLASS_NUMBER] = al["class_index"].astype(np.int64) + 1
        parts[F.RLN_ANGLE_PSI] = al["psi_deg"].astype(np.float64)
        parts[F.RLN_ORIGIN_X_ANGST] = origin_x_A
        parts[F.RLN_ORIGIN_Y_ANGST] = origin_y_A
        if F.RLN_ORIGIN_X in parts:  # keep a 3.0 pixel origin consistent
            parts[F.RLN_ORIGIN_X] = origin_x_A / psize
        if F.RLN_ORIGIN_Y in parts:
            parts[F.RLN_ORIGIN_Y] = origin_y_A / psize
        parts[F.RLN_MAX_VALUE_PROB_DISTRIBUTION] = al["best_class_prob"].astype(np.float64)
        ess = np.nan_to_num(al["ess"].astype(np.float64), nan=1.0, posinf=1.0)
        parts[F.RLN_NR_OF_SIGNIFICANT_SAMPLES] = np.maximum(1, np.rint(ess)).astype(np.int64)
        parts[F.RLN_LOG_LIKELI_CONTRIBUTION] = al["score"].astype(np.float64)
    if ctf_off:
        for label in (F.RLN_DEFOCUS_U, F.RLN_DEFOCUS_V, F.RLN_DEFOCUS_ANGLE):
            parts[label] = 0.0
        for label in (F.RLN_PHASE_SHIFT, F.RLN_CTF_BFACTOR):
            if label in parts:
                parts[label] = 0.0
        for label, value in ((F.RLN_SPHERICAL_ABERRATION, 0.0), (F.RLN_AMPLITUDE_CONTRAST, 1.0)):
            if label in parts:
                parts[label] = value
    return parts


def _in_chunks(rows: np.ndarray, al: dict[str, np.ndarray] | None, make):
    """Return a callable yielding ``make(rows_chunk, al_chunk)`` chunk by chunk.

    Chunks hold ``WRITE_CHUNK_ROWS`` rows (at least one chunk, maybe empty), for the
    chunked collective writers.
    """
    def produce():
        for s in range(0, max(len(rows), 1), WRITE_CHUNK_ROWS):
            sub = {k: v[s:s + WRITE_CHUNK_ROWS] for k, v in al.items()} if al else al
            yield make(rows[s:s + WRITE_CHUNK_ROWS], sub)
    return produce


def _uids(table: ParticleTable, rows: np.ndarray) -> np.ndarray:
    """Deterministic 64-bit uids of some rows, for a table without them.

    A hash (splitmix64) of the input file's path and the particle's row in the whole
    set: the same for every writer call and every rank count.
    """
    seed = zlib.crc32(os.path.abspath(table.source_path).encode())
    return splitmix64(np.uint64(seed) * np.uint64(0x100000000)
                      + table.global_input_rows(rows).astype(np.uint64))


#: Particle files whose missing micrographs were reported (once per run, not per file).
_REPORTED_MISSING: set[str] = set()


def _micrograph_shapes(table: ParticleTable, comm: Comm) -> dict[str, tuple] | None:
    """[ny, nx] of every micrograph of this rank's particles; collective, cached per table.

    From the input where it carries the shape (a .cs's ``location/micrograph_shape``),
    else the micrograph's MRC header, else the shape the user gave
    (``table.micrograph_shape_px``). None on every rank when any rank still misses one:
    the .cs outputs then have no location/* fields, which is logged once per run.
    """
    if "_mic_shapes" in table.__dict__:
        return table.__dict__["_mic_shapes"]
    meta = table.meta
    shapes: dict[str, tuple] = {}
    known = meta[meta[F.MICROGRAPH_NY_PX] > 0].drop_duplicates(F.MICROGRAPH)
    for name, ny, nx in zip(known[F.MICROGRAPH], known[F.MICROGRAPH_NY_PX],
                            known[F.MICROGRAPH_NX_PX], strict=True):
        shapes[name] = (int(ny), int(nx))
    problem = None
    for name in pd.unique(meta[F.MICROGRAPH].to_numpy(dtype=object)):
        if name in shapes:
            continue
        mic = name if os.path.isabs(name) else os.path.join(table.base_dir, name)
        if os.path.isfile(mic):
            try:
                info = read_header(mic)
                shapes[name] = (info.ny, info.nx)
                continue
            except InputError as exc:
                problem = str(exc)
        else:
            problem = f"micrograph {mic} not found"
        if table.micrograph_shape_px is not None:
            shapes[name], problem = tuple(table.micrograph_shape_px), None
            continue
        break
    problems = [p for p in comm.allgather(problem) if p is not None]
    result = None if problems else shapes
    key = os.path.abspath(table.source_path)
    if problems and comm.rank == 0 and key not in _REPORTED_MISSING:
        _REPORTED_MISSING.add(key)
        logger.warning("%s: the .cs outputs have no location/* fields (to write them, "
                       "give the micrograph shape: --set output.micrograph_nx_px=NX --set "
                       "output.micrograph_ny_px=NY)", problems[0])
    table.__dict__["_mic_shapes"] = result
    return result


def _slot(name: str, n: int, value) -> np.ndarray:
    """``n`` copies of ``value`` in CryoSPARC's dtype and shape for slot ``name``."""
    dt, shape = F.CS_PARTICLE_SLOTS[name]
    if dt == "S":
        value = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return np.full(n, value, dtype=f"S{max(len(value), 1)}")
    values = np.asarray(value, dtype=dt)
    if values.ndim == 0 or values.shape == shape:
        return np.broadcast_to(values, (n, *shape)).copy()
    return values.reshape(n, *shape)


def _exp_group_ids(table: ParticleTable, rows: np.ndarray) -> np.ndarray:
    """CryoSPARC exposure group of some rows: the RELION optics group, 0-based (else 0)."""
    raw = None if table.star_blocks is None else table.star_blocks[table.particles_block]
    if raw is not None and F.RLN_OPTICS_GROUP in raw:
        gid = pd.to_numeric(raw[F.RLN_OPTICS_GROUP].iloc[rows], errors="coerce")
        return np.clip(gid.fillna(1).to_numpy(dtype=np.int64) - 1, 0, None).astype(np.uint32)
    return np.zeros(len(rows), dtype=np.uint32)


def _cs_from_meta(table: ParticleTable, rows: np.ndarray,
                  mic_shapes: dict[str, tuple] | None) -> np.ndarray:
    """CryoSPARC's blob and ctf slots (and location/*) for a table that did not come from .cs.

    Values cryoclass has no source for take CryoSPARC's neutral values
    (:data:`cryoclass.io.fields.CS_NEUTRAL`).
    """
    m = table.meta.iloc[rows]
    n = len(rows)
    paths = m[F.IMAGE_PATH].to_numpy(dtype=object)
    f32 = np.float32
    fields: dict[str, np.ndarray] = {
        F.CS_UID: _uids(table, rows),
        F.CS_BLOB_PATH: np.array([p.encode("utf-8") for p in paths], dtype=bytes),
        F.CS_BLOB_IDX: m[F.IMAGE_INDEX].to_numpy().astype(np.uint32),
        F.CS_BLOB_SHAPE: _slot(F.CS_BLOB_SHAPE, n, (table.box_px, table.box_px)),
        F.CS_BLOB_PSIZE_A: m[F.PIXEL_SIZE_A].to_numpy().astype(f32),
        F.CS_BLOB_SIGN: (-m[F.IMAGE_CONTRAST].to_numpy()).astype(f32),
        F.CS_BLOB_IMPORT_SIG: _slot(F.CS_BLOB_IMPORT_SIG, n, 0),
        F.CS_CTF_TYPE: _slot(F.CS_CTF_TYPE, n, F.CS_NEUTRAL[F.CS_CTF_TYPE]),
        F.CS_CTF_EXP_GROUP_ID: _exp_group_ids(table, rows),
        F.CS_CTF_ACCEL_KV: m[F.VOLTAGE_KV].to_numpy().astype(f32),
        F.CS_CTF_CS_MM: m[F.CS_MM].to_numpy().astype(f32),
        F.CS_CTF_AMP_CONTRAST: m[F.AMPLITUDE_CONTRAST].to_numpy().astype(f32),
        F.CS_CTF_DF1_A: m[F.DEFOCUS_U_A].to_numpy().astype(f32),
        F.CS_CTF_DF2_A: m[F.DEFOCUS_V_A].to_numpy().astype(f32),
        F.CS_CTF_DF_ANGLE_RAD: m[F.DEFOCUS_ANGLE_RAD].to_numpy().astype(f32),
        F.CS_CTF_PHASE_SHIFT_RAD: m[F.PHASE_SHIFT_RAD].to_numpy().astype(f32),
    }
    for name in (F.CS_CTF_SCALE, F.CS_CTF_SCALE_CONST, F.CS_CTF_SHIFT_A, F.CS_CTF_TILT_A,
                 F.CS_CTF_TREFOIL_A, F.CS_CTF_TETRA_A, F.CS_CTF_ANISOMAG):
        fields[name] = _slot(name, n, F.CS_NEUTRAL[name])
    fields[F.CS_CTF_BFACTOR] = m[F.BFACTOR_A2].to_numpy().astype(f32)
    if table.has_locations and mic_shapes is not None:
        mics = m[F.MICROGRAPH].to_numpy(dtype=object)
        shapes = np.array([mic_shapes[x] for x in mics], dtype=np.uint32).reshape(-1, 2)
        fields[F.CS_LOCATION_MICROGRAPH_PATH] = np.array(
            [str(p).encode("utf-8") for p in mics], dtype=bytes)
        fields[F.CS_LOCATION_MICROGRAPH_SHAPE] = shapes
        fields[F.CS_LOCATION_CENTER_X_FRAC] = (
            m[F.LOCATION_X_PX].to_numpy() / shapes[:, 1]).astype(f32)
        fields[F.CS_LOCATION_CENTER_Y_FRAC] = (
            m[F.LOCATION_Y_PX].to_numpy() / shapes[:, 0]).astype(f32)
    base = np.empty(n, dtype=[(F.CS_UID, "<u8")])
    base[F.CS_UID] = fields.pop(F.CS_UID)
    return with_fields(base, fields)


def _missing_slots(base: np.ndarray, table: ParticleTable, rows: np.ndarray) -> dict:
    """CryoSPARC's blob and ctf slots a .cs input lacks, with neutral values (in order)."""
    have = set(base.dtype.names)
    n = len(rows)
    out: dict[str, np.ndarray] = {}
    for name in F.CS_PARTICLE_SLOTS:
        if name in have or name.startswith("alignments2D/"):
            continue
        if name == F.CS_BLOB_SIGN:  # as cryoclass read the images
            out[name] = (-table.meta[F.IMAGE_CONTRAST].to_numpy()[rows]).astype(np.float32)
        elif name == F.CS_UID:
            out[name] = _uids(table, rows)
        elif name in F.CS_NEUTRAL:
            out[name] = _slot(name, n, F.CS_NEUTRAL[name])
        elif name == F.CS_BLOB_SHAPE:
            out[name] = _slot(name, n, (table.box_px, table.box_px))
        else:  # ctf values cryoclass read or defaulted (canonical columns)
            canon = {v: k for k, v in F.CS_TO_CANONICAL.items()}.get(name)
            if canon is not None:
                out[name] = table.meta[canon].to_numpy()[rows].astype(np.float32)
    return out


def _alignment_slots(al: dict[str, np.ndarray], psize: np.ndarray) -> dict[str, np.ndarray]:
    """Return the 18 ``alignments2D/*`` slots of CryoSPARC, in its order.

    Real values: split, shift, pose, psize_A, error (= -score), class_posterior, class,
    class_ess, and every optional E-step quantity present in ``al``
    (:data:`cryoclass.io.fields.CS_OPTIONAL_ALIGN`); the others neutral, ``error_min`` =
    ``error`` when absent.
    """
    n = psize.size
    # assumed convention (docs/formats.md): shift (x, y) in px = RELION origin in px
    shift_px = np.stack([-al["shift_x_A"] / psize, -al["shift_y_A"] / psize], axis=1) + 0.0
    error = (-al["score"].astype(np.float64)).astype(np.float32)
    real = {
        F.CS_A2D_SPLIT: al["half_set"].astype(np.uint32),
        F.CS_A2D_SHIFT: shift_px.astype(np.float32),
        F.CS_A2D_POSE: np.deg2rad(al["psi_deg"].astype(np.float64)).astype(np.float32),
        F.CS_A2D_PSIZE_A: psize.astype(np.float32),
        F.CS_A2D_ERROR: error,
        F.CS_A2D_ERROR_MIN: error,
        F.CS_A2D_CLASS_POSTERIOR: al["class_posterior"].astype(np.float32),
        F.CS_A2D_CLASS: al["class_index"].astype(np.uint32),
        F.CS_A2D_CLASS_ESS: al["ess"].astype(np.float32),
    }
    for key, name in F.CS_OPTIONAL_ALIGN.items():
        if al.get(key) is not None:
            real[name] = np.asarray(al[key]).astype(np.float32)
    out = {}
    for name in F.CS_PARTICLE_SLOTS:
        if name.startswith("alignments2D/"):
            out[name] = real[name] if name in real else _slot(name, n, F.CS_NEUTRAL[name])
    return out


def _cs_output(table: ParticleTable, rows: np.ndarray, al: dict[str, np.ndarray] | None,
               ctf_off: bool, mic_shapes: dict[str, tuple] | None) -> np.ndarray:
    """Return the .cs rows of an output for ``rows`` (``al``: their alignments).

    A .cs input's fields pass through unchanged (the slots it lacks are added), except
    ``alignments2D/*`` (this run's) and, with CTF off, the CTF values (CTF-off convention).
    """
    if table.cs_array is not None:
        base = table.cs_array[rows]
        updates = _missing_slots(base, table, rows)
    else:
        base, updates = _cs_from_meta(table, rows, mic_shapes), {}
    m = table.meta.iloc[rows]
    if al is not None:
        updates.update(_alignment_slots(al, m[F.PIXEL_SIZE_A].to_numpy()))
    if ctf_off:
        n = len(rows)
        for field, canon in ((F.CS_CTF_DF1_A, F.DEFOCUS_U_A), (F.CS_CTF_DF2_A, F.DEFOCUS_V_A),
                             (F.CS_CTF_DF_ANGLE_RAD, F.DEFOCUS_ANGLE_RAD),
                             (F.CS_CTF_CS_MM, F.CS_MM),
                             (F.CS_CTF_AMP_CONTRAST, F.AMPLITUDE_CONTRAST),
                             (F.CS_CTF_PHASE_SHIFT_RAD, F.PHASE_SHIFT_RAD)):
            updates[field] = np.full(n, F.CTF_OFF_VALUES[canon], dtype=np.float32)
        updates[F.CS_CTF_BFACTOR] = np.zeros(n, dtype=np.float32)
        if F.CS_CTF_ACCEL_KV not in base.dtype.names and F.CS_CTF_ACCEL_KV not in updates:
            updates[F.CS_CTF_ACCEL_KV] = m[F.VOLTAGE_KV].to_numpy().astype(np.float32)
    return with_fields(base, updates) if updates else base.copy()


def write_subset_star(path: str | os.PathLike, table: ParticleTable,
                      rows: Sequence[int] | np.ndarray | None,
                      align: Mapping[str, object] | None = None,
                      comm: Comm | None = None) -> None:
    """Write some particles (in the order of ``rows``) as a RELION 3.1 STAR file.

    Parameters
    ----------
    path
        Destination; written atomically.
    table
        The loaded particle set.
    rows : array-like of int, shape (n,), or bool mask, shape (n_particles,), or None
        Particles to write (None: all).
    align
        Optional alignment results, arrays over ALL particles of ``table`` (see
        :func:`write_particles_star`); only ``rows`` are written.
    comm : Comm, optional
        Collective write: every rank passes its slice of the set (``table`` as loaded
        with ``comm``), its own ``rows`` and ``align``; the file holds every rank's rows
        in rank order and no rank holds all of them (:func:`cryoclass.io.star.write_star`).
    """
    comm = comm if comm is not None else Comm(None)
    rows = _rows(table, rows)
    al, ctf_off = _align(table, align, rows)
    optics, gid = _output_optics(table, ctf_off, comm)
    parts = _in_chunks(rows, al, lambda r, a: _star_particles(table, r, a, ctf_off, gid))
    # image names are copied unchanged: record where their relative paths were found
    comments = ([IMAGE_BASE_COMMENT + table.base_dir]
                if table.star_blocks is not None and table.base_dir else [])
    write_star(path, {F.STAR_BLOCK_OPTICS: optics, F.STAR_BLOCK_PARTICLES: parts}, comm,
               comments)
    n = int(sum(comm.allgather(len(rows))))
    if comm.rank == 0:
        logger.info("wrote %d particles to %s", n, os.fspath(path))


def write_particles_star(path: str | os.PathLike, table: ParticleTable,
                         align: Mapping[str, object], comm: Comm | None = None) -> None:
    """Write every particle with its alignment as a RELION 3.1 STAR file.

    Every input column and the input row order are kept (RELION 3.0 input becomes 3.1,
    one optics group per distinct pixel size / voltage / Cs / amplitude contrast). Added
    or overwritten: ``rlnClassNumber`` (1-based), ``rlnAnglePsi``, ``rlnOriginXAngst`` =
    -shift_x_A, ``rlnOriginYAngst`` = -shift_y_A, ``rlnMaxValueProbDistribution``,
    ``rlnNrOfSignificantSamples`` (round(ess), >= 1), ``rlnLogLikeliContribution``.

    Parameters
    ----------
    path
        Destination; written atomically.
    table
        The loaded particle set.
    align
        Arrays of shape (n_particles,): ``class_index`` (0-based), ``psi_deg``,
        ``shift_x_A``, ``shift_y_A`` (particle centre minus box centre),
        ``class_posterior``, ``ess``, ``best_class_prob``, ``score``, ``half_set``; and
        optionally ``ctf_off`` (bool, default ``not table.has_ctf``): write the CTF-off
        values (defocus 0, Cs 0, amplitude contrast 1, phase shift 0).
    comm : Comm, optional
        Collective write of every rank's slice (see :func:`write_subset_star`).
    """
    write_subset_star(path, table, None, align, comm)


def write_subset_cs(path: str | os.PathLike, table: ParticleTable,
                    rows: Sequence[int] | np.ndarray | None,
                    align: Mapping[str, object] | None = None,
                    comm: Comm | None = None) -> None:
    """Write some particles (in the order of ``rows``) as a CryoSPARC .cs file.

    Parameters are as for :func:`write_subset_star` (collective with ``comm``).
    """
    comm = comm if comm is not None else Comm(None)
    rows = _rows(table, rows)
    al, ctf_off = _align(table, align, rows)
    shapes = (_micrograph_shapes(table, comm) if table.cs_array is None
              and table.has_locations else None)
    write_cs(path, _in_chunks(rows, al, lambda r, a: _cs_output(table, r, a, ctf_off, shapes)),
             comm)
    n = int(sum(comm.allgather(len(rows))))
    if comm.rank == 0:
        logger.info("wrote %d particles to %s", n, os.fspath(path))


def write_particles_cs(path: str | os.PathLike, table: ParticleTable,
                       align: Mapping[str, object], comm: Comm | None = None) -> None:
    """Write every particle with its alignment as a CryoSPARC .cs file.

    The file carries CryoSPARC's complete particle slots, the 42 fields of a CryoSPARC 2D
    classification export in its order and dtypes
    (:data:`~cryoclass.io.fields.CS_PARTICLE_SLOTS`), plus ``location/*`` where the
    micrograph shapes are known. A .cs input's fields pass through unchanged (slots it
    lacks are added); ``alignments2D/*`` are this run's: ``class`` (u4), ``pose`` (rad =
    psi), ``shift`` ((2,) px = RELION origin = -shift_A / pixel size), ``psize_A``,
    ``class_posterior``, ``class_ess``, ``error`` (= -score), ``split`` (half set), the
    optional E-step quantities of ``align`` (:data:`~cryoclass.io.fields.CS_OPTIONAL_ALIGN`)
    where given and CryoSPARC's neutral values otherwise (docs/formats.md §2.4).

    Parameters are as for :func:`write_particles_star`.
    """
    write_subset_cs(path, table, None, align, comm)
