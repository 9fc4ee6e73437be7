"""Write a simulated data set (STAR + per-micrograph stacks + truth) or return it in memory.

Output layout of :func:`simulate_dataset`::

    OUTDIR/particles.star          RELION 3.1 (data_optics + data_particles)
    OUTDIR/stacks/mic_000000.mrcs  one stack per micrograph, rows in STAR order
    OUTDIR/truth.h5                per-particle truth, clean projections, parameters

Images are generated ``params.chunk`` at a time; memory is bounded by the chunk (plus one
micrograph's stack and O(N) scalars), and the bytes written do not depend on the chunk.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

import cryoclass
from cryoclass.simulation.engine import Simulator
from cryoclass.simulation.params import SimulationParams, params_from_dict

logger = logging.getLogger(__name__)

STAR_NAME = "particles.star"
TRUTH_NAME = "truth.h5"
STACK_DIR = "stacks"


def micrograph_name(index: int) -> str:
    """Micrograph file name of micrograph ``index`` (``mic_000123.mrc``)."""
    return f"mic_{index:06d}.mrc"


def stack_name(index: int) -> str:
    """Stack path of micrograph ``index`` relative to the STAR file."""
    return f"{STACK_DIR}/mic_{index:06d}.mrcs"


def truth_arrays(sim: Simulator) -> dict[str, np.ndarray]:
    """Per-particle truth of a simulator's plan plus the clean projections.

    Returns
    -------
    dict
        Per-row arrays (length N): ``species`` (-1 junk), ``source_species`` (species
        whose projection is in the image, also for off-centre junk), ``junk_type`` (str,
        "" for real particles), ``view_index`` (-1 continuous or none), ``rotation``
        (N, 3, 3) view rotation R_v, ``psi_deg``, ``shift_x_px``, ``shift_y_px``, ``contrast``,
        ``duplicate_of`` (row of the original or -1), ``object_id``, ``defocus_u_A``,
        ``defocus_v_A``, ``defocus_angle_deg``, ``micrograph``, ``index_in_stack``,
        ``location_x_px``, ``location_y_px``, ``centre_x_px``, ``centre_y_px``;
        and ``clean_projections`` (n_species, n_views, n, n), ``clean_view_rotations``
        (n_species, n_views, 3, 3), ``noise_power`` (n, n//2+1), ``species_names``.
    """
    pl = sim.plan
    assert pl is not None
    proj, rots = sim.clean_projections()
    centre = pl.centre_px
    return {
        "species": pl.species,
        "source_species": pl.source_species,
        "junk_type": pl.junk_type.astype(str),
        "view_index": pl.view_index,
        "rotation": pl.rotation,
        "psi_deg": pl.psi_deg,
        "shift_x_px": pl.shift_px[:, 0],
        "shift_y_px": pl.shift_px[:, 1],
        "contrast": pl.contrast,
        "duplicate_of": pl.duplicate_of,
        "object_id": pl.object_id,
        "defocus_u_A": pl.defocus_u_A,
        "defocus_v_A": pl.defocus_v_A,
        "defocus_angle_deg": pl.defocus_angle_deg,
        "micrograph": pl.micrograph,
        "index_in_stack": pl.index_in_stack,
        "location_x_px": pl.location_px[:, 0],
        "location_y_px": pl.location_px[:, 1],
        "centre_x_px": centre[:, 0],
        "centre_y_px": centre[:, 1],
        "clean_projections": proj,
        "clean_view_rotations": rots,
        "noise_power": sim.noise_filter.astype(np.float64) ** 2,
        "species_names": np.array([p.name for p in sim.phantoms]),
    }


def simulator_from_truth(truth_path) -> Simulator:
    """Rebuild the phantoms and signal scale of a data set from its ``truth.h5``.

    The phantoms do not depend on the seed, so the parameters stored in the truth file
    (``params_json``) and its ``signal_scale`` give projections in exactly the units of
    the data set; no per-row plan is drawn.

    Examples
    --------
    >>> sim = simulator_from_truth("data/truth.h5")               # doctest: +SKIP
    >>> img = sim.clean_projection(0, rotation)                    # doctest: +SKIP
    """
    import json

    import h5py

    with h5py.File(truth_path, "r") as h5:
        params = params_from_dict(json.loads(h5.attrs["params_json"]))
        scale = float(h5.attrs["signal_scale"])
    return Simulator(params, plan=False, scale=scale)


def render_clean_projections(truth_path, species, rotation, psi_deg=None) -> np.ndarray:
    """Clean (CTF-free, noise-free) projections of a simulated data set at any rotations.

    Parameters
    ----------
    truth_path : path-like
        ``truth.h5`` written by :func:`simulate_dataset`.
    species : int or ndarray (m,)
        Species of each projection.
    rotation : ndarray (m, 3, 3) or (3, 3)
        View rotations ``R_v`` (object -> image frame; the projection is along z).
    psi_deg : ndarray (m,), optional
        In-plane angles (counter-clockwise), applied as ``Rz(psi) @ R_v``; default 0.

    Returns
    -------
    ndarray (m, n, n) float32
        ``c · P`` in the units of ``truth.h5:/clean_projections`` (t = 0, no CTF).
    """
    return simulator_from_truth(truth_path).clean_projection(species, rotation, psi_deg)


def simulate_images(
    params: SimulationParams,
    seed: int | None = None,
    n: int | None = None,
    *,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulate particles in memory, writing nothing.

    Parameters
    ----------
    params : SimulationParams
        Data set definition.
    seed : int, optional
        Overrides ``params.seed``.
    n : int, optional
        Overrides ``params.n_particles``.
    noise : bool
        Add noise (``False``: images equal the clean images).

    Returns
    -------
    images : ndarray (n, box, box) float32
        The noisy particle images (noise pixel variance 1).
    clean : ndarray (n, box, box) float32
        Noise-free images: CTF-modulated signal (and the ramp of ice-gradient junk).
    truth : dict
        As :func:`truth_arrays`, plus ``signal_scale`` (float), ``signal_variance`` (n,)
        and ``params`` (the resolved :class:`SimulationParams`).
    """
    import dataclasses

    changes = {}
    if seed is not None:
        changes["seed"] = int(seed)
    if n is not None:
        changes["n_particles"] = int(n)
    params = dataclasses.replace(params, **changes)
    sim = Simulator(params)
    images, clean, signal_var = sim.generate(0, params.n_particles, noise=noise)
    truth = truth_arrays(sim)
    truth["signal_scale"] = sim.scale
    truth["signal_variance"] = signal_var
    truth["params"] = params
    return images, clean, truth


def _star_tables(sim: Simulator):
    """Build the optics and particles tables of the STAR file."""
    import pandas as pd

    from cryoclass.io import fields as F

    p, pl = sim.params, sim.plan
    assert pl is not None
    optics = p.ctf_values
    optics_table = pd.DataFrame({
        F.RLN_OPTICS_GROUP_NAME: ["opticsGroup1"],
        F.RLN_OPTICS_GROUP: [1],
        F.RLN_IMAGE_PIXEL_SIZE: [p.pixel_size_A],
        F.RLN_VOLTAGE: [optics["voltage_kv"]],
        F.RLN_SPHERICAL_ABERRATION: [optics["cs_mm"]],
        F.RLN_AMPLITUDE_CONTRAST: [optics["amplitude_contrast"]],
        F.RLN_IMAGE_SIZE: [p.box_px],
        F.RLN_IMAGE_DIMENSIONALITY: [2],
    })
    mic = pl.micrograph
    image_name = np.char.add(
        np.char.add(np.char.zfill((pl.index_in_stack + 1).astype(str), 6), "@"),
        np.array([stack_name(m) for m in range(pl.n_micrographs)])[mic])
    mic_names = np.array([micrograph_name(m) for m in range(pl.n_micrographs)])[mic]
    particles = pd.DataFrame({
        F.RLN_IMAGE_NAME: image_name.astype(object),
        F.RLN_MICROGRAPH_NAME: mic_names.astype(object),
        F.RLN_COORDINATE_X: pl.location_px[:, 0],
        F.RLN_COORDINATE_Y: pl.location_px[:, 1],
        F.RLN_DEFOCUS_U: pl.defocus_u_A,
        F.RLN_DEFOCUS_V: pl.defocus_v_A,
        F.RLN_DEFOCUS_ANGLE: pl.defocus_angle_deg,
        F.RLN_PHASE_SHIFT: np.zeros(pl.n),
        F.RLN_CTF_BFACTOR: np.zeros(pl.n),
        F.RLN_OPTICS_GROUP: np.ones(pl.n, dtype=np.int64),
    })
    return {F.STAR_BLOCK_OPTICS: optics_table, F.STAR_BLOCK_PARTICLES: particles}


def _write_truth_header(h5, sim: Simulator, truth: dict) -> None:
    """Datasets known before any image is made, and the attributes."""
    import h5py

    for key, value in truth.items():
        if key == "junk_type" or key == "species_names":
            h5.create_dataset(key, data=np.asarray(value, dtype=object),
                              dtype=h5py.string_dtype(), track_times=False)
        else:
            h5.create_dataset(key, data=value, track_times=False)
    p = sim.params
    attrs = h5.attrs
    attrs["params_json"] = p.to_json()
    for key, value in p.to_dict().items():
        attrs[key] = "none" if value is None else value
    attrs["signal_scale"] = sim.scale
    attrs["noise_pixel_variance"] = 1.0
    attrs["cryoclass_version"] = cryoclass.__version__
    attrs["rotation_convention"] = (
        "image = CTF * shift_t(rotate_psi(P_v)); P_v = projection along z of R_v X; "
        "rotate_psi(I)(r) = I(R(-psi) r) (counter-clockwise in x, y); "
        "shift_t(I)(r) = I(r - t); true centre = location + t")


def simulate_dataset(outdir, params: SimulationParams) -> Path:
    """Simulate a data set into ``outdir`` and return the STAR path.

    Writes ``stacks/mic_XXXXXX.mrcs`` (one per micrograph), ``truth.h5`` and, last,
    ``particles.star``; each file is written atomically.

    Parameters
    ----------
    outdir : path-like
        Output folder (created if needed).
    params : SimulationParams
        Data set definition.

    Returns
    -------
    pathlib.Path
        The STAR file.
    """
    import h5py

    from cryoclass.io.mrc import write_stack
    from cryoclass.io.star import atomic_path, write_star

    outdir = Path(outdir)
    (outdir / STACK_DIR).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sim = Simulator(params)
    pl = sim.plan
    assert pl is not None
    n_rows = pl.n
    mic = pl.micrograph
    mic_end = np.searchsorted(mic, np.arange(pl.n_micrographs), side="right")
    truth = truth_arrays(sim)
    logger.info("simulating %d particles (box %d px, %g Å/px, %d species) into %s",
                n_rows, params.box_px, params.pixel_size_A, params.n_species, outdir)
    with atomic_path(outdir / TRUTH_NAME) as tmp:
        with h5py.File(tmp, "w", track_order=False) as h5:
            _write_truth_header(h5, sim, truth)
            sig_var = h5.create_dataset("signal_variance", (n_rows,), dtype=np.float64,
                                        track_times=False)
            pending: list[np.ndarray] = []
            for start in range(0, n_rows, params.chunk):
                stop = min(start + params.chunk, n_rows)
                images, _, sig_var[start:stop] = sim.generate(start, stop, keep_clean=False)
                pos = start
                while pos < stop:
                    m = int(mic[pos])
                    end = min(int(mic_end[m]), stop)
                    pending.append(images[pos - start: end - start])
                    if end == mic_end[m]:
                        write_stack(outdir / stack_name(m), np.concatenate(pending),
                                    params.pixel_size_A)
                        pending = []
                    pos = end
                # keep only a copy of the unfinished micrograph, not the whole chunk
                pending = [np.concatenate(pending)] if pending else []
                rate = stop / (time.perf_counter() - t0)
                logger.info("simulated %d / %d particles (%.0f particles/s)", stop, n_rows,
                            rate)
    write_star(outdir / STAR_NAME, _star_tables(sim))
    logger.info("wrote %s (%d particles, %d micrographs) in %.1f s", outdir / STAR_NAME,
                n_rows, pl.n_micrographs, time.perf_counter() - t0)
    return outdir / STAR_NAME
