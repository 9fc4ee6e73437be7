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


def duplicate_mask(table, result: RunResult, cfg: Config) -> np.ndarray | None:
    """Rejected-duplicate flags (N,), or None when duplicate removal is off/impossible."""
    want = cfg.duplicates.remove
    if want is False:
        return None
    if not table.has_locations:
        if want is True:  # the CLI refuses this before the run; defensive here
            from cryoclass.errors import InputError

            raise InputError("duplicate removal needs micrograph names and coordinates")
        logger.info("duplicate removal skipped: the particles have no picked locations")
        return None
    p = result.particles
    meta = table.meta
    x = meta["location_x_px"].to_numpy() + p.shift_px[:, 0]
    y = meta["location_y_px"].to_numpy() + p.shift_px[:, 1]
    min_px = cfg.duplicates.min_separation_A / result.geom.pixel_size_A
    rej = find_duplicates(meta["micrograph"].to_numpy(), x, y, p.score, min_px)
    logger.info("duplicate removal: %d of %d particles rejected (min separation %.1f Å)",
                int(rej.sum()), rej.size, cfg.duplicates.min_separation_A)
    return rej


def alignment_columns(result: RunResult, ctf_off: bool) -> dict[str, np.ndarray]:
    """Per-particle alignment for the STAR/CS writers."""
    p = result.particles
    ps = result.geom.pixel_size_A
    return {
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


def particle_columns(p, pixel_size_A: float, duplicate: np.ndarray | None) -> dict:
    """Return the ``/particles`` datasets of run.h5 for some particles (module docstring)."""
    n = p.class_index.size
    return {
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
                 duplicate: np.ndarray | None, comm=None) -> str:
    """Write run.h5 atomically, collectively over ``comm`` (all ranks call it).

    Each rank contributes its own particles (``result.local``); the class data, history,
    config and provenance must be identical on every rank (the caller broadcasts them).
    Returns the writer used ("parallel" or "gather").
    """
    from cryoclass.io.results import write_run_file
    from cryoclass.parallel.comm import Comm

    comm = comm if comm is not None else Comm(None)
    g = result.geom
    n_local = result.local.class_index.size
    dup_local = (None if duplicate is None
                 else duplicate[result.start:result.start + n_local])
    local = particle_columns(result.local, g.pixel_size_A, dup_local)

    def shared(f):
        f.attrs["config_toml"] = to_toml(cfg)
        f.attrs["version"] = __version__
        for key, val in provenance.items():
            f.attrs[key] = val
        f.attrs["pixel_size_A"] = g.pixel_size_A
        f.attrs["box_px"] = g.box_px
        f.attrs["work_box_px"] = g.work_box
        f.attrs["work_pixel_size_A"] = g.work_pixel_A
        gc = f.create_group("classes")
        gc["images"] = result.state.classes.astype(np.float32)
        gc["count"] = result.counts.astype(np.int64)
        gc["frc_res_A"] = result.frc_res_A
        gc["median_ess"] = result.median_ess
        gc["mean_posterior"] = result.mean_posterior
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
            gm[name] = np.asarray(val, dtype=np.float64)
        write_history(f.create_group("iterations"), result.state.history)

    return write_run_file(Path(path), comm, result.n_total, result.start, local, shared)


def write_history(group, history: list[dict]) -> None:
    """Store per-iteration records as stacked datasets."""
    if not history:
        return
    for key in history[0]:
        vals = [h[key] for h in history]
        if isinstance(vals[0], str):  # fixed length: parallel HDF5 cannot write VL data
            group[key] = np.array([v.encode() for v in vals], dtype=np.bytes_)
        else:
            group[key] = np.asarray(vals, dtype=np.float64)


def write_outputs(outdir: Path, table, result: RunResult, cfg: Config,
                  provenance: dict, comm=None) -> dict[str, Path]:
    """Write every output of a finished run; collective over ``comm`` (all ranks call it).

    run.h5 is written by every rank (parallel HDF5 or the gathering fallback); the STAR,
    CS, MRC and config files by rank 0. Returns the paths written (on rank 0).
    """
    from cryoclass.parallel.comm import Comm
    from cryoclass.progress import Bar

    comm = comm if comm is not None else Comm(None)
    outdir = Path(outdir)
    dup = duplicate_mask(table, result, cfg) if comm.rank == 0 else None
    dup, provenance, history = comm.bcast((dup, provenance, result.state.history))
    result.state.history = history  # identical on every rank (timings are rank 0's)
    write_run_h5(outdir / "run.h5", result, cfg, provenance, dup, comm)
    if comm.rank != 0:
        return {}
    n_files = 3 if duplicate_mask_possible(table, cfg) else 2  # steps with a bar.update
    with Bar(n_files, "write outputs", cfg.output.progress, unit="files") as bar:
        return _write_outputs(outdir, table, result, cfg, dup, bar)


def duplicate_mask_possible(table, cfg: Config) -> bool:
    """Whether duplicate removal will run (so the rejected files are written)."""
    return cfg.duplicates.remove is not False and bool(table.has_locations)


def _write_outputs(outdir: Path, table, result: RunResult, cfg: Config,
                   dup: np.ndarray | None, bar) -> dict[str, Path]:
    from cryoclass.io.mrc import write_stack
    from cryoclass.io.particles import (
        write_particles_cs,
        write_particles_star,
        write_subset_cs,
        write_subset_star,
    )
    from cryoclass.io.star import atomic_output

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    align = alignment_columns(result, ctf_off=not cfg.ctf.correct)
    paths["run.h5"] = outdir / "run.h5"
    paths["class_averages.mrcs"] = outdir / "class_averages.mrcs"
    write_stack(paths["class_averages.mrcs"],
                class_images_full_box(result.state.classes, result.geom.box_px),
                result.geom.pixel_size_A)
    from cryoclass.io.interop import write_class_averages_cs, write_class_averages_star

    project = getattr(table, "base_dir", None)
    paths["class_averages.star"] = outdir / "class_averages.star"  # RELION --ref list
    write_class_averages_star(paths["class_averages.star"], paths["class_averages.mrcs"],
                              result.counts, result.frc_res_A, project_dir=project)
    paths["class_averages.cs"] = outdir / "class_averages.cs"
    write_class_averages_cs(paths["class_averages.cs"], paths["class_averages.mrcs"],
                            result.geom.box_px, result.geom.pixel_size_A, result.frc_res_A,
                            project_dir=project)
    bar.update(1)
    keep = np.arange(len(table)) if dup is None else np.flatnonzero(~dup)
    paths["particles.star"] = outdir / "particles.star"
    paths["particles.cs"] = outdir / "particles.cs"
    if dup is None:
        write_particles_star(paths["particles.star"], table, align)
        write_particles_cs(paths["particles.cs"], table, align)
        bar.update(1)
    else:
        write_subset_star(paths["particles.star"], table, keep, align)
        write_subset_cs(paths["particles.cs"], table, keep, align)
        bar.update(1)
        rej = np.flatnonzero(dup)
        paths["rejected_duplicates.star"] = outdir / "rejected_duplicates.star"
        paths["rejected_duplicates.cs"] = outdir / "rejected_duplicates.cs"
        write_subset_star(paths["rejected_duplicates.star"], table, rej, align)
        write_subset_cs(paths["rejected_duplicates.cs"], table, rej, align)
        bar.update(1)
    paths["config.toml"] = outdir / "config.toml"
    with atomic_output(paths["config.toml"]) as fh:
        fh.write(to_toml(cfg))
    logger.info("outputs written to %s: %s", outdir, ", ".join(sorted(p.name for p in
                                                                       paths.values())))
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
