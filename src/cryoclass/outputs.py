"""Write a run directory (rank 0): run.h5, particles.star/.cs, class_averages.mrcs.

Every file is written to a temporary name and renamed into place, so a crash never
leaves a half-written file that looks complete. Layout of ``run.h5``:

* ``/particles``: ``class`` (1-based, sorted by size), ``class_posterior``, ``ess``,
  ``best_class_prob``, ``psi_deg`` (RELION convention), ``shift_x_A``/``shift_y_A`` and
  ``shift_x_px``/``shift_y_px`` (particle centre minus box centre), ``score``,
  ``half_set``, ``duplicate``.
* ``/classes``: ``images`` (K, m, m) at the working pixel size, ``count``,
  ``frc_res_A``, ``median_ess``, ``mean_posterior``, ``frc`` (K, shells), ``shell_res_A``.
* ``/iterations``: one row per iteration (timings, quartiles, histograms, noise model).
* attributes: ``config_toml``, ``version``, ``argv``, ``created``, ``n_ranks``, ...
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from cryoclass import __version__
from cryoclass.config import Config, to_toml
from cryoclass.em import RunResult
from cryoclass.numerics.duplicates import find_duplicates
from cryoclass.numerics.fourier import pad_fourier, to_fourier, to_real

logger = logging.getLogger(__name__)


def relion_psi_deg(psi_rad: np.ndarray) -> np.ndarray:
    """RELION ``_rlnAnglePsi`` (deg) of our in-plane angle.

    Our particle is the class rotated by ``psi`` (``F_p(k) = A(R(-psi) k)``); RELION
    projects with ``A(k) = V(E^T k)``, ``E = [[c, s], [-s, c]]`` for its psi, i.e. a
    rotation by ``-psi_relion``. Hence ``psi_relion = -psi``.
    """
    return np.mod(-np.degrees(psi_rad) + 180.0, 360.0) - 180.0


def class_images_full_box(classes: np.ndarray, box_px: int) -> np.ndarray:
    """Fourier-pad (K, m, m) class images to the input box (K, n, n) float32."""
    m = classes.shape[-1]
    if box_px == m:
        return classes.astype(np.float32)
    return to_real(pad_fourier(to_fourier(classes), m, box_px), box_px).astype(np.float32)


def duplicate_mask(table, result: RunResult, cfg: Config, comm=None) -> np.ndarray | None:
    """Return this rank's rejected-duplicate flags (n_local,), or None when removal is off.

    Collective. Each particle's modelled centre (picked location + found shift) goes to
    the rank that owns its micrograph (a hash of the name), which finds the duplicates
    among its micrographs' particles; the flags come back. No rank holds every particle,
    and the result equals one process's :func:`find_duplicates` on the whole set.
    """
    from cryoclass.parallel.comm import Comm

    comm = comm if comm is not None else Comm(None)
    want = cfg.duplicates.remove
    if want is False:
        return None
    if not table.has_locations:
        if want is True:  # the CLI refuses this before the run; defensive here
            from cryoclass.errors import InputError

            raise InputError("duplicate removal needs micrograph names and coordinates")
        if comm.rank == 0:
            logger.info("duplicate removal skipped: the particles have no picked locations")
        return None
    p = result.local
    meta = table.meta
    x = meta["location_x_px"].to_numpy() + p.shift_px[:, 0]
    y = meta["location_y_px"].to_numpy() + p.shift_px[:, 1]
    min_px = cfg.duplicates.min_separation_A / result.geom.pixel_size_A
    rej = find_duplicates_distributed(comm, meta["micrograph"].to_numpy(dtype=object), x, y,
                                      p.score, min_px, result.start)
    n_rej = int(comm.allreduce_sum(np.array([float(rej.sum())]))[0])
    if comm.rank == 0:
        logger.info("duplicate removal: %d of %d particles rejected (min separation %.1f Å)",
                    n_rej, result.n_total, cfg.duplicates.min_separation_A)
    return rej


def find_duplicates_distributed(comm, micrograph: np.ndarray, x_px: np.ndarray,
                                y_px: np.ndarray, score: np.ndarray, min_separation_px: float,
                                row0: int) -> np.ndarray:
    """:func:`find_duplicates` over all ranks' particles; returns this rank's flags.

    Parameters are this rank's particles (rows ``row0`` onwards of the set); collective.
    """
    import zlib

    import pandas as pd

    if comm.size == 1:
        return find_duplicates(micrograph, x_px, y_px, score, min_separation_px)
    codes, names = pd.factorize(micrograph)
    owner = np.array([zlib.crc32(str(m).encode()) % comm.size for m in names],
                     dtype=np.int64)[codes] if len(names) else np.zeros(0, np.int64)
    rows = np.arange(row0, row0 + len(codes))
    out = []
    for r in range(comm.size):
        sel = np.flatnonzero(owner == r)
        c, u = pd.factorize(codes[sel])
        out.append((rows[sel], [names[j] for j in u], c, x_px[sel], y_px[sel], score[sel]))
    got = comm.alltoall(out)
    g_rows = np.concatenate([g[0] for g in got])
    g_mic = np.concatenate([np.asarray(g[1], dtype=object)[g[2]] if len(g[2]) else
                            np.zeros(0, dtype=object) for g in got])
    g_x, g_y, g_s = (np.concatenate([g[k] for g in got]) for k in (3, 4, 5))
    order = np.argsort(g_rows, kind="stable")  # input order, as one process sees it
    rej = np.zeros(g_rows.size, dtype=bool)
    if order.size:
        rej[order] = find_duplicates(g_mic[order], g_x[order], g_y[order], g_s[order],
                                     min_separation_px)
    first_rows = np.asarray(comm.allgather(row0))  # ranks own contiguous rows in order
    rejected_rows = g_rows[rej]
    owner_rank = np.searchsorted(first_rows, rejected_rows, side="right") - 1
    back = comm.alltoall([rejected_rows[owner_rank == r] for r in range(comm.size)])
    mask = np.zeros(len(codes), dtype=bool)
    for part in back:
        mask[part - row0] = True
    return mask


def alignment_columns(result: RunResult, ctf_off: bool) -> dict[str, np.ndarray]:
    """Return this rank's per-particle alignment for the STAR/CS writers.

    Per-particle E-step quantities that the results carry (attributes of
    :class:`~cryoclass.em.ParticleResults` named as the keys of
    :data:`cryoclass.io.fields.CS_OPTIONAL_ALIGN`, e.g. ``image_pow``) go to their
    ``alignments2D/*`` slots; the slots of those it lacks get CryoSPARC's neutral values.
    """
    from cryoclass.io.fields import CS_OPTIONAL_ALIGN

    p = result.local
    ps = result.geom.pixel_size_A
    extra = {key: getattr(p, key) for key in CS_OPTIONAL_ALIGN
             if getattr(p, key, None) is not None}
    return {
        **extra,
        "class_index": p.class_index.astype(np.int64),
        "psi_deg": relion_psi_deg(p.psi_rad),
        "shift_x_A": p.shift_px[:, 0] * ps,
        "shift_y_A": p.shift_px[:, 1] * ps,
        "class_posterior": p.class_posterior,
        "ess": p.ess,
        "best_class_prob": p.class_posterior,
        "score": p.score,
        "half_set": p.half_set.astype(np.int64),
        "ctf_off": ctf_off,
    }


def particle_columns(p, pixel_size_A: float, duplicate: np.ndarray | None,
                     input_row: np.ndarray | None = None) -> dict:
    """Return the ``/particles`` datasets of run.h5 for some particles (module docstring)."""
    n = p.class_index.size
    return {
        "input_row": (input_row if input_row is not None else np.arange(n)),
        "class": p.class_index + 1, "class_posterior": p.class_posterior,
        "best_class_prob": p.class_posterior, "ess": p.ess,
        "psi_deg": relion_psi_deg(p.psi_rad),
        "shift_x_px": p.shift_px[:, 0], "shift_y_px": p.shift_px[:, 1],
        "shift_x_A": p.shift_px[:, 0] * pixel_size_A,
        "shift_y_A": p.shift_px[:, 1] * pixel_size_A, "score": p.score,
        "half_set": p.half_set,
        "duplicate": duplicate if duplicate is not None else np.zeros(n, bool),
    }


def write_run_h5(path: Path, result: RunResult, cfg: Config, provenance: dict,
                 duplicate: np.ndarray | None, comm=None, table=None,
                 n_left_out: int = 0) -> str:
    """Write run.h5 atomically, collectively over ``comm`` (all ranks call it).

    Each rank contributes its own particles (``result.local``) and their duplicate flags
    (``duplicate``, this rank's, or None); ``table`` (this rank's slice) gives each
    particle's row in the input file. The class data, history,
    config and provenance must be identical on every rank (the caller broadcasts them).
    Returns the writer used ("parallel" or "gather").
    """
    from cryoclass.io.results import write_run_file
    from cryoclass.parallel.comm import Comm

    comm = comm if comm is not None else Comm(None)
    g = result.geom
    rows = table.global_input_rows() if table is not None else (
        result.start + np.arange(result.local.class_index.size))
    local = particle_columns(result.local, g.pixel_size_A, duplicate, rows)
    n_input = result.n_total + n_left_out

    def shared(f):
        f.attrs["config_toml"] = to_toml(cfg)
        f.attrs["version"] = __version__
        for key, val in provenance.items():
            f.attrs[key] = val
        f.attrs["n_input_particles"] = n_input  # the run's particles, plus any left out
        f.attrs["pixel_size_A"] = g.pixel_size_A
        f.attrs["box_px"] = g.box_px
        f.attrs["work_box_px"] = g.work_box
        f.attrs["work_pixel_size_A"] = g.work_pixel_A
        gc = f.create_group("classes")
        gc["images"] = result.state.classes.astype(np.float32)
        gc["count"] = result.counts.astype(np.int64)
        gc["frc_res_A"] = result.frc_res_A
        gc["median_ess"] = defined(result.median_ess)  # 0 for an empty class
        gc["mean_posterior"] = defined(result.mean_posterior)
        if result.state.frc is not None:
            gc["frc"] = result.state.frc
        gc["shell_res_A"] = g.shell_res_A
        gc["order"] = result.class_order  # class j (0-based) was class order[j] during the run
        from cryoclass.report.metrics import metrics_for_geometry

        metrics = metrics_for_geometry(result.state.classes, g, result.state.frc,
                                       counts=result.counts, median_ess=result.median_ess,
                                       mean_posterior=result.mean_posterior)
        gm = gc.create_group("metrics")
        for name, val in metrics.items():
            gm[name] = defined(np.asarray(val, dtype=np.float64))
        write_history(f.create_group("iterations"), result.state.history)

    return write_run_file(Path(path), comm, result.n_total, result.start, local, shared)


def defined(values: np.ndarray) -> np.ndarray:
    """``values`` with NaN (undefined for lack of data) written as 0: no output holds NaN.

    Where: an empty class's median ESS, mean posterior and image metrics; iteration 1's
    class-change fraction and psi change (no earlier assignment); quartiles of an empty
    histogram. ``inf`` (no FRC resolution) is kept.
    """
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), 0.0, values)


def write_history(group, history: list[dict]) -> None:
    """Store per-iteration records as stacked datasets (NaN written as 0, :func:`defined`)."""
    if not history:
        return
    for key in history[0]:
        vals = [h[key] for h in history]
        if isinstance(vals[0], str):  # fixed length: parallel HDF5 cannot write VL data
            group[key] = np.array([v.encode() for v in vals], dtype=np.bytes_)
        else:
            group[key] = defined(np.asarray(vals, dtype=np.float64))


def write_outputs(outdir: Path, table, result: RunResult, cfg: Config,
                  provenance: dict, comm=None, screened=None) -> dict[str, Path]:
    """Write every output of a finished run; collective over ``comm`` (all ranks call it).

    Each rank passes its own slice of the particle set (``table``) and its own particles'
    results: run.h5 (parallel HDF5 or the gathering fallback) and the particle STAR/CS
    files are written collectively, in chunks, so no rank holds every particle; the
    class averages and the config are rank 0's. ``screened``
    (:class:`cryoclass.screening.Screening`): the constant images left out go to
    ``rejected_constant.star/.cs``. Returns the paths written (on rank 0).
    """
    from cryoclass.io.paths import prepare_output_dir
    from cryoclass.parallel.comm import Comm
    from cryoclass.progress import Bar

    comm = comm if comm is not None else Comm(None)
    outdir = prepare_output_dir(outdir, comm)
    dup = duplicate_mask(table, result, cfg, comm)
    provenance, history = comm.bcast((provenance, result.state.history))
    result.state.history = history  # identical on every rank (timings are rank 0's)
    n_left_out = screened.n_constant if screened is not None else 0
    write_run_h5(outdir / "run.h5", result, cfg, provenance, dup, comm, table, n_left_out)
    n_files = 4 if dup is not None else 3  # steps with a bar.update
    with Bar(n_files, "write outputs", cfg.output.progress and comm.rank == 0,
             unit="files") as bar:
        bar.update(1)  # run.h5, written above
        paths = _write_outputs(outdir, table, result, cfg, dup, bar, comm)
    if screened is not None and screened.n_constant:
        from cryoclass.io.particles import write_subset_cs, write_subset_star

        for name, writer in (("rejected_constant.star", write_subset_star),
                             ("rejected_constant.cs", write_subset_cs)):
            paths[name] = outdir / name
            writer(paths[name], screened.input_table, screened.constant_rows, None, comm)
    return paths if comm.rank == 0 else {}


def _write_outputs(outdir: Path, table, result: RunResult, cfg: Config,
                   dup: np.ndarray | None, bar, comm) -> dict[str, Path]:
    from cryoclass.io.interop import write_class_averages_cs, write_class_averages_star
    from cryoclass.io.mrc import write_stack
    from cryoclass.io.particles import write_subset_cs, write_subset_star
    from cryoclass.io.paths import on_root
    from cryoclass.io.star import atomic_output

    paths = {name: outdir / name for name in (
        "run.h5", "class_averages.mrcs", "class_averages.star", "class_averages.cs",
        "particles.star", "particles.cs", "config.toml")}
    def class_files():
        write_stack(paths["class_averages.mrcs"],
                    class_images_full_box(result.state.classes, result.geom.box_px),
                    result.geom.pixel_size_A)
        project = getattr(table, "base_dir", None)  # RELION --ref list, CryoSPARC dataset
        write_class_averages_star(paths["class_averages.star"], paths["class_averages.mrcs"],
                                  result.counts, result.frc_res_A, project_dir=project)
        write_class_averages_cs(paths["class_averages.cs"], paths["class_averages.mrcs"],
                                result.geom.box_px, result.geom.pixel_size_A,
                                result.frc_res_A, project_dir=project)
        with atomic_output(paths["config.toml"]) as fh:
            fh.write(to_toml(cfg))

    on_root(comm, class_files)  # a write error on rank 0 stops every rank
    bar.update(1)
    align = alignment_columns(result, ctf_off=not cfg.ctf.correct)
    keep = None if dup is None else np.flatnonzero(~dup)
    write_subset_star(paths["particles.star"], table, keep, align, comm)
    write_subset_cs(paths["particles.cs"], table, keep, align, comm)
    bar.update(1)
    if dup is not None:
        rej = np.flatnonzero(dup)
        for name in ("rejected_duplicates.star", "rejected_duplicates.cs"):
            paths[name] = outdir / name
        write_subset_star(paths["rejected_duplicates.star"], table, rej, align, comm)
        write_subset_cs(paths["rejected_duplicates.cs"], table, rej, align, comm)
        bar.update(1)
    if comm.rank == 0:
        logger.info("outputs written to %s: %s", outdir,
                    ", ".join(sorted(p.name for p in paths.values())))
    return paths


def provenance(argv: list[str], n_ranks: int, backend: str, input_path: str) -> dict:
    """Attributes every output carries."""
    import datetime
    import platform

    return {
        "argv": " ".join(argv),
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "n_ranks": n_ranks,
        "backend": backend,
        "input": os.path.abspath(input_path),
        "host": platform.node(),
        "python": platform.python_version(),
    }
