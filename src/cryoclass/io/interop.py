"""Class averages in the forms RELION and CryoSPARC take them as 2D references.

``class_averages.mrcs`` alone is not enough for either program:

* ``relion_refine --ref`` reads several 2D references only from a STAR file with
  ``_rlnReferenceImage`` (it looks in ``data_model_classes`` first). Given a bare
  ``.mrcs`` stack, RELION 3.1 reads its FIRST image and copies it into every class
  (checked with relion_refine 3.1.3, see docs/formats.md §4).
* CryoSPARC describes class averages with a ``.cs`` file: one row per class with
  ``blob/path``, ``blob/idx`` (= ``alignments2D/class`` of the particles), ``blob/shape``,
  ``blob/psize_A`` and ``blob/res_A``; Select 2D Classes reads ``res_A`` from it.

Example
-------
>>> write_class_average_files("run")          # doctest: +SKIP
{'class_averages.star': ..., 'class_averages.cs': ...}
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from cryoclass.io import fields as F
from cryoclass.io.cs import write_cs
from cryoclass.io.star import write_star

__all__ = ["write_class_averages_star", "write_class_averages_cs", "write_class_average_files"]


def _stack_name(stack_path: str | os.PathLike, project_dir: str | os.PathLike | None) -> str:
    """Return the stack path relative to ``project_dir`` when inside it, else absolute."""
    stack = os.path.abspath(stack_path)
    if project_dir is not None:
        base = os.path.abspath(project_dir)
        if os.path.commonpath([stack, base]) == base:
            return os.path.relpath(stack, base)
    return stack


def write_class_averages_star(path: str | os.PathLike, stack_path: str | os.PathLike,
                              counts: np.ndarray, res_A: np.ndarray,
                              project_dir: str | os.PathLike | None = None) -> None:
    """Write a RELION reference list (``data_model_classes``) for the class averages.

    Parameters
    ----------
    path
        Destination STAR file; written atomically.
    stack_path
        The class-average stack (image k is class k + 1).
    counts, res_A : arrays of shape (K,)
        Particles per class (written as ``rlnClassDistribution``, a fraction) and the
        class resolution in Å (``rlnEstimatedResolution``; inf is written as ``inf``).
    project_dir
        Image names are relative to it when the stack lies inside it (RELION resolves
        names against its working directory, the project directory); absolute otherwise.
    """
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.size
    name = _stack_name(stack_path, project_dir)
    block = pd.DataFrame({
        F.RLN_REFERENCE_IMAGE: [f"{i + 1:06d}@{name}" for i in range(k)],
        F.RLN_CLASS_DISTRIBUTION: counts / max(counts.sum(), 1.0),
        F.RLN_ESTIMATED_RESOLUTION: np.asarray(res_A, dtype=np.float64),
    })
    write_star(path, {F.STAR_BLOCK_MODEL_CLASSES: block})


def write_class_averages_cs(path: str | os.PathLike, stack_path: str | os.PathLike,
                            box_px: int, pixel_size_A: float, res_A: np.ndarray,
                            project_dir: str | os.PathLike | None = None) -> None:
    """Write a CryoSPARC class-averages ``.cs`` (one row per class, 0-based ``blob/idx``).

    Fields: CryoSPARC's complete blob slot, ``uid`` (u8, deterministic per stack path),
    ``blob/path`` (bytes; relative to ``project_dir`` when the stack lies inside it, else
    absolute), ``blob/idx`` (u4), ``blob/shape`` ((2,) u4), ``blob/psize_A`` (f4),
    ``blob/sign`` (f4, -1: light protein on dark, as the particles), ``blob/import_sig``
    (u8, 0), then ``blob/res_A`` (f4, Å).
    """
    res_A = np.asarray(res_A, dtype=np.float64)
    k = res_A.size
    name = _stack_name(stack_path, project_dir).encode("utf-8")
    seed = zlib.crc32(os.path.abspath(stack_path).encode())
    arr = np.zeros(k, dtype=[(F.CS_UID, "<u8"), (F.CS_BLOB_PATH, f"S{len(name)}"),
                             (F.CS_BLOB_IDX, "<u4"), (F.CS_BLOB_SHAPE, "<u4", (2,)),
                             (F.CS_BLOB_PSIZE_A, "<f4"), (F.CS_BLOB_SIGN, "<f4"),
                             (F.CS_BLOB_IMPORT_SIG, "<u8"), (F.CS_BLOB_RES_A, "<f4")])
    arr[F.CS_BLOB_SIGN] = F.CS_NEUTRAL[F.CS_BLOB_SIGN]
    arr[F.CS_UID] = np.random.default_rng(seed).integers(0, 2**64 - 1, size=k,
                                                         dtype=np.uint64, endpoint=True)
    arr[F.CS_BLOB_PATH] = name
    arr[F.CS_BLOB_IDX] = np.arange(k)
    arr[F.CS_BLOB_SHAPE] = (box_px, box_px)
    arr[F.CS_BLOB_PSIZE_A] = pixel_size_A
    arr[F.CS_BLOB_RES_A] = res_A
    write_cs(path, arr)


def write_class_average_files(run_dir: str | os.PathLike,
                              project_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``class_averages.star`` and ``class_averages.cs`` of a finished run.

    Reads the class counts, FRC resolutions, box and pixel size from ``run.h5`` and
    refers to ``class_averages.mrcs`` in the same folder.
    """
    import h5py

    run_dir = Path(run_dir)
    stack = run_dir / "class_averages.mrcs"
    with h5py.File(run_dir / "run.h5", "r") as f:
        counts = f["classes/count"][()]
        res_A = f["classes/frc_res_A"][()]
        box_px = int(f.attrs["box_px"])
        pixel_size_A = float(f.attrs["pixel_size_A"])
    out = {"class_averages.star": run_dir / "class_averages.star",
           "class_averages.cs": run_dir / "class_averages.cs"}
    write_class_averages_star(out["class_averages.star"], stack, counts, res_A, project_dir)
    write_class_averages_cs(out["class_averages.cs"], stack, box_px, pixel_size_A, res_A,
                            project_dir)
    return out
