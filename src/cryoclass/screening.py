"""Screening of the particle set before classification: constant (blank) images.

Each rank reads its own images once (memory-mapped, in blocks) and flags the constant
ones (:func:`cryoclass.numerics.screen.constant_images`: zero variance, e.g. the all-zero
boxes of particles extracted at a micrograph edge). The ranks then agree on one outcome,
the same for every rank count (docs/user-guide.md, "Constant images"):

* none: the set is classified as it is;
* all, or more than :data:`MAX_CONSTANT_FRACTION` of the set, or so many that fewer
  particles than classes remain: the run stops with one line (an InputError on every
  rank) naming the count and the first rows;
* otherwise (a few): one warning line; they are left out of the classification (the set
  is re-sliced over the ranks without them, :func:`~cryoclass.io.particles.subset_table`)
  and written to ``rejected_constant.star`` / ``.cs``.

Usage (the CLI does this)::

    screened = screen_particles(table, cfg, comm)
    result = classify(screened.table, cfg, comm)
    write_outputs(outdir, screened.table, result, cfg, prov, comm, screened=screened)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cryoclass.errors import InputError
from cryoclass.numerics.screen import constant_images
from cryoclass.parallel.partition import chunks

logger = logging.getLogger(__name__)

__all__ = ["Screening", "screen_particles", "find_constant_rows", "MAX_CONSTANT_FRACTION"]

#: More constant images than this fraction of the set stops the run (something is wrong
#: with the stacks or the extraction, not with a few particles).
MAX_CONSTANT_FRACTION = 0.5
#: Rows named in the messages.
_SHOWN_ROWS = 5


@dataclass
class Screening:
    """The set to classify and what was left out of it.

    Attributes
    ----------
    table : ParticleTable
        This rank's slice of the particles to classify.
    input_table : ParticleTable
        This rank's slice of the set as loaded (the same object when nothing was left out).
    constant_rows : numpy.ndarray of int64
        This rank's constant rows (local rows of ``input_table``).
    n_constant : int
        Constant images over all ranks.
    """

    table: object
    input_table: object
    constant_rows: np.ndarray
    n_constant: int = 0


def find_constant_rows(table, read_block: int = 512) -> np.ndarray:
    """Local rows of this rank's slice whose image is constant (reads each image once)."""
    found = []
    with table.image_source(max_open=8) as source:
        for sl in chunks(len(table), read_block):
            rows = np.arange(sl.start, sl.stop)
            flags = constant_images(source.read(rows))
            found.append(rows[flags])
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def _row_list(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r) + 1) for r in rows[:_SHOWN_ROWS])
    return shown + (", ..." if rows.size > _SHOWN_ROWS else "")


def screen_particles(table, cfg, comm) -> Screening:
    """Find the constant images of the set and decide (module docstring); collective.

    Raises
    ------
    InputError
        On every rank: all or most images constant, too few left for the classes, or an
        image that cannot be read (the message of the lowest failing rank).
    """
    from cryoclass.io.particles import collectively, subset_table

    local = collectively(comm, lambda: find_constant_rows(table))
    first_rows = [r for part in comm.allgather(table.global_input_rows(local[:_SHOWN_ROWS]))
                  for r in part]
    n_const = int(sum(comm.allgather(int(local.size))))
    n = int(table.n_total)
    if n_const == 0:
        return Screening(table, table, local, 0)
    rows = np.asarray(first_rows, dtype=np.int64)  # input order (ranks own rows in order)
    what = (f"{table.source_path}: {n_const} of {n} particle images are constant (zero "
            f"variance, e.g. blank boxes at micrograph edges; particle rows "
            f"{_row_list(rows)})")
    if n_const == n:
        raise InputError(f"{table.source_path}: all {n} particle images are constant (zero "
                         "variance): nothing to classify; check the image stacks "
                         "(re-extract the particles)")
    if n_const > MAX_CONSTANT_FRACTION * n:
        raise InputError(f"{what}: more than {MAX_CONSTANT_FRACTION:.0%} of the set, so the "
                         "stacks or the extraction are likely wrong; check them (re-extract "
                         "the particles) or remove these rows")
    k = cfg.classify.n_classes
    if n - n_const < k:
        raise InputError(f"{what}: only {n - n_const} particles are left for {k} classes; "
                         "use --classes <= the number of particles with signal")
    if comm.rank == 0:
        logger.warning("%s: left out of the classification, written to "
                       "rejected_constant.star/.cs", what)
    keep = np.setdiff1d(np.arange(len(table)), local)
    return Screening(subset_table(table, keep, comm), table, local, n_const)
