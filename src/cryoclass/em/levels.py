"""Resolution levels: what one iteration's E-step searches, for an alignment resolution.

A :class:`Level` is built from the run's :class:`~cryoclass.geometry.Geometry` (the
averaging coefficients up to ``max_res_A``, fixed for the run) and the alignment
resolution the schedule chose for the iteration (:mod:`cryoclass.em.schedule`). It
names the subset of the averaging coefficients inside the level's Fourier radius
``r = m p / res`` (that disc is exactly the half plane of the Fourier-cropped box
``working_box(m, p, res)``, so the E-step runs on the cropped box without another
copy of the particles), the alignment band and its coarse part, and the rotation and
translation grids of that resolution:

* rotation step ``clip(res / D, 1 deg, 15 deg)`` (D the particle diameter; never finer
  than a configured ``search.psi_step_deg``, which the finest level uses as given);
* translation step ``max(configured step, res / 3)``, range as configured.

Usage::

    level = make_level(geom, 25.0)
    search = PoseSearch(classes, sigma2, geom, level, force_max=True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoclass.geometry import COARSE_RADIUS, Geometry
from cryoclass.numerics.fourier import working_box
from cryoclass.numerics.transforms import psi_grid, shift_grid

#: Smallest level radius in Fourier pixels (a coarser resolution is clamped).
MIN_RADIUS = 4.0
#: Translation step of a level as a fraction of its resolution.
SHIFT_STEP_OF_RES = 1.0 / 3.0


@dataclass(frozen=True)
class Level:
    """The E-step of one iteration: coefficient subsets and pose grids (work-box units)."""

    res_A: float  # alignment resolution
    work_box: int  # Fourier-cropped box whose Nyquist reaches res_A
    radius_px: float  # level radius in Fourier pixels of the run's working box
    coeffs: np.ndarray  # (M_l,) positions in 0..M-1 of the coefficients with |k| <= radius
    align: np.ndarray  # (M_a,) positions in 0..M-1 of the alignment band
    coarse: np.ndarray  # (M_c,) positions in 0..M-1 of the coarse band
    psi_rad: np.ndarray  # (n_psi,)
    shifts_px: np.ndarray  # (n_shifts, 2) fine grid
    log_prior_shift: np.ndarray  # (n_shifts,)
    shifts_coarse_px: np.ndarray  # (n_coarse_shifts, 2) lattice at twice the fine step
    log_prior_shift_coarse: np.ndarray
    shift_step_px: float
    sigma_shift_px: float
    search_mode: str
    bp: np.ndarray  # (M_b,) positions in 0..M-1 of the coefficients backprojected
    bp_box: int  # box of the class-frame rotation of the backprojected bins
    bp_index: np.ndarray  # (M_b,) flat half-plane index of ``bp`` in the bp_box

    def describe(self) -> dict:
        """Numbers for the event log, run.h5 and the report."""
        return {"align_res_A": float(self.res_A), "level_box_px": int(self.work_box),
                "level_coeffs": int(self.align.size), "level_rotations": int(self.psi_rad.size),
                "level_shifts": int(self.shifts_px.shape[0]),
                "level_shift_step_px": float(self.shift_step_px),
                "backproject_box_px": int(self.bp_box)}


def _log_prior(t: np.ndarray, sigma_px: float) -> np.ndarray:
    lp = -0.5 * (t**2).sum(axis=1) / sigma_px**2
    return lp - (np.log(np.exp(lp - lp.max()).sum()) + lp.max())


def level_psi_step_deg(geom: Geometry, res_A: float) -> float:
    """Rotation step of a level: about resolution / diameter, never finer than configured."""
    auto = float(np.clip(np.degrees(res_A / geom.particle_diameter_A), 1.0, 15.0))
    if geom.psi_step_deg is None:
        return auto
    if res_A <= geom.max_align_res_A * (1 + 1e-9):
        return float(geom.psi_step_deg)
    return max(float(geom.psi_step_deg), auto)


def coarsest_resolution(geom: Geometry) -> float:
    """Resolution of the smallest level radius (:data:`MIN_RADIUS`)."""
    return geom.work_box * geom.work_pixel_A / MIN_RADIUS


def backprojected(geom: Geometry, bp_res_A: float | None) -> tuple:
    """Coefficients backprojected up to ``bp_res_A`` (None: all, to ``max_res_A``).

    Returns positions (M_b,), the smallest even box holding them and their flat
    half-plane index in that box.
    """
    m, p = geom.work_box, geom.work_pixel_A
    if bp_res_A is None or bp_res_A <= geom.max_res_A:
        return np.arange(geom.n_coeffs), m, geom.index
    radius = m * p / bp_res_A
    bp = np.flatnonzero(np.hypot(geom.ky, geom.kx) <= radius + 1e-9)
    box = min(m, 2 * int(np.floor(radius + 1e-9)) + 2)
    ky = np.rint(geom.ky[bp]).astype(np.int64) % box
    return bp, box, ky * (box // 2 + 1) + np.rint(geom.kx[bp]).astype(np.int64)


def make_level(geom: Geometry, res_A: float, bp_res_A: float | None = None) -> Level:
    """Level of alignment resolution ``res_A`` (clamped to the run's alignment range).

    ``bp_res_A``: backproject only up to this resolution (online-EM iterations, see
    :func:`cryoclass.em.schedule.backprojection_resolution`); None = up to ``max_res_A``.
    """
    m, p = geom.work_box, geom.work_pixel_A
    res = float(max(min(res_A, coarsest_resolution(geom)), geom.max_align_res_A))
    radius = m * p / res
    r = np.hypot(geom.ky, geom.kx)
    coeffs = np.flatnonzero(r <= radius + 1e-9)
    band = (r <= radius + 1e-9) & (r > 0)
    if geom.min_align_res_A is not None:
        band &= r >= m * p / geom.min_align_res_A
    align = np.flatnonzero(band)
    coarse = np.flatnonzero(band & (r <= COARSE_RADIUS * radius + 1e-9))
    if coarse.size < 16:  # too few coefficients at the coarse radius: the whole band
        coarse = align
    step = max(geom.shift_step_min_px, SHIFT_STEP_OF_RES * res / p)
    shifts = shift_grid(geom.shift_range_px, step)
    shifts_c = shift_grid(geom.shift_range_px, 2 * step)
    sigma = max(geom.shift_range_px, 1e-6)
    bp, bp_box, bp_index = backprojected(geom, None if bp_res_A is None else min(bp_res_A, res))
    return Level(
        res_A=res, work_box=working_box(m, p, res)[0], radius_px=radius, coeffs=coeffs,
        align=align, coarse=coarse, psi_rad=psi_grid(level_psi_step_deg(geom, res)),
        shifts_px=shifts, log_prior_shift=_log_prior(shifts, sigma),
        shifts_coarse_px=shifts_c, log_prior_shift_coarse=_log_prior(shifts_c, sigma),
        shift_step_px=step, sigma_shift_px=sigma, search_mode=geom.search_mode,
        bp=bp, bp_box=bp_box, bp_index=bp_index)
