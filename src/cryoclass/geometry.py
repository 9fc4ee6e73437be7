"""Run geometry: working box, Fourier coefficient sets, pose grids, mask radii.

Everything here is derived once per run from the input box, pixel size and the
config, identically on every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cryoclass.config import Config
from cryoclass.numerics.fourier import freq_indices, hermitian_weights, working_box
from cryoclass.numerics.transforms import psi_grid, shift_grid

logger = logging.getLogger(__name__)

#: Coarse search band radius as a fraction of the alignment radius.
COARSE_RADIUS = 0.75
#: Default translation search radius as a fraction of the particle diameter.
SHIFT_RANGE_OF_DIAMETER = 0.125


@dataclass(frozen=True)
class Geometry:
    """Static description of the problem on the working (Fourier-cropped) box."""

    box_px: int
    pixel_size_A: float
    work_box: int
    work_pixel_A: float
    max_res_A: float
    max_align_res_A: float
    min_align_res_A: float | None
    index: np.ndarray  # (M,) flat half-plane index of each averaging coefficient
    ky: np.ndarray  # (M,) integer frequency (rows)
    kx: np.ndarray  # (M,) integer frequency (columns)
    shell: np.ndarray  # (M,) resolution shell
    herm: np.ndarray  # (M,) Hermitian weights
    align: np.ndarray  # (M_a,) positions in 0..M-1 of the alignment band
    n_shells: int
    shell_res_A: np.ndarray  # (n_shells,) resolution of each shell (inf for 0)
    psi_rad: np.ndarray  # (n_psi,)
    shifts_px: np.ndarray  # (n_shifts, 2) (x, y) in work-box pixels (fine grid)
    log_prior_shift: np.ndarray  # (n_shifts,)
    search_mode: str  # "coarse_to_fine" or "exhaustive"
    coarse: np.ndarray  # (M_c,) positions in 0..M-1 of the coarse alignment band
    shifts_coarse_px: np.ndarray  # (n_coarse_shifts, 2) lattice at twice the fine step
    log_prior_shift_coarse: np.ndarray
    shift_step_px: float  # fine shift step (work-box px)
    sigma_shift_px: float  # width of the Gaussian shift prior
    particle_radius_px: float  # in input pixels, for background normalization
    mask_inner_px: float  # class mask radii in work-box pixels
    mask_outer_px: float
    particle_diameter_A: float  # for the rotation step and the resolution schedule
    psi_step_deg: float | None  # configured rotation step (None: auto per level)
    shift_range_px: float  # translation search radius (work-box px)
    shift_step_min_px: float  # configured (finest) translation step (work-box px)

    @property
    def n_coeffs(self) -> int:
        """Number of averaging coefficients M."""
        return int(self.index.size)

    @property
    def freq_y_invA(self) -> np.ndarray:
        """Frequency y component of each coefficient (1/Å)."""
        return self.ky / (self.work_box * self.work_pixel_A)

    @property
    def freq_x_invA(self) -> np.ndarray:
        """Frequency x component of each coefficient (1/Å)."""
        return self.kx / (self.work_box * self.work_pixel_A)


def make_geometry(box_px: int, pixel_size_A: float, cfg: Config) -> Geometry:
    """Derive the working box, coefficient sets and pose grids from the config."""
    c = cfg.classify
    nyquist_A = 2.0 * pixel_size_A
    max_res = c.max_res_A
    if max_res < nyquist_A:
        logger.info("max_res_A %.2f Å is finer than Nyquist (%.2f Å): using %.2f Å",
                    max_res, nyquist_A, nyquist_A)
        max_res = nyquist_A
    align_res = max(c.max_align_res_A or max_res, max_res)
    m, p_work = working_box(box_px, pixel_size_A, max_res)
    ky, kx = freq_indices(m, np)
    r = np.sqrt(ky**2 + kx**2)
    r_max = m * p_work / max_res
    inside = (r <= r_max + 1e-9) & (r < m / 2)
    index = np.flatnonzero(inside.ravel())
    kyf, kxf, rf = ky.ravel()[index], kx.ravel()[index], r.ravel()[index]
    shell = np.rint(rf).astype(np.int64)
    n_shells = int(shell.max()) + 1
    herm = hermitian_weights(m, np).ravel()[index]
    r_align = m * p_work / align_res
    band = (rf <= r_align + 1e-9) & (rf > 0)
    min_res = c.min_align_res_A
    if min_res is not None:
        band &= rf >= m * p_work / min_res
    align = np.flatnonzero(band)
    with np.errstate(divide="ignore"):
        shell_res = np.where(np.arange(n_shells) > 0,
                             m * p_work / np.maximum(np.arange(n_shells), 1e-12), np.inf)

    box_A = box_px * pixel_size_A
    m_cfg = cfg.mask
    diam_user = cfg.preprocess.particle_diameter_A
    inner_A = m_cfg.inner_diameter_A
    if inner_A is None:  # the particle diameter a user gives masks the classes, as RELION's
        inner_A = min(diam_user, box_A) if diam_user is not None else box_A
    outer_A = m_cfg.outer_diameter_A if m_cfg.outer_diameter_A is not None else 1.2 * inner_A
    diam_A = diam_user
    if diam_A is None:
        diam_A = m_cfg.inner_diameter_A if m_cfg.inner_diameter_A is not None else 0.8 * box_A
    s = cfg.search
    psi_step = s.psi_step_deg
    if psi_step is None:
        psi_step = float(np.clip(np.degrees(align_res / diam_A), 1.0, 15.0))
    # auto: an eighth of the particle diameter (RELION's standard 2D search, 5 px of a
    # 64 px box, is about this): a wider search lets noise and junk slide into a fit
    shift_range_A = (s.shift_range_A if s.shift_range_A is not None
                     else SHIFT_RANGE_OF_DIAMETER * diam_A)
    shift_step_A = s.shift_step_A if s.shift_step_A is not None else p_work
    step_px = shift_step_A / p_work
    shifts = shift_grid(shift_range_A / p_work, step_px)
    shifts_c = shift_grid(shift_range_A / p_work, 2 * step_px)
    sigma_px = max(shift_range_A / p_work, 1e-6)

    def log_prior(t):
        lp = -0.5 * (t**2).sum(axis=1) / sigma_px**2
        return lp - (np.log(np.exp(lp - lp.max()).sum()) + lp.max())

    coarse = np.flatnonzero(band & (rf <= COARSE_RADIUS * r_align + 1e-9))
    if coarse.size < 16:  # too few coefficients at half resolution: use the whole band
        coarse = align
    geom = Geometry(
        box_px=box_px, pixel_size_A=pixel_size_A, work_box=m, work_pixel_A=p_work,
        max_res_A=max_res, max_align_res_A=align_res, min_align_res_A=min_res,
        index=index, ky=kyf, kx=kxf, shell=shell, herm=herm, align=align,
        n_shells=n_shells, shell_res_A=shell_res, psi_rad=psi_grid(psi_step),
        shifts_px=shifts, log_prior_shift=log_prior(shifts), search_mode=s.mode,
        coarse=coarse, shifts_coarse_px=shifts_c, log_prior_shift_coarse=log_prior(shifts_c),
        shift_step_px=step_px, sigma_shift_px=sigma_px,
        particle_radius_px=0.5 * diam_A / pixel_size_A,
        mask_inner_px=0.5 * inner_A / p_work, mask_outer_px=0.5 * outer_A / p_work,
        particle_diameter_A=float(diam_A), psi_step_deg=s.psi_step_deg,
        shift_range_px=shift_range_A / p_work, shift_step_min_px=step_px,
    )
    logger.info("working box %d px at %.3f Å/px (input %d px at %.3f Å/px); "
                "%d coefficients, %d in the alignment band; %d rotations (%.2f deg), "
                "%d shifts (range %.1f Å, step %.2f Å); search %s (coarse: %d coefficients, "
                "%d rotations, %d shifts)",
                m, p_work, box_px, pixel_size_A, geom.n_coeffs, align.size,
                geom.psi_rad.size, 360.0 / geom.psi_rad.size, shifts.shape[0],
                shift_range_A, shift_step_A, s.mode, coarse.size, geom.psi_rad.size // 2,
                shifts_c.shape[0])
    return geom
